"""Measuring retrieval: a golden set, rank metrics, and tuning on dev only.

data/golden.jsonl holds questions in a learner's words, each labelled with the topics (pydoc keys,
module names, course packages) whose text answers it, split dev/test. A retrieved chunk is relevant
when its (source, topic) is among the question's; a topic counts once however many of its chunks
come back. For the ranked list of a question:

    hit@k     1 if any of the first k chunks is relevant
    MRR@10    1 / rank of the first relevant chunk within 10 (0 if none): how far down the answer is
    nDCG@10   relevant topics discounted by log2(rank + 1), divided by the best possible ordering:
              rewards finding *all* the relevant topics, early

Averaged over questions, per search mode, with the query latency's p50 and p95 (nearest rank).
Tuning (tune.py: fusion, route filter, reranker, router threshold) happens on dev only; test and
the held-out split are only ever measured.

Splits of data/golden.jsonl: `dev` (tune on it), `test` (report it), `heldout` (natural questions
over the Python reference, written at the same time as the dev additions and set aside by a seeded
shuffle before any tuning: the check that a choice made on dev carries to new questions).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shared import paths
from stage3_retrieval.hybrid import MODES, Retriever

GOLDEN_PATH = Path(__file__).parent / "data" / "golden.jsonl"


def load_golden(split: str | None = None, path: Path = GOLDEN_PATH) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if split is None or r["split"] == split]


def judge_ranking(
    ranked: Sequence[tuple[str, str]], relevant: set[tuple[str, str]], k: int = 10
) -> dict[str, float]:
    """Rank metrics for one question. `ranked`: (source, topic) of each retrieved chunk, best first.

    Example: judge_ranking([("r", "a"), ("r", "b"), ("r", "a")], {("r", "b")})
             -> {"hit@1": 0, "hit@5": 1, "mrr@10": 0.5, "ndcg@10": 0.63...}
    """
    # EXERCISE stage3.rank_metrics: within the first k: hit@1, hit@5, MRR = 1 / rank of the first relevant item (0 if none), nDCG = DCG / ideal DCG, gain 1 at each relevant item's first appearance, discounted by log2(rank + 1)
    gains, seen = [], set()
    for item in ranked[:k]:
        gains.append(1.0 if item in relevant and item not in seen else 0.0)
        seen.add(item)
    first = next((i for i, item in enumerate(ranked[:k]) if item in relevant), None)
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return {"hit@1": float(any(item in relevant for item in ranked[:1])),
            "hit@5": float(any(item in relevant for item in ranked[:5])),
            "mrr@10": 0.0 if first is None else 1 / (first + 1), "ndcg@10": dcg / ideal if ideal else 0.0}  # fmt: skip
    # END EXERCISE


def relevant_of(row: dict[str, Any]) -> set[tuple[str, str]]:
    return {(row["source"], t) for t in row["relevant"]}


def average(per_question: list[dict[str, float]]) -> dict[str, float]:
    return {m: statistics.fmean(q[m] for q in per_question) for m in per_question[0]}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q% of the values at or below it.

    Example: percentile(range(1, 21), 95) -> 19   (19 of 20 values are <= 19; the 20th is the maximum)
    """
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = math.ceil(q / 100 * len(ordered))  # 1-based
    return ordered[max(rank, 1) - 1]


def evaluate_mode(retriever: Retriever, rows: Sequence[dict[str, Any]], mode: str,
                  on_row: Callable[[], None] | None = None,
                  sources: dict[str, str | None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Mean rank metrics and latency of `mode` on `rows`. `sources` (question -> source) applies the route
    filter; a question routed out of scope (source "out_of_scope") retrieves nothing and scores 0."""
    chunks, per_question, latencies = retriever.index.chunks, [], []
    for row in rows:
        source = (sources or {}).get(row["question"])
        start = time.perf_counter()
        hits = (
            [] if source == "out_of_scope" else retriever.search(row["question"], mode, k=10, source=source)
        )
        latencies.append(1000 * (time.perf_counter() - start))
        ranked = [(chunks[h.id].source, chunks[h.id].topic) for h in hits]
        per_question.append(judge_ranking(ranked, relevant_of(row)))
        if on_row:
            on_row()
    return {"mode": mode, "n": len(rows), **average(per_question),
            "p50_ms": statistics.median(latencies), "p95_ms": percentile(latencies, 95)}  # fmt: skip


def evaluate_modes(retriever: Retriever, split: str = "test", modes: Sequence[str] = MODES,
                   on_row: Callable[[], None] | None = None,
                   sources: dict[str, str | None] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    rows = load_golden(split)
    retriever.search("warm up the models", "rerank" if "rerank" in modes else "hybrid")
    return [evaluate_mode(retriever, rows, mode, on_row, sources) for mode in modes]


def routed_sources(index: Any, rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """question -> the source the router sends it to (or "out_of_scope"): the route filter as deployed."""
    from stage3_retrieval.router import SemanticRouter

    router = SemanticRouter(index=index)
    return {row["question"]: router.route(row["question"]).name for row in rows}


def true_sources(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """question -> its labelled source: the route filter with a perfect router (an upper bound)."""
    return {row["question"]: row["source"] for row in rows}


# ---------------------------------------------------------------------------------------------
# Routing and the plot


def evaluate_routing(index: Any, split: str = "test") -> dict[str, Any]:
    from stage3_retrieval.router import SemanticRouter, load_routes, routing_accuracy

    router, rows = SemanticRouter(index=index), load_routes(split)
    per_route = {}
    for route in sorted({r["route"] for r in rows}):
        subset = [r for r in rows if r["route"] == route]
        per_route[route] = routing_accuracy(router, subset)
    return {"split": split, "n": len(rows), "threshold": router.threshold,
            "accuracy": routing_accuracy(router, rows), "per_route": per_route}  # fmt: skip


def plot_modes(results: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("hit@5", "mrr@10", "ndcg@10")
    fig, (ax, lat) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1.4]})
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        xs = [m + i * width for m in range(len(metrics))]
        bars = ax.bar(xs, [r[m] for m in metrics], width, label=r["mode"])
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks([m + 0.4 - width / 2 for m in range(len(metrics))], metrics)
    ax.set_ylim(0, 1.2)
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=len(results), loc="upper center")
    lat.barh([r["mode"] for r in results], [r["p95_ms"] for r in results], color="gray")
    lat.set_xscale("log")
    lat.set_xlabel("p95 query latency (ms, log scale)")
    fig.tight_layout()
    paths.ensure(path.parent)
    paths.atomic_savefig(fig, path, dpi=120)
    return path
