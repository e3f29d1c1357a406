"""What adapting a model costs: seconds per step and peak memory for LoRA, QLoRA and 8-bit, and the capstone run.

Each precision trains in its own process (`train --json`), so its peak memory is its own and not the
largest of the runs before it. Step time is the median over the steps after the first (the first pays
for lazy initialisation). The capstone row is `make stage4`'s default run (30 DPO steps, LoRA on the
full-precision base) with held-out preference accuracy before and after.

    python -m stage4_finetune_align bench                       # -> reports/stage4_train.json + .png
    python -m stage4_finetune_align bench --no-capstone --steps 2
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import WorkFailed
from shared.models import DEFAULT_CHAT_MODEL

LABELS = {"none": "LoRA (fp32 base)", "8bit": "LoRA on int8 base", "4bit": "QLoRA (NF4 base)"}


def measure_precision(
    quant: str, steps: int, batch_size: int, model: str = DEFAULT_CHAT_MODEL
) -> dict[str, Any]:
    """Train `steps` DPO steps at one precision in a fresh process; its timing and peak memory."""
    with tempfile.TemporaryDirectory(prefix=f"stage4-bench-{quant}-") as out:
        command = [sys.executable, "-m", "stage4_finetune_align", "train", "--quant", quant, "--steps", str(steps),
                   "--batch-size", str(batch_size), "--model", model, "--out", out, "--json"]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise WorkFailed(f"training with --quant {quant} failed: {tail}")
        summary = json.loads(done.stdout)
    timed = summary["step_seconds"][1:] or summary["step_seconds"]
    return {"quant": quant, "label": LABELS[quant], "device": summary["device"], "steps": summary["steps"],
            "batch_size": batch_size, "seconds_per_step": statistics.median(timed),
            "first_step_seconds": summary["step_seconds"][0], "peak_memory_mb": summary["peak_memory_mb"],
            "base_footprint_mb": summary["base_footprint_mb"], "trainable_parameters": summary["trainable_parameters"]}  # fmt: skip


def capstone(model: str = DEFAULT_CHAT_MODEL, on_step: Callable[[dict[str, Any]], None] | None = None,
             on_pair: Callable[[], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """The default run, timed from start to adapter, and held-out preference accuracy before and after."""
    from stage4_finetune_align.data import load_pairs
    from stage4_finetune_align.dpo import TrainConfig, train
    from stage4_finetune_align.evaluate import preference_eval

    with tempfile.TemporaryDirectory(prefix="stage4-capstone-") as out:
        config = TrainConfig(model=model, out=out)
        start = time.perf_counter()
        summary = train(config, on_step=on_step)
        wall = time.perf_counter() - start
        pairs = load_pairs(split="test")
        before = preference_eval(pairs, None, model, on_pair=on_pair)
        after = preference_eval(pairs, Path(summary["adapter"]), model, on_pair=on_pair)
    return {"steps": summary["steps"], "batch_size": config.batch_size, "wall_seconds": wall,
            "seconds_per_step": summary["seconds_per_step"], "peak_memory_mb": summary["peak_memory_mb"],
            "device": summary["device"], "held_out_pairs": before["n"],
            "preference_accuracy_before": before["preference_accuracy"],
            "preference_accuracy_after": after["preference_accuracy"], "mean_margin_after": after["mean_margin"],
            "likelihood_accuracy_before": before["likelihood_accuracy"],
            "likelihood_accuracy_after": after["likelihood_accuracy"],
            "targets": {"wall_seconds_at_most": 600, "preference_accuracy_after_at_least": 0.8}}  # fmt: skip


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["precisions"]
    labels = [f"{r['label']}\n({r['device']})" for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, key, title in ((axes[0], "seconds_per_step", f"seconds per DPO step (batch {rows[0]['batch_size']})"),
                           (axes[1], "base_footprint_mb", "frozen base weights (MB)"),
                           (axes[2], "peak_memory_mb", "peak process memory (MB)")):  # fmt: skip
        bars = ax.bar(labels, [r[key] for r in rows], color=["#4c72b0", "#dd8452", "#55a868"][: len(rows)])
        ax.bar_label(bars, fmt="%.1f" if key == "seconds_per_step" else "%.0f")
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=8)
    cap = report.get("capstone")
    if cap:
        fig.suptitle(f"capstone: {cap['steps']} steps in {cap['wall_seconds'] / 60:.1f} min, held-out preference "
                     f"accuracy {cap['preference_accuracy_before']:.2f} -> {cap['preference_accuracy_after']:.2f}")  # fmt: skip
    fig.tight_layout()
    paths.atomic_savefig(fig, path, dpi=110)
    return path


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "stage4_train.json"
    paths.atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    return json_path, plot(report, out / "stage4_train.png")
