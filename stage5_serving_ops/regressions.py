"""The gate's own test: the default pipeline must pass, and every regression must fail.

    python -m stage5_serving_ops regressions                      # -> reports/stage5_gate.json + .png
    python -m stage5_serving_ops regressions --write-thresholds   # re-measure the baseline first

One run, one set of questions, one judge: build what the variants need (stage 3's fixed-chunk index,
the NF4-rounded weights) before any server starts, then serve the NF4 weights and export their
records, then serve the default model and export the default pipeline and the other regressions
through it. Every run is scored by the same metrics; with `--write-thresholds` the default run's
means become the new thresholds (gate.thresholds_from_baseline) before any verdict is given, and the
judge agreement that `calibrate` measured is carried into the file. The table then shows each
variant against the same thresholds. Only one server runs at a time: on 2 CPU cores two would
slow each other down, and their KV caches would not fit beside each other in 8 GiB. Every server
computes in float32 (pipeline.SERVED_DTYPE: on a CPU without bfloat16 instructions the gate's
prefill-bound work is much faster so), and the thresholds file records it (`served_in`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import BadInput
from stage5_serving_ops import gate as gates
from stage5_serving_ops.dataset import load_dataset
from stage5_serving_ops.pipeline import (
    DEFAULT,
    DEFAULT_LIMIT,
    DEFAULT_SPLIT,
    SERVED_DTYPE,
    VARIANTS,
    Variant,
    export,
    prepare,
    records_path,
)
from stage5_serving_ops.provenance import provenance
from stage5_serving_ops.ragas_metrics import ALL_METRICS, JUDGE_METRICS, evaluate_set
from stage5_serving_ops.server import ServerConfig

REPORT_NAME = "stage5_gate.json"


@dataclass
class Plan:
    model: str
    variants: list[Variant]
    split: str = DEFAULT_SPLIT
    limit: int | None = DEFAULT_LIMIT
    index: Path | None = None  # stage 3's default index (None: its own default folder)
    api_key: str | None = None
    kv_cache_gib: int = 2
    judge: str = "auto"  # "auto": only if a judged metric may gate; "always"; "never"
    records_dir: Path | None = None


def judge_agreement(calibration: Path | None = None) -> dict[str, float | None] | None:
    """The judge agreement that `calibrate` last measured (reports/stage5_calibration.json), if any."""
    path = calibration or paths.reports_dir() / "stage5_calibration.json"
    try:
        judge = json.loads(path.read_text()).get("judge")
    except (OSError, json.JSONDecodeError):
        return None
    return judge.get("agreement") if judge else None


def judged_metrics(plan: Plan, thresholds: dict[str, Any], write_thresholds: bool) -> tuple[str, ...]:
    """The judged metrics worth running: all with judge="always"; with "auto" those whose judge may
    gate (by the thresholds file, or by the last calibration when the thresholds are being re-measured)."""
    if plan.judge == "never":
        return ()
    if plan.judge == "always":
        return JUDGE_METRICS
    bar = thresholds["judge_agreement_bar"]
    measured = judge_agreement() if write_thresholds else None
    chosen = []
    for name in JUDGE_METRICS:
        agreement = (measured or {}).get(name, thresholds["metrics"].get(name, {}).get("judge_agreement"))
        if agreement is not None and agreement >= bar:
            chosen.append(name)
    return tuple(chosen)


def served_name(plan: Plan, variant: Variant) -> str:
    base = ServerConfig(model=plan.model, port=1).served_name
    return f"{base}-{variant.weights}" if variant.weights else base


def run(plan: Plan, thresholds_path: Path = gates.DEFAULT_THRESHOLDS, write_thresholds: bool = False,
        start: Callable[[ServerConfig], Any] | None = None, on_step: Callable[[str], None] | None = None,
        baseline_path: Path = gates.DEFAULT_BASELINE) -> dict[str, Any]:  # fmt: skip
    """Export and score every variant of `plan`; the report (the gate table's data).

    `start(config)` is a context manager giving a running server (default: launch.running_server)."""
    from stage5_serving_ops.launch import running_server

    step = on_step or (lambda message: None)
    thresholds = gates.load_thresholds(thresholds_path)
    judged = judged_metrics(plan, thresholds, write_thresholds)
    served = {}
    for variant in plan.variants:
        step(f"preparing {variant.name}")
        served[variant.name] = prepare(variant, plan.model, plan.index)
    results, served_as, judge_info = export_and_score(plan, served, judged, start or running_server, step)
    if write_thresholds:
        thresholds = rebaseline(plan, results, thresholds, thresholds_path, baseline_path)
    baseline = gates.load_baseline(baseline_path)
    runs = {}
    for variant in plan.variants:
        failures = gates.gate(results[variant.name], thresholds, baseline)
        runs[variant.name] = {"what": variant.what, "expected": "pass" if variant is DEFAULT else "fail",
                              "model": provenance(served[variant.name])["label"],
                              "served_as": served_as.get(variant.name), "result": results[variant.name],
                              "records": str(records_path(variant, plan.records_dir)),
                              "gate": {"passed": not failures, "failures": failures},
                              "paired": {m: gates.paired_difference(results[variant.name], baseline, m)
                                         for m in results[variant.name]["metrics"]} if baseline else {}}  # fmt: skip
    return {"model": provenance(plan.model), "split": plan.split, "limit": plan.limit,
            "n": max(r["result"]["n"] for r in runs.values()),
            "metrics": [m for m in ALL_METRICS if any(m in r["result"]["metrics"] for r in runs.values())],
            "thresholds": thresholds, "not_gated": gates.not_gated(thresholds), "judge": judge_info,
            "runs": runs}  # fmt: skip


def export_and_score(plan: Plan, served: dict[str, str], judged: tuple[str, ...], start: Callable[[ServerConfig], Any],
                     step: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:  # fmt: skip
    """One server per distinct model (the default model's last: it is also the judge); each variant's
    records exported through its server, then every variant scored. (results, served_as, judge stats)."""
    groups: dict[str, list[Variant]] = {}
    for variant in plan.variants:
        groups.setdefault(served[variant.name], []).append(variant)
    records: dict[str, Path] = {}
    results: dict[str, dict[str, Any]] = {}
    served_as: dict[str, str | None] = {}
    judge = None
    for model in sorted(groups, key=lambda m: m == plan.model):
        config = ServerConfig(model=model, port=0, api_key=plan.api_key, kv_cache_gib=plan.kv_cache_gib,
                              served_name=served_name(plan, groups[model][0]), dtype=SERVED_DTYPE)  # fmt: skip
        with start(config) as server:
            for variant in groups[model]:
                served_as[variant.name] = server.engine_dtype()
                step(f"stage 3 answering {plan.limit or 'all'} {plan.split} questions: {variant.name}")
                records[variant.name] = export(variant, records_path(variant, plan.records_dir), server.base_url,
                                               config.served_name, plan.api_key, plan.split, plan.limit, plan.index)  # fmt: skip
            if model == plan.model:
                if judged:
                    from stage5_serving_ops.judge import StructuredJudge

                    judge = StructuredJudge(server.base_url, config.served_name, plan.api_key)
                for variant in plan.variants:
                    step(f"scoring {variant.name}" + (f" (judge: {', '.join(judged)})" if judged else ""))
                    results[variant.name] = evaluate_set(
                        load_dataset(records[variant.name]), judge, judged=judged
                    )
    for variant in plan.variants:  # no variant used the default model: no judge either
        if variant.name not in results:
            results[variant.name] = evaluate_set(load_dataset(records[variant.name]))
    return results, served_as, judge.stats.to_dict() if judge else None


def rebaseline(plan: Plan, results: dict[str, Any], thresholds: dict[str, Any], thresholds_path: Path,
               baseline_path: Path) -> dict[str, Any]:  # fmt: skip
    """The default run becomes the baseline: thresholds from its means, its per-question scores kept."""
    if DEFAULT.name not in results:
        raise BadInput("--write-thresholds needs the default pipeline among the variants")
    agreement = judge_agreement() or {n: s.get("judge_agreement") for n, s in thresholds["metrics"].items()}
    entries = gates.thresholds_from_baseline(results[DEFAULT.name], agreement)
    info = {"pipeline": "python -m stage3_retrieval export-eval through this stage's vLLM server",
            "model": provenance(plan.model)["label"], "served_in": SERVED_DTYPE, "split": plan.split,
            "limit": plan.limit or 0, "records": results[DEFAULT.name]["n"]}  # fmt: skip
    gates.write_thresholds(entries, info, thresholds_path, thresholds["judge_agreement_bar"])
    gates.write_baseline(results[DEFAULT.name], info, baseline_path)
    return gates.load_thresholds(thresholds_path)


def plan_for(names: list[str] | None, **kwargs: Any) -> Plan:
    variants = [VARIANTS[n] for n in names] if names else list(VARIANTS.values())
    return Plan(variants=variants, **kwargs)
