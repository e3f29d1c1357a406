"""tool_eval.py: the suites, and scoring by meaning from what the loop did."""

from __future__ import annotations

import re

import pytest

from stage2_prompting_tools.agent import AgentResult, Step
from stage2_prompting_tools.tool_eval import load_suite, same_value, score_task
from stage2_prompting_tools.tools import BUILTIN_TOOLS


def test_the_shipped_suite_is_balanced():
    tasks = load_suite("shipped")
    counts = {
        name: sum(t["calls"][0]["tool"] == name for t in tasks)
        for name in BUILTIN_TOOLS
        if name != "save_note"
    }
    assert len(tasks) == 36 and set(counts.values()) == {6}, counts


@pytest.mark.exercise("stage2.type_to_schema", "stage2.schema_from_signature")
def test_the_multistep_suite_is_what_the_tools_compute(sample_apis):
    """Two calls each, the second on the first one's result; the expected figures are the tools' own."""
    tasks = load_suite("multistep")
    assert len(tasks) >= 10
    for task in tasks:
        first, second = task["calls"]
        result = BUILTIN_TOOLS[first["tool"]](**first["arguments"])
        assert result == task["results"][0]
        value = re.findall(r"-?\d+(?:\.\d+)?", result.split("=")[-1])[0]
        assert value in str(second["arguments"]), f"{task['id']}: the second call uses the first result"
        assert BUILTIN_TOOLS[second["tool"]](**second["arguments"]) == task["results"][1]
        assert task["answer_contains"][0] in task["results"][1]


@pytest.mark.exercise("stage2.type_to_schema", "stage2.schema_from_signature")
def test_scoring_is_by_meaning():
    assert same_value("23*47", "23 * 47", "expression") and not same_value("23*47", "23+47", "expression")
    assert same_value(5, 5.0) and same_value("Lisbon", "lisbon") and not same_value(1, True)
    task = load_suite("multistep")[0]
    good = AgentResult(answer="It is 24.1401 km.", steps=[Step("convert_units", {"value": 5, "from_unit": "mi",
                       "to_unit": "km"}, "5 mi = 8.0467 km"), Step("calculator", {"expression": "3 * 8.0467"}, "24.1401")])  # fmt: skip
    row = score_task(task, good)
    assert row["right_tool"] and row["valid_call"] and row["right_arguments"] and row["task_success"]
    one_step = AgentResult(answer="8.0467 km", steps=good.steps[:1])
    assert not score_task(task, one_step)["right_tool"] and not score_task(task, one_step)["task_success"]
    unsaid = score_task(task, AgentResult(answer="Done.", steps=good.steps))
    assert unsaid["right_arguments"] and not unsaid["task_success"], "the answer must state the figure"
    invalid = AgentResult(answer="", steps=[Step("convert_units", {"value": "five"}, error="invalid")])
    assert not score_task(task, invalid)["valid_call"]
