"""Semantic routing: send a query to the source that can answer it, or to none.

Each route (source) is defined by a handful of example queries (data/route_examples.json). A query
is embedded and compared with every example; a route's score is its best similarity. Ten examples
cannot cover a whole manual, though: "How do I turn a list into a heap?" resembles none of them
(0.17) while "What is the capital of Australia?" resembles one at 0.28. So when the index is at
hand, a route's score is also backed by its own content: the similarity of the query to the
source's nearest chunk, whichever is higher. The best route wins if its score clears a threshold;
below it the query is *out of scope*: no retrieval, a polite refusal, instead of confidently
answering a cooking question from the Python docs.

The threshold trades wrong refusals against wrong answers. It is tuned on the dev split of the
routing set (data/routes.jsonl) and kept in data/tuned.json; the test split only measures.
Tie rules, stated because they decide borderline queries: a score exactly at the threshold is in
scope (>=); two routes with the same best score go to the one listed first in
data/route_examples.json; and tuning picks, among thresholds with equal dev accuracy, the median
(tune.py).

In scope, the route also *filters*: the pipeline searches only the routed source's chunks in both
indexes (hybrid.Retriever.search(source=...)), so a stdlib question cannot be answered from a
course README that happens to share its words. Whether that helps is measured on dev (tune.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stage3_retrieval.hybrid import load_tuned

EXAMPLES_PATH = Path(__file__).parent / "data" / "route_examples.json"
ROUTES_PATH = Path(__file__).parent / "data" / "routes.jsonl"
OUT_OF_SCOPE = "out_of_scope"
DEFAULT_THRESHOLD = 0.35


def load_routes(split: str | None = None, path: Path = ROUTES_PATH) -> list[dict[str, str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if split is None or r["split"] == split]


@dataclass
class Route:
    name: str
    score: float
    scores: dict[str, float]

    @property
    def in_scope(self) -> bool:
        return self.name != OUT_OF_SCOPE

    def to_dict(self) -> dict[str, Any]:
        return {"route": self.name, "score": round(self.score, 4),
                "scores": {k: round(v, 4) for k, v in self.scores.items()}}  # fmt: skip


class SemanticRouter:
    def __init__(self, examples: dict[str, list[str]] | None = None, threshold: float | None = None,
                 index: Any = None):  # fmt: skip
        from stage3_retrieval.dense import embed

        self.examples = examples or json.loads(EXAMPLES_PATH.read_text())
        tuned = load_tuned().get("router" if index is not None else "router_examples_only", {})
        self.threshold = threshold if threshold is not None else tuned.get("threshold", DEFAULT_THRESHOLD)
        self.names = list(self.examples)
        self.labels = [name for name in self.names for _ in self.examples[name]]
        self.vectors = embed([q for name in self.names for q in self.examples[name]])
        self.index = index

    def scores(self, query: str, vector: Any = None) -> dict[str, float]:
        from stage3_retrieval.dense import embed

        vector = embed([query])[0] if vector is None else vector
        similarity = self.vectors @ vector
        scores = {name: float(max(s for s, label in zip(similarity, self.labels, strict=True) if label == name))
                  for name in self.names}  # fmt: skip
        if self.index is not None:
            for name in self.names:
                nearest = self.index.dense.search(query, 1, vector, where={"source": name})
                if nearest:
                    scores[name] = max(scores[name], nearest[0][1])
        return scores

    def route(self, query: str, vector: Any = None) -> Route:
        scores = self.scores(query, vector)
        return Route(choose_route(scores, self.threshold), max(scores.values()), scores)


def choose_route(scores: dict[str, float], threshold: float) -> str:
    """The best-scoring route if its score clears the threshold, else OUT_OF_SCOPE.

    Example: choose_route({"python-reference": 0.62, "stdlib-docs": 0.41}, 0.4) -> "python-reference"
    """
    # EXERCISE stage3.route_threshold: take the route with the highest score (the first listed on a tie); return its name if that score >= threshold, else OUT_OF_SCOPE
    best = max(scores, key=scores.get)  # max keeps the first of equal scores
    return best if scores[best] >= threshold else OUT_OF_SCOPE
    # END EXERCISE


def routing_accuracy(router: SemanticRouter, rows: list[dict[str, str]], threshold: float | None = None,
                     score_cache: dict[str, dict[str, float]] | None = None) -> float:  # fmt: skip
    """Share of queries sent where their label says (out_of_scope included)."""
    threshold = router.threshold if threshold is None else threshold
    correct = 0
    for row in rows:
        scores = score_cache[row["query"]] if score_cache else router.scores(row["query"])
        correct += choose_route(scores, threshold) == row["route"]
    return correct / len(rows)
