"""Exercise mode: the reference code with its core mechanisms cut out, graded by the stage's own tests.

In the reference code an exercise region is a few lines between two comments:

    # EXERCISE stage1.top_p: keep the smallest set of tokens whose probability mass reaches p
    ... the reference implementation ...
    # END EXERCISE

`make exercise STAGE=1` copies the stage's package to `workspace/stage1/` (git-ignored) with each
region's body replaced by `raise NotImplementedError("[stage1.top_p] <the hint>")`; the reference is
never touched. `make grade STAGE=1` runs tests/stage1 against the workspace (the workspace's package
comes first on the import path, in-process and in any subprocess a test starts) and prints a rubric:
each exercise, the tests that cover it (those marked `@pytest.mark.exercise("stage1.top_p")`),
pass or fail, the hint of each failing one, and a score. The tests that grade a learner are the very
tests that check the reference.

    python -m shared.exercises list 1
    python -m shared.exercises make 1 [--force]
    python -m shared.exercises grade 1 [--fast]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.markup import escape

from shared import paths
from shared.console import BadInput, console, run_cli, show, table

STAGES = {1: "stage1_foundations", 2: "stage2_prompting_tools", 3: "stage3_retrieval", 4: "stage4_finetune_align",
          5: "stage5_serving_ops"}  # fmt: skip
START = re.compile(r"^(?P<indent>\s*)# EXERCISE (?P<id>stage\d\.[A-Za-z0-9_.]+): (?P<hint>.+?)\s*$")
END = re.compile(r"^\s*# END EXERCISE\s*$")
WORKSPACE_ENV = "LLM_ROADMAP_WORKSPACE"


@dataclass(frozen=True)
class Exercise:
    id: str
    hint: str
    file: str  # relative to the repository root
    line: int  # of the EXERCISE comment
    body_lines: int


def workspace_root() -> Path:
    return paths.REPO_ROOT / "workspace"


def package_for(stage: int | str) -> str:
    try:
        return STAGES[int(stage)]
    except (KeyError, ValueError):
        raise BadInput(f"STAGE must be one of 1-5, got {stage!r}") from None


def regions(text: str, where: str) -> list[tuple[int, int, re.Match[str]]]:
    """(start line index, end line index, start match) of every region; malformed regions are errors."""
    found, open_at = [], None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if START.match(line):
            if open_at is not None:
                raise BadInput(
                    f"{where}:{i + 1}: an EXERCISE starts inside the one opened on line {open_at + 1}"
                )
            open_at = i
        elif END.match(line):
            if open_at is None:
                raise BadInput(f"{where}:{i + 1}: END EXERCISE without an EXERCISE")
            if i == open_at + 1:
                raise BadInput(f"{where}:{open_at + 1}: the exercise region is empty")
            found.append((open_at, i, START.match(lines[open_at])))
            open_at = None
        elif "# EXERCISE" in line and "# END EXERCISE" not in line:
            raise BadInput(f"{where}:{i + 1}: write exercise markers as '# EXERCISE stageN.name: hint'")
    if open_at is not None:
        raise BadInput(f"{where}:{open_at + 1}: EXERCISE without END EXERCISE")
    return found  # type: ignore[return-value]


def find_exercises(stage: int | str) -> list[Exercise]:
    package = package_for(stage)
    exercises: list[Exercise] = []
    for path in sorted((paths.REPO_ROOT / package).rglob("*.py")):
        relative = str(path.relative_to(paths.REPO_ROOT))
        for start, end, match in regions(path.read_text(encoding="utf-8"), relative):
            exercises.append(Exercise(match["id"], match["hint"], relative, start + 1, end - start - 1))
    ids = [e.id for e in exercises]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise BadInput(f"exercise ids used twice in {package}: {', '.join(duplicates)}")
    wrong = [e.id for e in exercises if not e.id.startswith(f"stage{int(stage)}.")]
    if wrong:
        raise BadInput(f"exercise ids in {package} must start with stage{int(stage)}.: {', '.join(wrong)}")
    return exercises


def stub(text: str, where: str = "<source>") -> str:
    """The source with every region's body replaced by a NotImplementedError that carries the hint."""
    lines = text.splitlines(keepends=True)
    for start, end, match in reversed(regions(text, where)):
        message = json.dumps(f"[{match['id']}] {match['hint']}")
        lines[start + 1 : end] = [f"{match['indent']}raise NotImplementedError({message})\n"]
    return "".join(lines)


def make_workspace(stage: int | str, root: Path | None = None, force: bool = False) -> Path:
    package = package_for(stage)
    exercises = find_exercises(stage)
    target = (root or workspace_root()) / f"stage{int(stage)}"
    if target.exists() and not force:
        raise BadInput(f"{target} already exists (your work is in it); pass --force (FORCE=1) to start over")
    with paths.atomic_directory(target) as tmp:
        shutil.copytree(
            paths.REPO_ROOT / package, tmp / package, ignore=shutil.ignore_patterns("__pycache__")
        )
        for path in sorted((tmp / package).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            stubbed = stub(text, str(path))
            if stubbed != text:
                path.write_text(stubbed, encoding="utf-8")
        listing = "\n".join(f"- `{e.id}` in `{e.file}` (line {e.line}): {e.hint}" for e in exercises)
        (tmp / "EXERCISES.md").write_text(
            f"# Stage {int(stage)} exercises\n\nFill in each `raise NotImplementedError(...)` in `{package}/`, "
            f"then run `make grade STAGE={int(stage)}` (from the repository root).\n\n{listing}\n",
            encoding="utf-8",
        )  # fmt: skip
    return target


def run_suite(stage: int, workspace: Path | None, fast: bool = False,
              extra: list[str] | None = None) -> tuple[dict[str, str], dict[str, list[str]], float]:  # fmt: skip
    """Run tests/stageN (against `workspace` when given); outcomes per test and the tests marked per exercise."""
    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        results, marks = Path(tmp) / "outcomes.json", Path(tmp) / "marks.json"
        env = dict(os.environ)
        cwd = paths.REPO_ROOT
        if workspace is not None:
            env[WORKSPACE_ENV] = str(workspace)
            env["PYTHONPATH"] = os.pathsep.join([str(workspace), env.get("PYTHONPATH", "")]).rstrip(
                os.pathsep
            )
            cwd = workspace  # `python -m stageN_...` in a test's subprocess finds the workspace's copy first
        env["LLM_ROADMAP_EXERCISE_MARKS"] = str(marks)
        env["LLM_ROADMAP_EXERCISE_OUTCOMES"] = str(results)
        command = [sys.executable, "-m", "pytest", str(paths.REPO_ROOT / "tests" / f"stage{stage}"), "-q", "-p",
                   "no:cacheprovider", "--rootdir", str(paths.REPO_ROOT)]  # fmt: skip
        if fast:
            command += ["-m", "not slow and not server"]
        start = time.perf_counter()
        done = subprocess.run(command + (extra or []), cwd=cwd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if not results.is_file():
            raise BadInput(f"the test run did not complete:\n{(done.stdout + done.stderr)[-2000:]}")
        outcomes = json.loads(results.read_text())
        marked = json.loads(marks.read_text()) if marks.is_file() else {}
    return outcomes, marked, seconds


def rubric(exercises: list[Exercise], outcomes: dict[str, str], marked: dict[str, list[str]]) -> list[dict]:
    rows = []
    for exercise in exercises:
        tests = [t for t in marked.get(exercise.id, []) if t in outcomes and outcomes[t] != "skipped"]
        failed = [t for t in tests if outcomes[t].startswith("failed")]
        status = "no tests" if not tests else ("fail" if failed else "pass")
        rows.append({"exercise": exercise.id, "file": exercise.file, "tests": tests, "failed": failed,
                     "status": status, "hint": exercise.hint})  # fmt: skip
    return rows


def grade(stage: int | str, root: Path | None = None, fast: bool = False) -> dict:
    stage = int(package_for(stage)[5])
    workspace = (root or workspace_root()) / f"stage{stage}"
    if not workspace.is_dir():
        raise BadInput(f"no workspace at {workspace}: run `make exercise STAGE={stage}` first")
    exercises = find_exercises(stage)
    outcomes, marked, seconds = run_suite(stage, workspace, fast)
    rows = rubric(exercises, outcomes, marked)
    passed = sum(r["status"] == "pass" for r in rows)
    tests_passed = sum(v == "passed" for v in outcomes.values())
    report = {"stage": stage, "workspace": str(workspace), "score": passed, "out_of": len(rows), "seconds": seconds,
              "tests_passed": tests_passed, "tests_total": len(outcomes), "exercises": rows}  # fmt: skip
    paths.atomic_write_text(workspace / "grade.json", json.dumps(report, indent=2) + "\n")
    return report


def show_rubric(report: dict) -> None:
    show(table(f"stage {report['stage']}: {report['score']}/{report['out_of']} exercises pass "
               f"({report['tests_passed']}/{report['tests_total']} tests, {report['seconds']:.0f} s)",
               ["exercise", "status", "tests", "hint (when failing)"],
               [(r["exercise"], r["status"], f"{len(r['tests']) - len(r['failed'])}/{len(r['tests'])} pass",
                 escape(r["hint"]) if r["status"] != "pass" else "") for r in report["exercises"]]))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.exercises", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("list", "the exercises of a stage"), ("make", "write a learner workspace"),
                       ("grade", "run the stage's suite against the workspace; print the rubric")):  # fmt: skip
        p = sub.add_parser(name, help=text)
        p.add_argument("stage")
        p.add_argument("--json", action="store_true")
        if name == "make":
            p.add_argument("--force", action="store_true", help="replace an existing workspace")
        if name == "grade":
            p.add_argument("--fast", action="store_true", help="skip the slow and server tests")
    args = parser.parse_args(argv)
    if args.command == "list":
        exercises = find_exercises(args.stage)
        if args.json:
            print(json.dumps([asdict(e) for e in exercises], indent=2))
        else:
            show(table(f"stage {args.stage}", ["exercise", "where", "hint"],
                       [(e.id, f"{e.file}:{e.line}", escape(e.hint)) for e in exercises]))  # fmt: skip
        return 0
    if args.command == "make":
        target = make_workspace(args.stage, force=args.force)
        console.print(f"wrote {target} ({len(find_exercises(args.stage))} exercises, listed in {target / 'EXERCISES.md'}); "
                      f"fill them in, then `make grade STAGE={args.stage}`")  # fmt: skip
        return 0
    report = grade(args.stage, fast=args.fast)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        show_rubric(report)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
