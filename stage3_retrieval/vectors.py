"""FAISS beside Chroma: exact against approximate nearest-neighbour search, over the same vectors.

Chroma (dense.py) is a database: it stores documents, metadata and vectors on disk and searches
with an HNSW graph it builds for you. FAISS is a library of vector indexes you choose and hold in
memory yourself. Three of them over the chunks' MiniLM vectors, all with inner product, which
for unit vectors is cosine similarity:

    flat    IndexFlatIP: compares the query with every vector. Exact, O(n) per query; the
            reference the others are measured against (its own recall is 1 by construction)
    hnsw    IndexHNSWFlat (M=32 links per node, efSearch=64): a navigable small-world graph, the
            structure Chroma also uses. Approximate; about log(n) hops per query
    ivf     IndexIVFFlat: k-means splits the vectors into `nlist` cells; a query scans only the
            `nprobe` nearest cells. Approximate; needs training; recall grows with nprobe

For each, on the golden questions: recall@10 against flat (the share of the exact top 10 it also
returns), p50/p95 query latency, build time and the bytes the index holds (FAISS's own
serialisation). Chroma is measured the same way, its size being its directory on disk. At ~1,800
vectors exact search is already well under a millisecond: approximate indexes earn their place at
millions, and the numbers here show their cost in recall before they show any gain in speed.

    python -m stage3_retrieval bench     # the "vectors" section of reports/stage3_retrieval.json
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stage3_retrieval.evaluate import percentile

K = 10


def build_faiss(kind: str, vectors: np.ndarray, nlist: int = 32, nprobe: int = 4) -> Any:
    """A FAISS index of `kind` ("flat" | "hnsw" | "ivf") over (n, d) unit vectors, inner product."""
    import faiss

    d = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction, index.hnsw.efSearch = 80, 64
    elif kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = nprobe
    else:
        raise ValueError(f"unknown FAISS index {kind!r}; choose flat, hnsw or ivf")
    index.add(vectors)
    return index


def faiss_bytes(index: Any) -> int:
    import faiss

    return int(faiss.serialize_index(index).nbytes)


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def recall_at_k(found: Sequence[Sequence[int]], exact: Sequence[Sequence[int]], k: int = K) -> float:
    """Mean share of each exact top-k that the approximate top-k also holds.

    Example: recall_at_k([[1, 2, 9]], [[1, 2, 3]], k=3) -> 0.666...
    """
    return float(np.mean([len(set(f[:k]) & set(e[:k])) / k for f, e in zip(found, exact, strict=True)]))


def timed_search(search: Any, queries: np.ndarray) -> tuple[list[list[int]], list[float]]:
    """Run `search(q) -> positions` for each query one at a time (as a server would); results and ms each."""
    results, latencies = [], []
    for q in queries:
        start = time.perf_counter()
        results.append(list(search(q)))
        latencies.append(1000 * (time.perf_counter() - start))
    return results, latencies


def compare_indexes(corpus_index: Any, questions: Sequence[str]) -> dict[str, Any]:
    """FAISS flat / HNSW / IVF and Chroma on the same vectors and queries: the bench's "vectors" section."""
    import faiss

    from stage3_retrieval.dense import embed

    faiss.omp_set_num_threads(1)  # one query at a time, one thread: latency as a single request sees it
    ids, vectors = corpus_index.dense.vectors()  # (n, 384)
    position = {chunk_id: i for i, chunk_id in enumerate(ids)}
    queries = embed(list(questions)).astype(np.float32)  # (n_queries, 384)
    rows, exact = [], None
    for kind in ("flat", "hnsw", "ivf"):
        start = time.perf_counter()
        index = build_faiss(kind, vectors)
        build_s = time.perf_counter() - start
        found, latencies = timed_search(lambda q, index=index: index.search(q[None, :], K)[1][0], queries)
        exact = exact or found
        rows.append({"index": f"faiss-{kind}", "recall@10": recall_at_k(found, exact), "build_s": build_s,
                     "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
                     "bytes": faiss_bytes(index)})  # fmt: skip
    collection = corpus_index.dense.collection

    def chroma_search(q: np.ndarray) -> list[int]:
        result = collection.query(query_embeddings=[q.tolist()], n_results=K, include=[])
        return [position[i] for i in result["ids"][0]]

    found, latencies = timed_search(chroma_search, queries)
    rows.append({"index": "chroma-hnsw", "recall@10": recall_at_k(found, exact), "build_s": None,
                 "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
                 "bytes": directory_bytes(corpus_index.dense.path)})  # fmt: skip
    return {"vectors": len(ids), "dim": int(vectors.shape[1]), "queries": len(questions), "k": K,
            "note": "faiss-flat is exact: its recall is 1 by construction (a diagnostic); chroma's bytes are its "
                    "directory on disk (vectors, HNSW graph, documents, metadata), FAISS's its serialised index",
            "rows": rows}  # fmt: skip
