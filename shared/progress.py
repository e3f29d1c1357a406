"""`make progress`: where a learner stands, stage by stage, and the next command to run.

Two sources, both written by runs rather than by hand:
- `reports/test_results.json`: every pytest run of the reference records, per stage, how many of the
  tests it ran passed (tests/conftest.py calls `record_run`);
- `workspace/stageN/grade.json`: the last `make grade STAGE=N` (exercises passed out of the total).

    make progress        # or: .venv/bin/python -m shared.progress [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import console, run_cli, show, table

STAGE_OF_TEST = re.compile(r"^tests/(stage\d|shared)/")


def results_path() -> Path:
    return paths.reports_dir() / "test_results.json"


def record_run(outcomes: dict[str, str]) -> None:
    """Merge one run's outcomes into the per-suite summary (a suite the run did not touch keeps its record)."""
    path = results_path()
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        summary = {}
    runs: dict[str, dict[str, Any]] = {}
    for node, outcome in outcomes.items():
        match = STAGE_OF_TEST.match(node)
        if not match:
            continue
        suite = runs.setdefault(match[1], {"passed": 0, "failed": 0, "skipped": 0, "time": time.time()})
        suite[outcome.split(":")[0]] += 1
    summary.update(runs)
    paths.atomic_write_text(path, json.dumps(summary, indent=2) + "\n")


def stage_rows() -> list[dict[str, Any]]:
    from shared.exercises import STAGES, find_exercises, workspace_root

    try:
        results = json.loads(results_path().read_text())
    except (OSError, json.JSONDecodeError):
        results = {}
    rows = []
    for stage in STAGES:
        tests = results.get(f"stage{stage}")
        workspace = workspace_root() / f"stage{stage}"
        grade_file = workspace / "grade.json"
        grade = json.loads(grade_file.read_text()) if grade_file.is_file() else None
        total_exercises = len(find_exercises(stage))
        if tests is None:
            next_command = f"make stage{stage}"
        elif tests["failed"]:
            next_command = f"make stage{stage}  (fix the {tests['failed']} failing test(s) first)"
        elif not workspace.is_dir():
            next_command = f"make exercise STAGE={stage}"
        elif grade is None or grade["score"] < grade["out_of"]:
            next_command = f"edit workspace/stage{stage}/, then make grade STAGE={stage}"
        else:
            next_command = "done"
        rows.append({"stage": stage, "tests": tests, "exercises_done": grade["score"] if grade else None,
                     "exercises": total_exercises, "next": next_command})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.progress", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = stage_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0

    def tests(row: dict[str, Any]) -> str:
        t = row["tests"]
        return "not run" if t is None else f"{t['passed']}/{t['passed'] + t['failed']} passed"

    def done(row: dict[str, Any]) -> str:
        return "-" if row["exercises_done"] is None else f"{row['exercises_done']}/{row['exercises']}"

    show(table("your progress", ["stage", "tests (last run)", "exercises done", "next"],
               [(r["stage"], tests(r), done(r), r["next"]) for r in rows]))  # fmt: skip
    following = next((r["next"] for r in rows if r["next"] != "done"), "all five stages done")
    console.print(f"next: {following}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
