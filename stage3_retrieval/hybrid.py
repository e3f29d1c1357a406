"""Hybrid search: fuse the keyword and the dense rankings, and search in one of several modes.

BM25 is right when the query names the thing (`__slots__`); dense is right when it describes it
("rebind an outer variable"). Fusion takes a candidate list from each and merges them:

    reciprocal rank fusion (RRF)   score(d) = sum_i  w_i / (k + rank_i(d))       (k = 60)
        uses only ranks, so scales that cannot be compared (BM25's 0..30, cosine's 0..1) do not
        matter; a document ranked well by both wins.
    weighted score fusion          score(d) = alpha * dense'(d) + (1 - alpha) * bm25'(d)
        each list's scores min-max normalised to 0..1 over its candidates (absent: 0); keeps how
        *much* better the top result is, which ranks throw away.

An equal-weight RRF is the textbook default, and on this corpus it lost to dense alone in a trial:
the weights must be tuned, on the dev split, and the choice kept in data/tuned.json (never
tuned on test). `python -m stage3_retrieval eval --split dev --tune` redoes it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TUNED_PATH = Path(__file__).parent / "data" / "tuned.json"
MODES = ("bm25", "dense", "rrf", "hybrid", "rerank")
CANDIDATES = 50
RERANK_DEPTH = 20


def rrf(
    rankings: Sequence[Sequence[str]], weights: Sequence[float] | None = None, k: int = 60
) -> list[tuple[str, float]]:
    """Reciprocal rank fusion of ranked id lists, best first.

    Example: rrf([["a", "b"], ["b", "c"]]) -> [("b", 1/62 + 1/61), ("a", 1/61), ("c", 1/62)]
    """
    # EXERCISE stage3.rrf: each id scores the sum of weight / (k + rank) over the rankings holding it (rank from 1, weights 1.0 by default); sort by score descending, ties by id
    weights = weights or [1.0] * len(rankings)
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, doc in enumerate(ranking, start=1):
            scores[doc] = scores.get(doc, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    # END EXERCISE


def minmax(results: Sequence[tuple[str, float]]) -> dict[str, float]:
    if not results:
        return {}
    values = [s for _, s in results]
    low, high = min(values), max(values)
    return {d: (s - low) / (high - low) if high > low else 1.0 for d, s in results}


def weighted_fusion(dense: Sequence[tuple[str, float]], keyword: Sequence[tuple[str, float]],
                    alpha: float) -> list[tuple[str, float]]:  # fmt: skip
    """alpha * normalised dense + (1 - alpha) * normalised BM25, best first.

    Example: weighted_fusion([("a", .9), ("b", .5)], [("b", 12.0), ("c", 3.0)], 0.5)
             -> [("a", 0.5), ("b", 0.5), ("c", 0.0)]   (ties broken by id)
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    d, b = minmax(dense), minmax(keyword)
    scores = {doc: alpha * d.get(doc, 0.0) + (1 - alpha) * b.get(doc, 0.0) for doc in {*d, *b}}
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def load_tuned(path: Path = TUNED_PATH) -> dict[str, Any]:
    """What `eval --split dev --tune` chose: fusion, whether to rerank, the router threshold."""
    return json.loads(path.read_text()) if path.is_file() else {}


def load_fusion(path: Path = TUNED_PATH) -> dict[str, Any]:
    return load_tuned(path).get("fusion") or {"method": "rrf", "weights": [1.0, 1.0]}


@dataclass
class Hit:
    id: str
    score: float

    def to_dict(self, index: Any) -> dict[str, Any]:
        c = index.chunks[self.id]
        return {"id": c.id, "source": c.source, "topic": c.topic, "title": c.title, "score": round(self.score, 6),
                "text": c.text}  # fmt: skip


class Retriever:
    """Every search mode over one CorpusIndex.

    bm25 | dense        one index alone
    rrf                 equal-weight reciprocal rank fusion (the textbook baseline)
    hybrid              the fusion tuned on dev (data/tuned.json)
    rerank              hybrid's top RERANK_DEPTH, reordered by the reranker (rerank.py)
    """

    def __init__(self, index: Any, fusion: dict[str, Any] | None = None, reranker: Any = None):
        self.index, self.fusion = index, fusion or load_fusion()
        self._reranker = reranker
        self.last_timings: dict[str, float] = {}

    @property
    def reranker(self) -> Any:
        if self._reranker is None:
            from stage3_retrieval.rerank import make_reranker

            self._reranker = make_reranker()
        return self._reranker

    def fuse(self, dense: Sequence[tuple[str, float]], keyword: Sequence[tuple[str, float]],
             fusion: dict[str, Any]) -> list[tuple[str, float]]:  # fmt: skip
        if fusion["method"] == "weighted":
            return weighted_fusion(dense, keyword, fusion["alpha"])
        return rrf(
            [[d for d, _ in dense], [d for d, _ in keyword]], fusion.get("weights"), fusion.get("k", 60)
        )

    def search(self, query: str, mode: str = "hybrid", k: int = 10, vector: Any = None,
               source: str | None = None) -> list[Hit]:  # fmt: skip
        """The k best chunks for `query` in `mode`; with `source`, only that source's chunks (the route
        filter: both indexes search within it, so the fused and reranked lists hold nothing else)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        if not query.strip():
            return []
        start = time.perf_counter()
        where = {"source": source} if source else None
        if mode == "bm25":
            results = self.index.bm25.search(query, k, source)
        elif mode == "dense":
            results = self.index.dense.search(query, k, vector, where)
        else:
            dense = self.index.dense.search(query, CANDIDATES, vector, where)
            keyword = self.index.bm25.search(query, CANDIDATES, source)
            fusion = {"method": "rrf", "weights": [1.0, 1.0]} if mode == "rrf" else self.fusion
            results = self.fuse(dense, keyword, fusion)
            if mode == "rerank":
                results = self.rerank(query, [d for d, _ in results[:RERANK_DEPTH]])
        self.last_timings = {"search_s": time.perf_counter() - start}
        return [Hit(d, s) for d, s in results[:k]]

    def rerank(self, query: str, head: Sequence[str]) -> list[tuple[str, float]]:
        texts = [self.index.chunks[d].searchable() for d in head]
        return sorted(zip(head, self.reranker.score(query, texts), strict=True), key=lambda x: -x[1])
