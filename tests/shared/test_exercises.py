"""shared.exercises: stubbing regions, learner workspaces, and grading with the stage suites themselves."""

from __future__ import annotations

import pytest

from shared import exercises, paths
from shared.console import BadInput

SOURCE = '''def top_p(probs, p):
    """doc"""
    # EXERCISE stage1.demo: keep the smallest set reaching p
    kept = sorted(probs)[:2]
    return kept
    # END EXERCISE


def other():
    return 1
'''


def test_a_region_body_becomes_a_hinted_not_implemented_error():
    stubbed = exercises.stub(SOURCE)
    assert 'raise NotImplementedError("[stage1.demo] keep the smallest set reaching p")' in stubbed
    assert "sorted(probs)" not in stubbed and "# EXERCISE stage1.demo" in stubbed and "return 1" in stubbed
    namespace: dict = {}
    exec(compile(stubbed, "<stub>", "exec"), namespace)
    with pytest.raises(NotImplementedError, match=r"\[stage1.demo\] keep the smallest"):
        namespace["top_p"]([0.5, 0.5], 0.9)


@pytest.mark.parametrize("text, message", [
    ("# EXERCISE stage1.a: x\n# EXERCISE stage1.b: y\n# END EXERCISE\n", "starts inside"),
    ("# END EXERCISE\n", "without an EXERCISE"),
    ("# EXERCISE stage1.a: x\npass\n", "without END"),
    ("# EXERCISE stage1.a: x\n# END EXERCISE\n", "empty"),
    ("# EXERCISE top_p\npass\n# END EXERCISE\n", "stageN.name: hint"),
])  # fmt: skip
def test_malformed_regions_are_named(text, message):
    with pytest.raises(BadInput, match=message):
        exercises.stub(text, "f.py")


@pytest.mark.parametrize("stage", [1, 2, 3, 4, 5])
def test_every_stage_has_at_least_four_exercises_each_graded_by_a_test(stage, tmp_path):
    import json
    import os
    import subprocess
    import sys

    found = exercises.find_exercises(stage)
    assert len(found) >= 4
    marks = tmp_path / "marks.json"
    subprocess.run([sys.executable, "-m", "pytest", f"tests/stage{stage}", "--collect-only", "-q"], cwd=paths.REPO_ROOT,
                   capture_output=True, env={**os.environ, "LLM_ROADMAP_EXERCISE_MARKS": str(marks)}, check=True)  # fmt: skip
    marked = json.loads(marks.read_text())
    assert {e.id for e in found} <= set(marked), "each exercise is marked on at least one test"
    assert set(marked) <= {e.id for e in found}, "no test names an exercise that does not exist"


def test_a_workspace_leaves_the_reference_alone_and_is_not_overwritten(tmp_path):
    reference = (paths.REPO_ROOT / "stage5_serving_ops" / "costs.py").read_text()
    target = exercises.make_workspace(5, root=tmp_path)
    assert (paths.REPO_ROOT / "stage5_serving_ops" / "costs.py").read_text() == reference
    assert "NotImplementedError" in (target / "stage5_serving_ops" / "costs.py").read_text()
    assert "stage5.budget_guard" in (target / "EXERCISES.md").read_text()
    with pytest.raises(BadInput, match="already exists"):
        exercises.make_workspace(5, root=tmp_path)
    with pytest.raises(BadInput, match="STAGE must be one of 1-5"):
        exercises.make_workspace(9, root=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3, 4, 5])
def test_a_fresh_workspace_fails_exactly_the_tests_that_grade_its_exercises(stage, tmp_path):
    """On the fast tests: every failure is an exercise's test, and every exercise's test fails (hint shown)."""
    workspace = exercises.make_workspace(stage, root=tmp_path)
    outcomes, marked, _ = exercises.run_suite(stage, workspace, fast=True)
    assert outcomes, "the suite ran"
    failing = {test for test, outcome in outcomes.items() if outcome.startswith("failed")}
    graded = {test for tests in marked.values() for test in tests if test in outcomes}
    assert failing == graded
    rows = exercises.rubric(exercises.find_exercises(stage), outcomes, marked)
    for row in rows:
        if row["tests"]:
            assert row["status"] == "fail" and row["hint"]
