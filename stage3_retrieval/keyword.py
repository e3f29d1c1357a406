"""Keyword search with BM25: exact words, weighted by how rare they are.

BM25 scores a chunk for a query by summing, over the query's terms, the term's rarity across the
corpus (IDF) times a saturating function of how often it occurs in the chunk, normalised by the
chunk's length. It knows nothing of meaning ("rebind an outer variable" does not find `nonlocal`),
but it is unbeatable at exact identifiers, which embeddings blur: `__slots__`, `ZeroDivisionError`,
`heapq.nsmallest`.

That makes the tokenizer the important part. A generic one splits `__slots__` into "slots" or drops
it; this one keeps each identifier whole *and* adds its parts, so "__slots__" matches "__slots__"
exactly (a rare, high-IDF term) and "slots" loosely. `heapq.nsmallest` gives "heapq.nsmallest",
"heapq" and "nsmallest".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from rank_bm25 import BM25Okapi

from stage3_retrieval.ingest import Chunk

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*|\d+(?:\.\d+)?")
_STOPWORDS_TEXT = """a an and are as at be but by can do does for from has have how i if in into is it its my of
on or so than that the their then there these this to was what when where which while who why will with you your"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())


def tokenize(text: str) -> list[str]:
    """Lower-cased words; identifiers kept whole and also split into their parts.

    Example: tokenize("What does __slots__ do?") -> ["__slots__", "slots"]   ("what", "does", "do": stopwords)
    """
    tokens = []
    for match in IDENTIFIER.finditer(text):
        word = match.group().lower()
        parts = [p for p in re.split(r"[._]+", word) if p]
        if word not in STOPWORDS:
            tokens.append(word)
        if len(parts) > 1 or (parts and parts[0] != word):
            tokens += [p for p in parts if p not in STOPWORDS and p != word]
    return tokens


class BM25Index:
    """BM25 over chunks. Built in memory from the chunk list (well under a second for ~2,000 chunks)."""

    def __init__(self, chunks: Sequence[Chunk], k1: float = 1.5, b: float = 0.75):
        if not chunks:
            raise ValueError("no chunks to index")
        self.ids = [c.id for c in chunks]
        self.sources = np.array([c.source for c in chunks])  # (n_chunks,) for the route filter
        self.bm25 = BM25Okapi([tokenize(c.searchable()) for c in chunks], k1=k1, b=b)

    def search(self, query: str, k: int = 10, source: str | None = None) -> list[tuple[str, float]]:
        """The k best (chunk id, score), best first; only chunks sharing at least one term, and only
        chunks of `source` when one is given (IDF stays the whole corpus's: the filter narrows the
        candidates, it does not change what a word is worth)."""
        terms = tokenize(query)
        if not terms:
            return []
        scores = self.bm25.get_scores(terms)  # (n_chunks,)
        if source is not None:
            scores = np.where(self.sources == source, scores, 0.0)
        best = scores.argsort()[::-1][:k]
        return [(self.ids[i], float(scores[i])) for i in best if scores[i] > 0]
