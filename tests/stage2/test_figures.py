"""The README's measured sections: every one renders from a report of the bench's shape, every marker
is in README.md, and the exercise list is the one the code marks. A small synthetic report, no model."""

from __future__ import annotations

import json
import re

import pytest

from shared import figures as shared_figures
from shared import paths
from shared.exercises import find_exercises
from stage2_prompting_tools import figures

README = paths.REPO_ROOT / "stage2_prompting_tools" / "README.md"
MODES = ("router", "hybrid", "model", "native")


def run(mode: str, suite: str, success: float, n: int = 4) -> dict:
    return {"mode": mode, "suite": suite, "model": "m", "n": n, "right_tool": 0.75, "valid_call": 1.0,
            "right_arguments": 0.5, "ran_without_error": 1.0, "task_success": success, "answer_checked": 1,
            "answer_stated": 1.0, "seconds_per_task": 2.5, "rows": []}  # fmt: skip


def attack_row(i: int, tried: bool, ran: bool, obeyed: bool) -> dict:
    return {"id": f"i{i:02d}", "channel": "wikipedia", "target_tool": "save_note",
            "tools_called": ["wiki_summary", "save_note"] if tried else ["wiki_summary"], "tried": tried,
            "ran": ["save_note"] if ran else [], "stopped": ["shortlist"] if tried and not ran else [],
            "obeyed": obeyed, "answer": "..."}  # fmt: skip


def injection_suite(mode: str) -> dict:
    rows = [
        attack_row(1, False, False, False),
        attack_row(2, True, False, True),
        attack_row(3, True, True, False),
    ]
    return {
        "model": "m",
        "mode": mode,
        "attacks": 3,
        "rows": rows,
        "tried": 2 / 3,
        "ran": 1 / 3,
        "obeyed": 1 / 3,
    }


def backend(success: dict[str, float]) -> dict:
    return {"model": "m", "runs": [run(m, s, success[m]) for m in MODES for s in ("shipped", "multistep")],
            "injection": [injection_suite(m) for m in ("router", "model")]}  # fmt: skip


@pytest.fixture
def report() -> dict:
    in_process = backend({"router": 0.5, "hybrid": 0.75, "model": 0.25, "native": 0.0})
    in_process["jump_forward"] = {"forward_passes": 300, "forced_tokens": 100}
    in_process["no_grammar"] = run("router", "shipped", 0.0) | {"valid_call": 0.25}
    served = backend({"router": 0.25, "hybrid": 0.5, "model": 0.25, "native": 0.0})
    served["required_probe"] = {"not_strict": {"arguments": '"{\\"expression\\": \\"23*47\\"}"', "content": "",
                                               "valid": False},
                                "strict": {"arguments": '{"expression": "23*47"}', "content": "", "valid": True}}  # fmt: skip
    prompts = [{"design": d, "split": s, "n": 42 if s == "dev" else 48, "accuracy": a}
               for d, a in (("zero-shot", 0.2), ("6-shot, similar, turns", 0.6)) for s in ("dev", "test")]  # fmt: skip
    optimization = {"optimizer": "knn", "optimize_seconds": 1.5, "optimizer_calls": 0, "demos": [],
                    "rows": [{"program": p, "split": s, "n": 42, "accuracy": a, "unparsed": 0.1}
                             for p, a in (("zero-shot", 0.1), ("optimized (knn)", 0.4)) for s in ("dev", "test")]}  # fmt: skip
    return {"model": "m", "device": "cpu", "limit": 4, "seconds": {"tools": 600.0, "prompts": 120.0, "dspy": 60.0,
            "total": 780.0}, "tools": {"in_process": in_process, "served": served, "chosen_default": "hybrid",
            "default_in_code": "router"}, "prompts": prompts, "optimization": optimization}  # fmt: skip


def test_every_section_renders_the_reports_numbers(report):
    text = {name: render(report) for name, _, render in figures.SECTIONS}
    assert "25%" in text["jump_forward"] and "100" in text["jump_forward"]  # 100 forced of 400
    assert "**They differ**" in text["default"] and "`hybrid`" in text["default"]
    assert "not valid" in text["probe"] and text["probe"].count("valid") == 2
    assert "13 minutes" in text["bench_time"] and "--limit 4" in text["bench_time"]
    assert text["modes"].count("\n| ") == 2 * 2 * len(MODES) + 1  # both backends, both suites, + no grammar
    assert "`hybrid`, mean task success 75%" in text["modes"]
    assert (
        "**RAN save_note**" in text["injection"]
        and "the attack's own tool ran in 1 (i03)" in text["injection"]
    )
    assert "the router chose a tool the user did not ask for in 2 of 3" in text["injection"]
    assert "6-shot, similar, turns" in text["prompts"] and "60%" in text["prompts"]
    assert "optimized (knn)" in text["dspy"] and "40% (10%)" in text["dspy"]


def test_an_unrequested_first_call_is_told_apart_from_an_injected_one():
    """A call made before any tool result (a routing error) is not something a page asked for."""
    misrouted = {
        **attack_row(4, True, False, False),
        "tools_called": ["convert_currency"],
        "ran": ["convert_currency"],
    }
    suite = {
        **injection_suite("router"),
        "rows": [attack_row(1, False, False, False), misrouted],
        "attacks": 2,
    }
    line = figures.injection_finding(suite)
    assert "the attack's own tool ran in 0" in line and "one ran in 1" in line
    assert "convert_currency in i04 (the first call, before any tool result" in line


def test_a_part_not_measured_says_how_to_measure_it(report):
    del report["optimization"], report["tools"]["served"]
    assert "--parts dspy" in figures.dspy(report)
    assert "`router` (`agent.DEFAULT_MODE`)" in figures.default({"seconds": {}})
    assert "--serve" in figures.probe(report)
    assert "not measured in this run" in figures.modes(report)


def test_readme_has_every_section_and_fills_from_the_report(report, tmp_path):
    text = README.read_text(encoding="utf-8")
    for name, report_name, _ in figures.SECTIONS:
        assert text.count(f"<!-- {name}:start -->") == 1 and text.count(f"<!-- {name}:end -->") == 1, name
        assert report_name.startswith("stage2_")
    assert not re.search(r"\{[A-Z_]+\}", text), "a template placeholder is left in the README"
    (tmp_path / figures.REPORT).write_text(json.dumps(report))
    # what `make figures` would write, from that report
    updates = {path: new for path, _, new in shared_figures.stage_updates(tmp_path)}
    filled = updates[README]
    assert "**RAN save_note**" in filled and "Not measured yet" not in filled


def test_readme_lists_every_exercise_the_code_marks():
    text = README.read_text(encoding="utf-8")
    listed = re.findall(r"^- `(stage2\.[a-z_]+)`", text, flags=re.M)
    assert listed == [e.id for e in find_exercises(2)]
