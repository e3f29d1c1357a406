"""`make bench` for stage 2: three benchmarks, one report (reports/stage2_tools.json).

1. **Tools** (tool_eval.py, injection.py): every mode of agent.py on the shipped and the
   multi-step suites, in process and, with `--serve` or `--base-url`, on the vLLM server with the
   same prompts and grammars; the no-grammar ablation; the indirect prompt-injection suite on both;
   and, on the server, what `tool_choice="required"` returns with and without `"strict": true`.
   The default mode is chosen from these numbers (`chosen_default`: the best mean task success
   over both suites, in process) and agent.DEFAULT_MODE must agree (the bench says if it does not).
2. **Prompt designs** (prompts.py): four designs on the intent set's dev and test splits.
3. **DSPy** (optimize.py): zero-shot, hand-written few-shot and optimized programs.

    python -m stage2_prompting_tools bench --serve                 # what `make bench` runs
    python -m stage2_prompting_tools bench --parts tools --limit 6 # a quick look
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import console, progress, show, table

PARTS = ("tools", "prompts", "dspy")
MODES_MEASURED = ("router", "hybrid", "model", "native")
INJECTION_MODES = ("router", "model")  # the router never lets the model decide after a result; "model" does


def tool_benchmarks(model: Any, router: Any, limit: int | None, tick: Callable[[], None]) -> dict[str, Any]:
    """Every mode on both suites, then the injection suite, for one backend."""
    from stage2_prompting_tools.injection import run_injection_suite
    from stage2_prompting_tools.tool_eval import run_suite

    runs = [run_suite(model, suite, mode, router, limit, on_task=tick)
            for mode in MODES_MEASURED for suite in ("shipped", "multistep")]  # fmt: skip
    injection = [run_injection_suite(model, mode, router=router, on_attack=tick) for mode in INJECTION_MODES]
    return {"model": model.name, "runs": runs, "injection": injection}


def tasks_in_tools(limit: int | None) -> int:
    from stage2_prompting_tools.injection import ATTACKS
    from stage2_prompting_tools.tool_eval import load_suite

    per_mode = sum(len(load_suite(s)[:limit]) for s in ("shipped", "multistep"))
    return len(MODES_MEASURED) * per_mode + len(INJECTION_MODES) * len(ATTACKS)


def choose_default(runs: list[dict[str, Any]]) -> str:
    """The mode with the best mean task success over the two suites (ties: the shipped suite decides)."""
    success: dict[str, list[float]] = {}
    for run in runs:
        success.setdefault(run["mode"], [0.0, 0.0])[run["suite"] == "shipped"] += run["task_success"] / 2
    shipped = {r["mode"]: r["task_success"] for r in runs if r["suite"] == "shipped"}
    return max(success, key=lambda m: (sum(success[m]), shipped.get(m, 0.0)))


def run_benchmark(model_name: str, parts: list[str], base_url: str | None = None, serve: bool = False,
                  limit: int | None = None) -> dict[str, Any]:  # fmt: skip
    from shared.chat import LocalChatModel

    report: dict[str, Any] = {"model": model_name, "parts": parts, "limit": limit, "seconds": {}}
    chat_model = LocalChatModel(model_name)
    report["device"] = chat_model.device
    with progress() as bar:
        if "tools" in parts:
            start = time.perf_counter()
            report["tools"] = tools_part(chat_model, model_name, base_url, serve, limit, bar)
            report["seconds"]["tools"] = time.perf_counter() - start
        if "prompts" in parts:
            from stage2_prompting_tools.prompts import DESIGNS, compare_designs, load_intents

            start = time.perf_counter()
            task = bar.add_task(
                "prompt designs", total=len(DESIGNS) * sum(len(load_intents(s)) for s in ("dev", "test"))
            )
            report["prompts"] = [row for split in ("dev", "test")
                                 for row in compare_designs(chat_model, split, on_row=lambda: bar.advance(task))]  # fmt: skip
            report["seconds"]["prompts"] = time.perf_counter() - start
        if "dspy" in parts:
            from stage2_prompting_tools.optimize import optimization_table, rows_in_table

            start = time.perf_counter()
            task = bar.add_task("DSPy programs", total=rows_in_table())
            report["optimization"] = optimization_table(chat_model, "knn", on_row=lambda: bar.advance(task))
            report["seconds"]["dspy"] = time.perf_counter() - start
    report["seconds"]["total"] = sum(report["seconds"].values())
    return report


def tools_part(chat_model: Any, model_name: str, base_url: str | None, serve: bool, limit: int | None,
               bar: Any) -> dict[str, Any]:  # fmt: skip
    import contextlib

    from stage2_prompting_tools.agent import DEFAULT_MODE
    from stage2_prompting_tools.routing import Router
    from stage2_prompting_tools.served import ServedToolModel, required_probe, serve_vllm
    from stage2_prompting_tools.tool_eval import run_suite
    from stage2_prompting_tools.tool_model import ConstrainedToolModel

    router = Router()
    total = tasks_in_tools(limit)
    task = bar.add_task("tool modes, in process", total=total + len(load_shipped(limit)))
    model = ConstrainedToolModel(chat_model)
    out: dict[str, Any] = {"in_process": tool_benchmarks(model, router, limit, lambda: bar.advance(task))}
    out["in_process"]["jump_forward"] = {
        "forward_passes": model.forward_passes,
        "forced_tokens": model.forced_tokens,
    }
    free = ConstrainedToolModel(chat_model, constrain=False)
    out["in_process"]["no_grammar"] = run_suite(free, "shipped", "router", router, limit, answer=False,
                                                on_task=lambda: bar.advance(task))  # fmt: skip
    out["chosen_default"] = choose_default(out["in_process"]["runs"])
    out["default_in_code"] = DEFAULT_MODE
    if base_url or serve:
        with serve_vllm(model_name) if serve else contextlib.nullcontext() as server:
            url = server.base_url if server else base_url
            served = ServedToolModel(model_name, url)
            task = bar.add_task("tool modes, served", total=total)
            out["served"] = tool_benchmarks(served, router, limit, lambda: bar.advance(task))
            out["served"]["required_probe"] = required_probe(served)
            out["served"]["base_url"] = url
    return out


def load_shipped(limit: int | None) -> list[dict[str, Any]]:
    from stage2_prompting_tools.tool_eval import load_suite

    return load_suite("shipped")[:limit]


# --------------------------------------------------------------------------------------------
# Showing and writing


def mode_table(runs: list[dict[str, Any]], title: str) -> Any:
    return table(title, ["mode", "suite", "right tool", "valid call", "right arguments", "task success", "s/task"],
                 [(r["mode"], r["suite"], *(f"{r[k]:.0%}" for k in ("right_tool", "valid_call", "right_arguments",
                                                                     "task_success")),
                   f"{r['seconds_per_task']:.1f}") for r in runs])  # fmt: skip


def show_report(report: dict[str, Any]) -> None:
    from stage2_prompting_tools.injection import injection_table

    tools = report.get("tools")
    if tools:
        for backend in ("in_process", "served"):
            if backend in tools:
                part = tools[backend]
                runs = part["runs"] + ([part["no_grammar"]] if "no_grammar" in part else [])
                show(mode_table(runs, f"tool calls, {backend.replace('_', '-')}: {part['model']}"))
                for inj in part["injection"]:
                    show(
                        injection_table(
                            inj, f"indirect prompt injection, {backend.replace('_', '-')}, mode {inj['mode']}"
                        )
                    )
        console.print(
            f"default mode by the numbers: {tools['chosen_default']} (agent.DEFAULT_MODE: {tools['default_in_code']})"
        )
        if tools["chosen_default"] != tools["default_in_code"]:
            console.print(
                "[yellow]agent.DEFAULT_MODE differs from the measured best: update it and the README[/]"
            )
    if "prompts" in report:
        designs = list(dict.fromkeys(r["design"] for r in report["prompts"]))
        score = {(r["design"], r["split"]): r["accuracy"] for r in report["prompts"]}
        show(table("prompt designs: intent accuracy (label likelihood, chance 17%)", ["design", "dev", "test"],
                   [(d, f"{score[d, 'dev']:.0%}", f"{score[d, 'test']:.0%}") for d in designs]))  # fmt: skip
    if "optimization" in report:
        from stage2_prompting_tools.optimize import optimization_rows_table

        show(optimization_rows_table(report["optimization"]))
    console.print(f"took {report['seconds']['total'] / 60:.1f} min")


def write_report(report: dict[str, Any], path: Path | None = None) -> Path:
    """Write the report; parts this run did not measure are kept from the previous report."""
    path = path or paths.reports_dir() / "stage2_tools.json"
    try:
        merged = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        merged = {}
    seconds = {**merged.get("seconds", {}), **report["seconds"]}
    parts = [p for p in PARTS if p in report["parts"] or p in merged.get("parts", [])]
    merged.update(report)
    merged["seconds"], merged["parts"] = seconds, parts
    merged["seconds"]["total"] = sum(v for k, v in seconds.items() if k in PARTS)
    return paths.atomic_write_text(path, json.dumps(merged, indent=2, default=str) + "\n")
