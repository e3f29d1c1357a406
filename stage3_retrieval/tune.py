"""Tuning on dev: every choice the pipeline makes, made on dev, written where you can read it.

    python -m stage3_retrieval eval --split dev --tune             # -> artifacts/stage3/tuned.json
    python -m stage3_retrieval eval --split dev --tune --install   # ... and copy it to data/tuned.json

Choices, in order (each one measured with the ones before it in place):

    fusion        RRF with the dense list weighted w : 1 (w from 0.25 to 16) or weighted score
                  fusion with alpha from 0 to 1: the best dev MRR@10 (ties: nDCG@10, then the
                  earlier grid entry). The grid is wide enough that the winner is not on its edge;
                  `at_grid_edge` in the result says so if it ever is
    route filter  search only the routed source, or everything: kept if dev MRR@10 is higher
                  with the router's own decisions (mistakes included)
    rerank        the reranker over the fused top RERANK_DEPTH: kept if dev MRR@10 is higher
    router        the similarity threshold below which a query is out of scope, on the routing
                  set's dev split; tie rule: of the thresholds with the best dev accuracy, the
                  median (the middle of the best plateau, as far from both failure modes as dev
                  can tell)

The package ships the choice it runs with in data/tuned.json. Tuning never writes there by
itself: it writes artifacts/stage3/tuned.json, and `--install` copies it over on purpose.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shared import paths
from stage3_retrieval.evaluate import (
    average,
    evaluate_mode,
    judge_ranking,
    load_golden,
    relevant_of,
    routed_sources,
)
from stage3_retrieval.hybrid import CANDIDATES, TUNED_PATH, Retriever, rrf, weighted_fusion

RRF_WEIGHTS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
THRESHOLDS = tuple(round(0.15 + 0.025 * i, 3) for i in range(21))


def tuned_path() -> Path:
    return paths.artifacts_dir() / "stage3" / "tuned.json"


def fusion_grid() -> list[dict[str, Any]]:
    grid: list[dict[str, Any]] = [{"method": "rrf", "weights": [w, 1.0], "k": 60} for w in RRF_WEIGHTS]
    grid += [{"method": "weighted", "alpha": round(a / 10, 1)} for a in range(0, 11)]
    return grid


def fuse(fusion: dict[str, Any], dense: list[tuple[str, float]], keyword: list[tuple[str, float]]) -> list:
    if fusion["method"] == "weighted":
        return weighted_fusion(dense, keyword, fusion["alpha"])
    return rrf([[d for d, _ in dense], [d for d, _ in keyword]], fusion["weights"], fusion["k"])


def tune_fusion(retriever: Retriever, rows: Sequence[dict[str, Any]], sources: dict[str, Any] | None = None,
                on_row: Callable[[], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """The best fusion on `rows`; candidate lists are fetched once and every grid entry reuses them."""
    index, chunks = retriever.index, retriever.index.chunks
    candidates = []
    for row in rows:
        source = (sources or {}).get(row["question"])
        where = {"source": source} if source else None
        candidates.append((index.dense.search(row["question"], CANDIDATES, where=where),
                           index.bm25.search(row["question"], CANDIDATES, source)))  # fmt: skip
        if on_row:
            on_row()
    scored = []
    for fusion in fusion_grid():
        per_question = [judge_ranking([(chunks[d].source, chunks[d].topic) for d, _ in fuse(fusion, *c)[:10]],
                                      relevant_of(row)) for row, c in zip(rows, candidates, strict=True)]  # fmt: skip
        scored.append({**fusion, **average(per_question)})
    best_i = max(range(len(scored)), key=lambda i: (scored[i]["mrr@10"], scored[i]["ndcg@10"], -i))
    best = scored[best_i]
    same_method = [i for i, s in enumerate(scored) if s["method"] == best["method"]]
    return {"fusion": {k: best[k] for k in ("method", "weights", "k", "alpha") if k in best},
            "dev": {"mrr@10": best["mrr@10"], "ndcg@10": best["ndcg@10"]},
            "at_grid_edge": best_i in (same_method[0], same_method[-1]),
            "grid": [{k: v for k, v in s.items() if k in ("method", "weights", "alpha", "mrr@10", "ndcg@10")}
                     for s in scored]}  # fmt: skip


def best_threshold(accuracy: dict[float, float]) -> float:
    """The tie rule: the median of the thresholds that reach the best accuracy (the lower middle one
    when their count is even).

    Example: best_threshold({0.3: 0.8, 0.35: 0.9, 0.4: 0.9, 0.45: 0.9, 0.5: 0.7}) -> 0.4
    """
    top = max(accuracy.values())
    best = sorted(t for t, a in accuracy.items() if a == top)
    return best[(len(best) - 1) // 2]


def tune_router(index: Any, split: str = "dev") -> dict[str, Any]:
    from stage3_retrieval.router import SemanticRouter, load_routes, routing_accuracy

    route_rows = load_routes(split)
    out = {}
    for key, backing in (("router", index), ("router_examples_only", None)):
        router = SemanticRouter(threshold=0.0, index=backing)
        cache = {r["query"]: router.scores(r["query"]) for r in route_rows}
        accuracy = {t: routing_accuracy(router, route_rows, t, cache) for t in THRESHOLDS}
        threshold = best_threshold(accuracy)
        out[key] = {"threshold": threshold, "dev_accuracy": accuracy[threshold],
                    "tie_rule": "median of the thresholds with the best dev accuracy"}  # fmt: skip
    return out


def tune(
    retriever: Retriever, on_row: Callable[[], None] | None = None, copy_to_package: bool = False
) -> dict[str, Any]:
    """Every choice on dev; written to artifacts/stage3/tuned.json (and data/tuned.json with `install`)."""
    rows = load_golden("dev")
    index = retriever.index
    routers = tune_router(index)
    routed = routed_sources(index, rows)
    unfiltered = tune_fusion(retriever, rows, None, on_row)
    filtered = tune_fusion(retriever, rows, routed, on_row)
    use_filter = filtered["dev"]["mrr@10"] > unfiltered["dev"]["mrr@10"]
    chosen = filtered if use_filter else unfiltered
    tuned_retriever = Retriever(index, chosen["fusion"], retriever._reranker)
    sources = routed if use_filter else None
    hybrid = evaluate_mode(tuned_retriever, rows, "hybrid", on_row, sources)
    reranked = evaluate_mode(tuned_retriever, rows, "rerank", on_row, sources)
    tuned = {"tuned_on": "dev", "questions": len(rows), "fusion": chosen["fusion"], "fusion_dev": chosen["dev"],
             "fusion_at_grid_edge": chosen["at_grid_edge"],
             "route_filter": {"use": use_filter, "filtered_mrr@10": filtered["dev"]["mrr@10"],
                              "unfiltered_mrr@10": unfiltered["dev"]["mrr@10"],
                              "routed_out_of_scope": sum(v == "out_of_scope" for v in routed.values())},
             "rerank": {"use": reranked["mrr@10"] > hybrid["mrr@10"], "hybrid_mrr@10": hybrid["mrr@10"],
                        "rerank_mrr@10": reranked["mrr@10"], "reranker": retriever.reranker.name},
             **routers, "grid": chosen["grid"]}  # fmt: skip
    out = paths.atomic_write_text(tuned_path(), json.dumps(tuned, indent=2) + "\n")
    if copy_to_package:
        install(out)
    return tuned


def install(source: Path | None = None) -> Path:
    """Copy a tuned.json (default: the last `--tune`) into the package, where the pipeline reads it."""
    source = Path(source or tuned_path())
    shutil.copyfile(source, TUNED_PATH)
    return TUNED_PATH


def summary(tuned: dict[str, Any]) -> str:
    f = tuned["fusion"]
    fusion = (
        f"rrf {f['weights'][0]:g}:{f['weights'][1]:g}"
        if f["method"] == "rrf"
        else f"weighted alpha {f['alpha']}"
    )
    return (f"fusion {fusion} (dev MRR@10 {tuned['fusion_dev']['mrr@10']:.3f}"
            f"{', AT THE GRID EDGE' if tuned['fusion_at_grid_edge'] else ''}); route filter "
            f"{'on' if tuned['route_filter']['use'] else 'off'}; rerank {'on' if tuned['rerank']['use'] else 'off'} "
            f"({tuned['rerank']['hybrid_mrr@10']:.3f} -> {tuned['rerank']['rerank_mrr@10']:.3f}); router threshold "
            f"{tuned['router']['threshold']} (dev {tuned['router']['dev_accuracy']:.0%})")  # fmt: skip
