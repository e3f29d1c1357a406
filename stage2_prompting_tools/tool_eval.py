"""Measuring tool use: right tool, valid call, right arguments, task done, for every mode.

Two suites, both run through the whole loop (agent.py) with the HTTP tools answering from the
local sample server (sample_apis.py), so a run is offline and repeatable:

- `data/tool_tasks.jsonl`, the shipped suite: 36 requests, six per tool, each needing one call.
- `data/multistep_tasks.jsonl`: 12 requests that need two calls, the second on the first one's
  result ("Convert 5 miles to kilometers, then multiply that by 3": convert_units, then
  calculator on 8.0467). A mode that cannot take a second step cannot pass these.

Per task, from what the loop actually did (its steps and its answer):

    right tool        the tools called, in order, are exactly the expected ones
    valid call        every call was a JSON object that its tool's schema accepts (at least one call)
    right arguments   right tools, and each call's arguments mean the expected ones: numbers as
                      numbers, an expression by its value, strings ignoring case; the second
                      call's expected arguments are computed from the expected first result
    task success      right arguments, no tool error, and the answer states every expected figure
                      (a fixed figure exists for 10 shipped tasks and all 12 multi-step ones; the
                      others are live data, where success is the right calls, run without error)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stage2_prompting_tools.agent import Agent, AgentResult, Step
from stage2_prompting_tools.routing import Router
from stage2_prompting_tools.sample_apis import serve_sample_apis
from stage2_prompting_tools.tools import BUILTIN_TOOLS, ToolError, safe_eval

DATA = Path(__file__).parent / "data"
SUITES = {"shipped": DATA / "tool_tasks.jsonl", "multistep": DATA / "multistep_tasks.jsonl"}


def load_suite(name: str) -> list[dict[str, Any]]:
    """Tasks with `calls`: [{"tool": ..., "arguments": ...}, ...] (the shipped file has one `tool`)."""
    tasks = [json.loads(line) for line in SUITES[name].read_text().splitlines() if line.strip()]
    for task in tasks:
        task.setdefault("calls", [{"tool": task.get("tool"), "arguments": task.get("arguments", {})}])
    return tasks


def same_value(expected: Any, actual: Any, key: str = "") -> bool:
    if key == "expression":
        try:
            return abs(float(safe_eval(str(actual))) - float(safe_eval(str(expected)))) < 1e-6
        except (ToolError, ValueError, TypeError):
            return False
    if isinstance(expected, int | float) and isinstance(actual, int | float) and not isinstance(actual, bool):
        return abs(expected - actual) < 1e-6
    return str(expected).strip().lower() == str(actual).strip().lower()


def valid_call(step: Step) -> bool:
    """The call parsed into an object that its tool's schema accepts (what it did when run is apart)."""
    tool = BUILTIN_TOOLS.get(step.tool)
    if tool is None or not isinstance(step.arguments, dict):
        return False
    try:
        tool.validate(step.arguments)
    except ToolError:
        return False
    return True


def score_task(task: dict[str, Any], result: AgentResult) -> dict[str, Any]:
    expected, steps = task["calls"], result.steps
    right_tool = [s.tool for s in steps] == [c["tool"] for c in expected]
    valid = bool(steps) and all(valid_call(s) for s in steps)
    right_arguments = right_tool and valid and all(
        set(s.arguments) >= set(c["arguments"]) and all(same_value(v, s.arguments.get(k), k)
                                                        for k, v in c["arguments"].items())
        for s, c in zip(steps, expected, strict=True))  # fmt: skip
    ran = bool(steps) and all(s.error is None for s in steps)
    figures = task.get("answer_contains") or []
    stated = all(f in result.answer.replace(",", "") for f in figures)
    return {"id": task["id"], "calls": [[s.tool, s.arguments] for s in steps],
            "errors": [s.error for s in steps if s.error], "answer": result.answer,
            "right_tool": right_tool, "valid_call": valid, "right_arguments": right_arguments,
            "ran_without_error": ran, "answer_checked": bool(figures), "answer_stated": stated,
            "task_success": right_arguments and ran and stated}  # fmt: skip


def summarize(rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    n = len(rows)
    checked = [r for r in rows if r["answer_checked"]]
    return {"n": n, **{k: sum(r[k] for r in rows) / n for k in ("right_tool", "valid_call", "right_arguments",
                                                                  "ran_without_error", "task_success")},
            "answer_checked": len(checked),
            "answer_stated": sum(r["answer_stated"] for r in checked) / max(1, len(checked)),
            "seconds_per_task": seconds / n, "rows": rows}  # fmt: skip


def run_suite(model: Any, suite: str, mode: str, router: Router | None = None, limit: int | None = None,
              answer: bool = True, on_task: Callable[[], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """One mode on one suite, end to end (answer=False: the calls only, for the no-grammar ablation)."""
    tasks = load_suite(suite)[:limit]
    agent = Agent(model, list(BUILTIN_TOOLS.values()), mode=mode, router=router or Router(), answer=answer)
    rows, start, saved = [], time.perf_counter(), dict(os.environ)
    with serve_sample_apis() as env:
        os.environ.update(env)
        try:
            for task in tasks:
                rows.append(score_task(task, agent.run(task["question"])))
                if on_task:
                    on_task()
        finally:
            os.environ.clear()
            os.environ.update(saved)
    return {"suite": suite, "mode": mode, "model": model.name, **summarize(rows, time.perf_counter() - start)}
