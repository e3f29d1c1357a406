"""Measuring retrieval: a golden set, rank metrics, and tuning on dev only.

data/golden.jsonl holds questions in a learner's words, each labelled with the topics (pydoc keys,
module names, course packages) whose text answers it, split dev/test. A retrieved chunk is relevant
when its (source, topic) is among the question's; a topic counts once however many of its chunks
come back. For the ranked list of a question:

    hit@k     1 if any of the first k chunks is relevant
    MRR@10    1 / rank of the first relevant chunk within 10 (0 if none): how far down the answer is
    nDCG@10   relevant topics discounted by log2(rank + 1), divided by the best possible ordering:
              rewards finding *all* the relevant topics, early

Averaged over questions, per search mode, with the query latency's p50 and p95. Tuning (fusion
method and weights, whether to rerank, the router's threshold) happens on dev and is written to
data/tuned.json; test is only ever measured.
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
from stage3_retrieval.hybrid import CANDIDATES, MODES, TUNED_PATH, Retriever, rrf, weighted_fusion

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


def evaluate_mode(retriever: Retriever, rows: Sequence[dict[str, Any]], mode: str,
                  on_row: Callable[[], None] | None = None) -> dict[str, Any]:  # fmt: skip
    chunks, per_question, latencies = retriever.index.chunks, [], []
    for row in rows:
        start = time.perf_counter()
        hits = retriever.search(row["question"], mode, k=10)
        latencies.append(1000 * (time.perf_counter() - start))
        ranked = [(chunks[h.id].source, chunks[h.id].topic) for h in hits]
        per_question.append(judge_ranking(ranked, relevant_of(row)))
        if on_row:
            on_row()
    latencies.sort()
    return {"mode": mode, "n": len(rows), **average(per_question),
            "p50_ms": statistics.median(latencies), "p95_ms": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]}  # fmt: skip


def evaluate_modes(retriever: Retriever, split: str = "test", modes: Sequence[str] = MODES,
                   on_row: Callable[[], None] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    rows = load_golden(split)
    retriever.search("warm up the models", "rerank" if "rerank" in modes else "hybrid")
    return [evaluate_mode(retriever, rows, mode, on_row) for mode in modes]


# ---------------------------------------------------------------------------------------------
# Tuning on dev


def fusion_grid() -> list[dict[str, Any]]:
    grid: list[dict[str, Any]] = [
        {"method": "rrf", "weights": [w, 1.0], "k": 60} for w in (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
    ]
    grid += [{"method": "weighted", "alpha": round(a / 10, 1)} for a in range(0, 11)]
    return grid


def tune(retriever: Retriever, on_row: Callable[[], None] | None = None) -> dict[str, Any]:
    """Choose the fusion, the reranker and the router threshold on dev; write data/tuned.json."""
    from stage3_retrieval.router import SemanticRouter, load_routes, routing_accuracy

    rows = load_golden("dev")
    chunks = retriever.index.chunks
    candidates = []
    for row in rows:  # the two candidate lists once per question; every fusion reuses them
        candidates.append((retriever.index.dense.search(row["question"], CANDIDATES),
                           retriever.index.bm25.search(row["question"], CANDIDATES)))  # fmt: skip
        if on_row:
            on_row()
    scored = []
    for fusion in fusion_grid():
        per_question = []
        for row, (dense, keyword) in zip(rows, candidates, strict=True):
            fused = (weighted_fusion(dense, keyword, fusion["alpha"]) if fusion["method"] == "weighted"
                     else rrf([[d for d, _ in dense], [d for d, _ in keyword]], fusion["weights"], fusion["k"]))  # fmt: skip
            ranked = [(chunks[d].source, chunks[d].topic) for d, _ in fused[:10]]
            per_question.append(judge_ranking(ranked, relevant_of(row)))
        scored.append({**fusion, **average(per_question)})
    best = max(scored, key=lambda s: (s["mrr@10"], s["ndcg@10"]))
    fusion = {k: best[k] for k in ("method", "weights", "k", "alpha") if k in best}
    tuned_retriever = Retriever(retriever.index, fusion, retriever._reranker)
    hybrid = evaluate_mode(tuned_retriever, rows, "hybrid", on_row)
    reranked = evaluate_mode(tuned_retriever, rows, "rerank", on_row)
    route_rows = load_routes("dev")
    thresholds = [round(0.15 + 0.025 * i, 3) for i in range(21)]
    routers = {}
    for key, index in (("router", retriever.index), ("router_examples_only", None)):
        router = SemanticRouter(threshold=0.0, index=index)
        cache = {r["query"]: router.scores(r["query"]) for r in route_rows}
        accuracy = {t: routing_accuracy(router, route_rows, t, cache) for t in thresholds}
        threshold = max(thresholds, key=lambda t, a=accuracy: (a[t], -abs(t - 0.4)))
        routers[key] = {"threshold": threshold, "dev_accuracy": accuracy[threshold]}
    tuned = {"tuned_on": "dev", "questions": len(rows), "fusion": fusion, "fusion_dev": {"mrr@10": best["mrr@10"],
             "ndcg@10": best["ndcg@10"]},
             "rerank": {"use": reranked["mrr@10"] > hybrid["mrr@10"], "hybrid_mrr@10": hybrid["mrr@10"],
                        "rerank_mrr@10": reranked["mrr@10"]},
             **routers,
             "grid": [{k: v for k, v in s.items() if k in ("method", "weights", "alpha", "mrr@10", "ndcg@10")}
                      for s in scored]}  # fmt: skip
    paths.atomic_write_text(TUNED_PATH, json.dumps(tuned, indent=2) + "\n")
    return tuned


# ---------------------------------------------------------------------------------------------
# Routing, the plot, and the export for stage 5


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


def export_records(rag: Any, rows: Sequence[dict[str, Any]], out: Path,
                   on_row: Callable[[], None] | None = None) -> int:  # fmt: skip
    """JSONL records {id, question, contexts, answer, reference, reference_contexts} of the RAG's answers, for
    stage 5's Ragas; reference_contexts: the text of each relevant topic, from the index's chunks."""
    lines = []
    chunks = sorted(rag.retriever.index.chunks.values(), key=lambda c: c.position)
    for row in rows:
        result = rag.ask(row["question"])
        reference_contexts = ["\n\n".join(c.text for c in chunks if c.topic == topic and c.source == row["source"])
                              for topic in row["relevant"]]  # fmt: skip
        lines.append(json.dumps({"id": row["id"], "question": row["question"], "contexts": result.contexts,
                                 "answer": result.answer, "reference": row.get("answer", ""),
                                 "reference_contexts": [t for t in reference_contexts if t],
                                 "relevant": row["relevant"], "citations": result.citations}, ensure_ascii=False))  # fmt: skip
        if on_row:
            on_row()
    paths.atomic_write_text(out, "\n".join(lines) + "\n")
    return len(lines)
