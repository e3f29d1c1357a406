"""Measuring tool use: does the model pick the right tool, with the right arguments, and answer?

The shipped suite (data/tool_tasks.jsonl) has 36 questions, six per built-in tool, each with the
expected tool and arguments. For every question we record:

    selected   the chosen tool is the expected one
    valid      the call is a JSON object that the tool's schema accepts (a listed tool, by design)
    arguments  the arguments mean the same as the expected ones (numbers as numbers, an expression
               by its value, strings case-insensitively)
    answered   (end to end) the final answer contains the expected figure, where one is fixed

The HTTP tools answer from the local sample server (sample_apis.py), so the run is offline and
repeatable. Configurations compared in one run: tool choice by router, likelihood and hybrid; and
arguments with and without the grammar. Then the prompt designs of prompts.py on the intent set's
dev and test splits, and the DSPy programs of optimize.py (zero-shot, hand-written few-shot,
optimized) on the same splits.

    python -m stage2_prompting_tools bench            # about 25 minutes on 2 CPU cores
Writes reports/stage2_tools.json.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared import paths
from stage2_prompting_tools.agent import Agent
from stage2_prompting_tools.constrained import ConstrainedToolModel
from stage2_prompting_tools.prompts import compare_designs
from stage2_prompting_tools.sample_apis import serve_sample_apis
from stage2_prompting_tools.tools import BUILTIN_TOOLS, ToolError, safe_eval

TASKS_PATH = Path(__file__).parent / "data" / "tool_tasks.jsonl"


def load_tasks(path: Path = TASKS_PATH) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def same_value(expected: Any, actual: Any, key: str = "") -> bool:
    if key == "expression":
        try:
            return abs(float(safe_eval(str(actual))) - float(safe_eval(str(expected)))) < 1e-9
        except (ToolError, ValueError, TypeError):
            return False
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return abs(expected - actual) < 1e-9
    return str(expected).strip().lower() == str(actual).strip().lower()


def check_call(task: dict[str, Any], tool: str, arguments_text: str) -> dict[str, Any]:
    """Score one call against the task's expectation."""
    row: dict[str, Any] = {"id": task["id"], "expected_tool": task["tool"], "tool": tool,
                           "arguments": arguments_text, "selected": tool == task["tool"]}  # fmt: skip
    try:
        arguments = json.loads(arguments_text)
        BUILTIN_TOOLS[tool].validate(arguments)
        row["valid"] = True
    except (json.JSONDecodeError, ToolError, KeyError):
        row["valid"], arguments = False, None
    row["arguments_correct"] = bool(row["selected"] and row["valid"] and all(
        same_value(v, arguments.get(k), k) for k, v in task["arguments"].items()))  # fmt: skip
    return row


def evaluate_calls(model: ConstrainedToolModel, tasks: list[dict[str, Any]],
                   on_task: Callable[[], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Selection, validity and argument accuracy: one constrained call per task (no execution)."""
    specs = [t.spec for t in BUILTIN_TOOLS.values()]
    rows = []
    start = time.perf_counter()
    for task in tasks:
        choice, _ = model.select(task["question"], specs)
        arguments = model.arguments(task["question"], specs, choice)[0] if choice in BUILTIN_TOOLS else "{}"
        rows.append(check_call(task, choice, arguments))
        if on_task:
            on_task()
    return summarize(rows, time.perf_counter() - start)


def evaluate_selection(model: ConstrainedToolModel, tasks: list[dict[str, Any]],
                       on_task: Callable[[], None] | None = None) -> dict[str, Any]:  # fmt: skip
    specs = [t.spec for t in BUILTIN_TOOLS.values()]
    rows, start = [], time.perf_counter()
    for task in tasks:
        choice, _ = model.select(task["question"], specs)
        rows.append({"id": task["id"], "expected_tool": task["tool"], "tool": choice,
                     "selected": choice == task["tool"]})  # fmt: skip
        if on_task:
            on_task()
    return summarize(rows, time.perf_counter() - start)


def evaluate_answers(model: ConstrainedToolModel, tasks: list[dict[str, Any]],
                     on_task: Callable[[], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """End to end through the agent loop, against the sample APIs."""
    rows, start = [], time.perf_counter()
    saved = dict(os.environ)
    with serve_sample_apis() as env:
        os.environ.update(env)
        try:
            agent = Agent(model, list(BUILTIN_TOOLS.values()), max_steps=2)
            for task in tasks:
                result = agent.run(task["question"])
                expected = task.get("answer_contains") or []
                rows.append({"id": task["id"], "answer": result.answer,
                             "tool_ok": bool(result.steps) and result.steps[0].error is None,
                             "answered": all(e in result.answer.replace(",", "") for e in expected),
                             "checked": bool(expected)})  # fmt: skip
                if on_task:
                    on_task()
        finally:
            os.environ.clear()
            os.environ.update(saved)
    checked = [r for r in rows if r["checked"]]
    return {"n": len(rows), "tool_ran_without_error": sum(r["tool_ok"] for r in rows) / len(rows),
            "answer_checked": len(checked),
            "answer_accuracy": sum(r["answered"] for r in checked) / max(1, len(checked)),
            "seconds_per_task": (time.perf_counter() - start) / len(rows), "rows": rows}  # fmt: skip


def summarize(rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    n = len(rows)
    out: dict[str, Any] = {"n": n, "selection_accuracy": sum(r["selected"] for r in rows) / n}
    if "valid" in rows[0]:
        out["valid_call_rate"] = sum(r["valid"] for r in rows) / n
        out["argument_accuracy"] = sum(r["arguments_correct"] for r in rows) / n
    out["seconds_per_task"] = seconds / n
    out["rows"] = rows
    return out


def steps_in_benchmark() -> int:
    """How many on_task calls a run makes (for a progress bar)."""
    from stage2_prompting_tools.optimize import rows_in_table
    from stage2_prompting_tools.prompts import DESIGNS, load_intents

    return (5 * len(load_tasks()) + len(DESIGNS) * (len(load_intents("dev")) + len(load_intents("test")))
            + rows_in_table())  # fmt: skip


def run_benchmark(chat_model: Any, on_task: Callable[[], None] | None = None) -> dict[str, Any]:
    tasks = load_tasks()
    default = ConstrainedToolModel(chat_model)  # router + grammar
    report: dict[str, Any] = {"tasks": len(tasks), "model": chat_model.name}
    report["constrained"] = evaluate_calls(default, tasks, on_task)
    report["unconstrained"] = evaluate_calls(
        ConstrainedToolModel(chat_model, constrain_arguments=False), tasks, on_task
    )
    report["selection"] = {
        mode: evaluate_selection(ConstrainedToolModel(chat_model, selection=mode), tasks, on_task)
        for mode in ("likelihood", "hybrid")
    }
    report["selection"]["router"] = {k: v for k, v in report["constrained"].items() if k != "valid_call_rate"}
    report["end_to_end"] = evaluate_answers(default, tasks, on_task)
    report["prompts"] = [
        row for split in ("dev", "test") for row in compare_designs(chat_model, split, on_row=on_task)
    ]
    from stage2_prompting_tools.optimize import optimization_table

    report["optimization"] = optimization_table(chat_model, "knn", on_row=on_task)
    return report


def write_report(report: dict[str, Any]) -> Path:
    return paths.atomic_write_text(
        paths.reports_dir() / "stage2_tools.json", json.dumps(report, indent=2) + "\n"
    )
