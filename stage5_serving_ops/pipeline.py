"""The system under the gate: stage 3's RAG answering the golden questions through this stage's server.

A gate that scores a hand-written file can only fail when someone edits the file. The gate here
scores what the system does: `python -m stage3_retrieval export-eval` runs stage 3's pipeline
(route, retrieve, judge the context, rewrite, answer) over its golden questions, with every model
call sent to the vLLM server this stage runs (`--base-url`), and writes one record per question:
the contexts the model was shown, its answer, the reference answer and the reference contexts
(dataset.py has the format). Ragas scores those records (ragas_metrics.py) and the thresholds turn
the scores into a verdict (gate.py).

A gate is tested the way a smoke alarm is: by making smoke. Each *regression* below is a real
change to the system made by a flag, not an edit of data, and the gate must fail it:

    bm25-only      stage 3 retrieves by keywords alone (`export-eval --mode bm25`) instead of its tuned mode
    reflection-off stage 3 retrieves once and never rewrites its query (`--max-rounds 1`): when its judge
                   says the context is not enough, it answers "I don't know"
    fixed-chunks   stage 3's index cut into fixed windows instead of structure-aware chunks
                   (an index built with `index --chunker fixed`, passed with `--index`)
    nf4-weights    the served model's weights rounded through NF4 and back (quantize.save_rounded),
                   served by vLLM in place of the default model: NF4's quality, on any engine

`python -m stage5_serving_ops regressions` runs the default pipeline and every regression on the
same questions and writes the gate table (reports/stage5_gate.json and .png).

Stage 3 runs in its own process (the stages hand work over through files), under the watchdog, so
it stops with us; the API key reaches it through OPENAI_API_KEY, never its command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import WorkFailed
from stage5_serving_ops.launch import stop_on_signals
from stage5_serving_ops.ragas_metrics import short_name
from stage5_serving_ops.server import log_tail, watched

STAGE3 = (sys.executable, "-m", "stage3_retrieval")
DEFAULT_SPLIT = "test"
DEFAULT_LIMIT = None  # questions per run: the whole split (the test split: 60, over all three sources)
# The pipeline's own server computes in float32, the checkpoint's stored precision. The RAG's judge
# and answerer each read about 700 tokens of context, so the gate is bound by prefill, and on a CPU
# without bfloat16 instructions (AVX2 only, as the 2-core machines this course was measured on)
# vLLM's default bfloat16 is emulated, and prefill pays for it far more than decoding does. Served
# replies then also equal an in-process float32 run's, token for token (stage 4's server test).
SERVED_DTYPE = "float32"


@dataclass(frozen=True)
class Variant:
    name: str
    what: str  # in words, for tables
    export_args: tuple[str, ...] = ()  # extra flags for stage 3's export-eval
    chunker: str | None = None  # stage 3's index cut with this chunker (its own folder)
    weights: str | None = None  # serve the model's weights rounded through this precision


DEFAULT = Variant("default", "stage 3 as shipped: tuned retrieval, structure-aware chunks, the default model")
REGRESSIONS = (
    Variant("bm25-only", "keyword search alone (BM25) instead of the tuned retrieval", export_args=("--mode", "bm25")),
    Variant("reflection-off", "one retrieval round, no rewrite when the context is judged not enough",
            export_args=("--max-rounds", "1")),
    Variant("fixed-chunks", "fixed-size windows instead of structure-aware chunks", chunker="fixed"),
    Variant("nf4-weights", "the model's weights rounded to NF4 (4-bit) and back", weights="nf4"),
)  # fmt: skip
VARIANTS = {v.name: v for v in (DEFAULT, *REGRESSIONS)}


def work_dir() -> Path:
    return paths.artifacts_dir() / "stage5"


def index_dir(variant: Variant, base: Path | None = None) -> Path | None:
    """Stage 3's index for a variant: `base` (None: stage 3's own default) unless it needs another chunker."""
    if variant.chunker is None:
        return base
    return work_dir() / f"stage3-index-{variant.chunker}"


def rounded_model_dir(model: str, precision: str) -> Path:
    return work_dir() / "models" / f"{Path(model).name}-{precision}-rounded"


def run_watched(args: list[str], log_path: Path, env: dict[str, str] | None = None, what: str = "") -> None:
    """Run a command to completion under the watchdog (it dies if we do), its output to `log_path`;
    WorkFailed with the log's tail if it fails. Ctrl-C and SIGTERM stop it too."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        # Its own session, like a server's: a terminal's Ctrl-C reaches us, and we stop it.
        process = subprocess.Popen(watched(args, grace_s=10.0), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env, start_new_session=True)  # fmt: skip
        try:
            with stop_on_signals():
                code = process.wait()
        except BaseException:
            process.terminate()  # the watchdog stops the command and sweeps its group
            process.wait()
            raise
    if code != 0:
        raise WorkFailed(
            f"{what or args[0]} failed (exit {code}); last lines of {log_path}:\n{log_tail(log_path)}"
        )


def ensure_index(index: Path | None, chunker: str = "structured") -> None:
    """Build stage 3's index if it is not there yet (stage 3's `index` keeps one that is)."""
    args = [*STAGE3, *(["--index", str(index)] if index else []), "index", "--chunker", chunker]
    name = f"index-{chunker}" if index else "index"
    run_watched(args, work_dir() / "logs" / f"stage3-{name}.log", what="stage 3's index build")


def export_command(variant: Variant, out: Path, base_url: str, served_name: str, split: str = DEFAULT_SPLIT,
                   limit: int | None = DEFAULT_LIMIT, index: Path | None = None) -> list[str]:  # fmt: skip
    """Stage 3's export-eval command line for `variant` (no secret on it: see `export`)."""
    index = index_dir(variant, index)
    return [*STAGE3, *(["--index", str(index)] if index else []), "export-eval", str(out), "--split", split,
            *(["--limit", str(limit)] if limit else []), "--base-url", base_url, "--model", served_name,
            *variant.export_args]  # fmt: skip


def export(variant: Variant, out: Path, base_url: str, served_name: str, api_key: str | None = None,
           split: str = DEFAULT_SPLIT, limit: int | None = DEFAULT_LIMIT, index: Path | None = None) -> Path:  # fmt: skip
    """Stage 3's records for `variant`, answered through the server at `base_url`, written to `out`."""
    args = export_command(variant, out, base_url, served_name, split, limit, index)
    env = dict(os.environ)
    if api_key:
        env["OPENAI_API_KEY"] = api_key  # shared.chat reads it when --api-key is not given
    run_watched(args, work_dir() / "logs" / f"export-{variant.name}.log", env, what="stage 3's export-eval")
    return out


def prepare(variant: Variant, model: str, index: Path | None = None) -> str:
    """Build what a variant needs before any server starts (an index, rounded weights); the model to serve."""
    if variant.chunker is not None or index is None:
        ensure_index(index_dir(variant, index), variant.chunker or "structured")
    if variant.weights is None:
        return model
    folder = rounded_model_dir(model, variant.weights)
    if not (folder / "config.json").is_file():
        from stage5_serving_ops.quantize import save_rounded

        save_rounded(variant.weights, folder, model)
    return str(folder)


def records_path(variant: Variant, out_dir: Path | None = None) -> Path:
    return (out_dir or work_dir() / "records") / f"{variant.name}.jsonl"


def summary_rows(runs: dict[str, dict[str, Any]], metrics: list[str]) -> list[tuple[Any, ...]]:
    """The gate table: one row per variant; each metric's mean and, beside it, the paired difference
    from the baseline; x where the metric failed the gate; the verdict against the expectation."""
    rows = []
    for name, run in runs.items():
        failed = {f["metric"] for f in run["gate"]["failures"]}
        cells = []
        for metric in metrics:
            value = run["result"]["metrics"].get(metric)
            paired = (run.get("paired") or {}).get(metric)
            diff = f" ({paired['mean']:+.3f})" if paired and name != "default" else ""
            cells.append("-" if value is None else f"{value:.3f}{diff}{' x' if metric in failed else ''}")
        verdict = "pass" if run["gate"]["passed"] else "FAIL"
        expected = (
            "as expected" if run["gate"]["passed"] == (run["expected"] == "pass") else "NOT as expected"
        )
        rows.append((name, *cells, f"{verdict}, {expected}"))
    return rows


def plot(report: dict[str, Any], path: Path) -> Path:
    """Each metric's mean per variant, the threshold as a line: the gate table as a picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in report["metrics"] if any(r["result"]["metrics"].get(m) is not None
                                                   for r in report["runs"].values())]  # fmt: skip
    names = list(report["runs"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.6), squeeze=False)
    colors = ["#4c72b0", "#dd8452", "#8172b3", "#c44e52", "#55a868"]
    for ax, metric in zip(axes[0], metrics, strict=True):
        values = [report["runs"][n]["result"]["metrics"].get(metric) or 0 for n in names]
        bars = ax.bar(range(len(names)), values, color=[colors[i % len(colors)] for i in range(len(names))])
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
        threshold = report["thresholds"]["metrics"].get(metric, {}).get("min")
        if threshold is not None:
            ax.axhline(threshold, color="black", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=7, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title(short_name(metric), fontsize=9)
    fig.suptitle(f"the gate on {report['n']} questions, {report['model']['model']} ({report['model']['source']}): "
                 "default pipeline against each regression (dashed: threshold)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    paths.atomic_savefig(fig, path, dpi=110)
    return path
