"""What each way of adapting costs and buys: minutes, s/step and memory, then what the model writes.

Two tables, each row in a fresh process (`train --json`), so its time and peak memory are its own:

- methods: base, SFT, DPO, SFT then DPO, each trained with the capstone's settings (LoRA on the
  full-precision base) and evaluated on the held-out set: likelihood accuracy on the pairs, and
  the style figures of greedy replies to every held-out prompt. `verdict` sets the capstone's
  default method against the targets (10 minutes, style, lift over the base, likelihood accuracy);
  the default belongs to whichever method this table shows meets them;
- precisions: a few DPO steps at each precision of the frozen base (fp32 LoRA, int8, NF4 QLoRA):
  seconds per step (the median after the first, which pays for lazy initialisation), the base's
  footprint and the process's peak memory.

Timings are only worth comparing on an otherwise idle machine: torch's threads stall when another
process takes a core (run it under `flock -x` on a shared machine).

    python -m stage4_finetune_align bench                       # -> reports/stage4_train.json + .png
    python -m stage4_finetune_align bench --methods base,sft --no-precisions
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import WorkFailed
from shared.models import DEFAULT_CHAT_MODEL

LABELS = {"none": "LoRA (fp32 base)", "8bit": "LoRA on int8 base", "4bit": "QLoRA (NF4 base)"}
METHOD_LABELS = {"base": "base (no training)", "sft": "SFT", "dpo": "DPO", "sft-dpo": "SFT, then DPO"}
TARGETS = {"minutes_at_most": 10.0, "all_rules_at_least": 0.8, "all_rules_lift_over_base_at_least": 0.3,
           "likelihood_accuracy_at_least": 0.8}  # fmt: skip


def run_json(args: list[str], what: str) -> dict[str, Any]:
    """`python -m stage4_finetune_align ARGS --json` in a fresh process; its JSON, or WorkFailed with its last line."""
    done = subprocess.run([sys.executable, "-m", "stage4_finetune_align", *args, "--json"], capture_output=True,
                          text=True)  # fmt: skip
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise WorkFailed(f"{what} failed: {tail}")
    return json.loads(done.stdout)


def measure_precision(
    quant: str, steps: int, batch_size: int, model: str = DEFAULT_CHAT_MODEL
) -> dict[str, Any]:
    """Train `steps` DPO steps at one precision in a fresh process; its timing and peak memory."""
    with tempfile.TemporaryDirectory(prefix=f"stage4-bench-{quant}-") as out:
        summary = run_json(["train", "--method", "dpo", "--quant", quant, "--steps", str(steps), "--batch-size",
                            str(batch_size), "--model", model, "--out", out], f"training with --quant {quant}")  # fmt: skip
    timed = summary["step_seconds"][1:] or summary["step_seconds"]
    return {"quant": quant, "label": LABELS[quant], "device": summary["device"], "steps": summary["steps"],
            "batch_size": batch_size, "seconds_per_step": statistics.median(timed),
            "first_step_seconds": summary["step_seconds"][0], "peak_memory_mb": summary["peak_memory_mb"],
            "base_footprint_mb": summary["base_footprint_mb"], "trainable_parameters": summary["trainable_parameters"]}  # fmt: skip


def bench_dir(method: str) -> Path:
    """Where the bench keeps a method's run (its adapter is what `served` merges and serves)."""
    return paths.artifacts_dir() / "stage4" / "bench" / method


def measure_method(method: str, model: str = DEFAULT_CHAT_MODEL, train_args: list[str] | None = None,
                   on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Train one method with the default settings (none for the base), then evaluate it, each in a fresh process."""
    out = bench_dir(method)
    summary = None
    if method != "base":
        if on_stage:
            on_stage(f"{method}: training")
        shutil.rmtree(out, ignore_errors=True)
        summary = run_json(["train", "--method", method, "--model", model, "--out", str(out), *(train_args or [])],
                           f"training {method}")  # fmt: skip
    if on_stage:
        on_stage(f"{method}: held-out pairs and replies")
    adapter = ["--adapter", summary["adapter"]] if summary else []
    result = run_json(["eval", "--model", model, *adapter], f"evaluating {method}")
    g = result["generation"]
    row: dict[str, Any] = {
        "method": method, "label": METHOD_LABELS[method], "likelihood_accuracy": result["likelihood_accuracy"],
        "likelihood_accuracy_by_fault": result["likelihood_accuracy_by_fault"],
        "median_logprob_gap_by_fault": result["median_logprob_gap_by_fault"],
        "all_rules": g["all_rules"], "mean_sentences": g["mean_sentences"], "blame_rate": g["blame_rate"],
        "at_most_three_sentences_rate": g["at_most_three_sentences_rate"], "next_step_rate": g["next_step_rate"],
        "held_out_pairs": result["n"], "held_out_prompts": g["prompts"], "max_new_tokens": g["max_new_tokens"],
        "truncated_share": result["lengths"]["truncated_share"], "max_length": result["lengths"]["max_length"],
        "implicit_reward_accuracy_diagnostic": result["training_diagnostic"]["implicit_reward_accuracy"],
        "eval_seconds": result["pairs_seconds"] + g["seconds"], "replies": g["replies"],
        "minutes": 0.0, "seconds_per_step": None, "steps": 0}  # fmt: skip
    if summary:
        row.update(minutes=summary["wall_seconds"] / 60, seconds_per_step=summary["seconds_per_step"],
                   steps=summary["steps"], peak_memory_mb=summary["peak_memory_mb"],
                   phases={k: {"steps": v["steps"], "seconds": v["seconds"]} for k, v in summary.get("phases", {}).items()},
                   config={k: summary["config"][k] for k in ("steps", "sft_steps", "batch_size", "learning_rate", "beta")},
                   train_truncated_share=summary["lengths"]["truncated_share"])  # fmt: skip
    return row


def measure_served(row: dict[str, Any], model: str = DEFAULT_CHAT_MODEL,
                   on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Merge a benched method's adapter, serve it with stage 5's `serve`, and score its replies through the API.

    The same held-out prompts, greedy, the same token budget as the in-process row: the figures should
    agree; the replies are identical where vLLM computes in float32 (bar a near tie), and part after the
    first near tie where it computes in bfloat16 (recorded as `dtype`).
    """
    from stage4_finetune_align.serving import ServedModel

    out = bench_dir(row["method"])
    if on_stage:
        on_stage(f"{row['method']}: merging the adapter")
    run_json(
        ["merge", "--adapter", str(out / "adapter"), "--out", str(out / "merged"), "--model", model], "merge"
    )
    if on_stage:
        on_stage(f"{row['method']}: serving the merged model (python -m stage5_serving_ops serve)")
    with ServedModel(str(out / "merged"), log_dir=out / "serve") as server:
        if on_stage:
            on_stage(f"{row['method']}: replies through the server")
        served = run_json(["eval", "--base-url", server.base_url], "evaluating through the server")
        started_s, dtype = server.started_s, server.engine_dtype()
    g = served["generation"]
    identical = sum(a["reply"] == b["reply"] for a, b in zip(row["replies"], g["replies"], strict=True))
    return {"method": row["method"], "served_as": served["model"], "dtype": dtype, "server_start_s": started_s,
            "all_rules": g["all_rules"], "mean_sentences": g["mean_sentences"], "blame_rate": g["blame_rate"],
            "in_process": {k: row[k] for k in ("all_rules", "mean_sentences", "blame_rate")},
            "identical_replies": identical, "prompts": g["prompts"], "seconds": g["seconds"], "replies": g["replies"]}  # fmt: skip


def verdict(methods: list[dict[str, Any]], default: str) -> dict[str, Any]:
    """The default method's row against the targets: each measured, none adjusted."""
    rows = {r["method"]: r for r in methods}
    if default not in rows:
        return {}
    row, base = rows[default], rows.get("base")
    checks = {"minutes": row["minutes"] <= TARGETS["minutes_at_most"],
              "all_rules": row["all_rules"] >= TARGETS["all_rules_at_least"],
              "likelihood_accuracy": row["likelihood_accuracy"] >= TARGETS["likelihood_accuracy_at_least"]}  # fmt: skip
    if base:
        checks["lift_over_base"] = (
            row["all_rules"] - base["all_rules"] >= TARGETS["all_rules_lift_over_base_at_least"]
        )
    return {"method": default, "targets": TARGETS, "met": checks, "all_met": all(checks.values())}


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods, rows = report.get("methods", []), report.get("precisions", [])
    panels = (3 if methods else 0) + (2 if rows else 0)
    fig, axes = plt.subplots(1, max(1, panels), figsize=(3.6 * max(1, panels), 3.8), squeeze=False)
    axes = list(axes[0])
    if methods:
        names = [m["label"].replace(" (no training)", "").replace(", then ", "\nthen ") for m in methods]
        for ax, key, title, fmt in ((axes.pop(0), "all_rules", "replies meeting all 3 rules", "%.2f"),
                                    (axes.pop(0), "likelihood_accuracy", "likelihood accuracy (pairs)", "%.2f"),
                                    (axes.pop(0), "minutes", "training minutes", "%.1f")):  # fmt: skip
            bars = ax.bar(
                names,
                [m[key] for m in methods],
                color=["#999999", "#4c72b0", "#dd8452", "#55a868"][: len(methods)],
            )
            ax.bar_label(bars, fmt=fmt)
            ax.set_title(title, fontsize=10)
            ax.tick_params(axis="x", labelsize=8)
            if key == "all_rules":
                ax.axhline(TARGETS["all_rules_at_least"], color="k", lw=0.8, ls="--")
            if key == "minutes":
                ax.axhline(TARGETS["minutes_at_most"], color="k", lw=0.8, ls="--")
    if rows:
        labels = [f"{r['label']}\n({r['device']})".replace(" (", "\n(", 1) for r in rows]
        for ax, key, title in ((axes.pop(0), "seconds_per_step", f"s per DPO step (batch {rows[0]['batch_size']})"),
                               (axes.pop(0), "base_footprint_mb", "frozen base weights (MiB)")):  # fmt: skip
            bars = ax.bar(
                labels, [r[key] for r in rows], color=["#4c72b0", "#dd8452", "#55a868"][: len(rows)]
            )
            ax.bar_label(bars, fmt="%.1f" if key == "seconds_per_step" else "%.0f")
            ax.set_title(title, fontsize=10)
            ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"stage 4 on {report['model']}: {report.get('held_out_prompts', '?')} held-out prompts, "
                 f"{report.get('held_out_pairs', '?')} held-out pairs")  # fmt: skip
    fig.tight_layout()
    paths.atomic_savefig(fig, path, dpi=110)
    return path


def carry_over(report: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """A partial run (`--methods sft`, `--no-precisions`) keeps what an earlier run of the same model measured.

    Rows of methods this run did not train, the precision table when this run timed none, and the
    served figures when this run served nothing but the earlier one served the current default, are
    copied over and named in `carried_over`; rows from another model never are."""
    if not previous or previous.get("model") != report["model"]:
        return report
    done = {row["method"] for row in report["methods"]}
    kept = [
        row
        for row in previous.get("methods", [])
        if row["method"] not in done and row["method"] in METHOD_LABELS
    ]
    order = list(METHOD_LABELS)
    report["methods"] = sorted(report["methods"] + kept, key=lambda row: order.index(row["method"]))
    carried = [f"method {row['method']}" for row in kept]
    if not report["precisions"] and previous.get("precisions"):
        report["precisions"], carried = previous["precisions"], [*carried, "precisions"]
    served = previous.get("served")
    if "served" not in report and served and served.get("method") == report["default_method"]:
        report["served"], carried = served, [*carried, "served"]
    if carried:
        report["carried_over"] = carried
    if "held_out_prompts" not in report and report["methods"]:
        report.update(held_out_pairs=report["methods"][0]["held_out_pairs"],
                      held_out_prompts=report["methods"][0]["held_out_prompts"])  # fmt: skip
    return report


def load_report(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / "stage4_train.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "stage4_train.json"
    paths.atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    return json_path, plot(report, out / "stage4_train.png")
