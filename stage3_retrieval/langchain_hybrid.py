"""The hybrid retriever once more, in LangChain: what the framework does for you and what it hides.

hybrid.py builds keyword search, dense search and their fusion by hand. LangChain has each piece:

    BM25Retriever       (langchain_community) rank-bm25 over the documents, as keyword.py is
    Chroma              (langchain_community) the vector store, here over the same MiniLM vectors
                        (the embedding class below reads the same embedding cache), as dense.py is
    EnsembleRetriever   (langchain_classic) weighted reciprocal rank fusion, c = 60, as hybrid.rrf is

Same chunks, same embeddings, same weights as `data/tuned.json`: any difference in the golden-set
figures is the framework's doing, and the bench shows three of them:

  * BM25Retriever's default `preprocess_func` is `str.split`: no lower-casing, punctuation stuck
    to words ("__slots__?" never matches "__slots__"), no stopwords. keyword.py's tokenizer is
    the difference between the "langchain" and "langchain + our tokenizer" rows.
  * The ensemble fuses each retriever's top `k` and then returns *all* of them; hybrid.py fuses
    its CANDIDATES and cuts to k after fusion. Same k here (CANDIDATES), so the lists compare.
  * The ensemble deduplicates by `page_content` unless told an `id_key`: two chunks with the same
    text (the `try` section also appears inside `compound`) collapse into one.

    python -m stage3_retrieval bench     # the "langchain" section of reports/stage3_retrieval.json
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

from stage3_retrieval.hybrid import CANDIDATES, load_fusion


def minilm_embeddings() -> Any:
    """A LangChain `Embeddings` over the bundled MiniLM, through the same embedding cache as the index."""
    from langchain_core.embeddings import Embeddings

    from stage3_retrieval.dense import embed, embed_passages

    class MiniLMEmbeddings(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return embed_passages(texts).tolist()

        def embed_query(self, text: str) -> list[float]:
            return embed([text])[0].tolist()

    return MiniLMEmbeddings()


def build_retrievers(corpus_index: Any, k: int = CANDIDATES,
                     preprocess: Callable[[str], list[str]] | None = None) -> dict[str, Any]:  # fmt: skip
    """{"bm25", "dense", "ensemble"} LangChain retrievers over the index's chunks; `preprocess`
    replaces BM25Retriever's default tokenisation (str.split) when given."""
    from langchain_classic.retrievers import EnsembleRetriever
    from langchain_community.retrievers import BM25Retriever
    from langchain_core.documents import Document

    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # langchain_community's Chroma is deprecated in favour of langchain-chroma
        from langchain_community.vectorstores import Chroma

        chunks = list(corpus_index.chunks.values())
        docs = [Document(page_content=c.searchable(), metadata={"id": c.id, "source": c.source, "topic": c.topic})
                for c in chunks]  # fmt: skip
        bm25 = (BM25Retriever.from_documents(docs, k=k, preprocess_func=preprocess) if preprocess
                else BM25Retriever.from_documents(docs, k=k))  # fmt: skip
        store = Chroma.from_documents(docs, minilm_embeddings(), ids=[c.id for c in chunks],
                                      collection_name="langchain_chunks",
                                      collection_metadata={"hnsw:space": "cosine"})  # fmt: skip
    dense = store.as_retriever(search_kwargs={"k": k})
    fusion = load_fusion()
    weights = fusion.get("weights", [1.0, 1.0]) if fusion.get("method") == "rrf" else [1.0, 1.0]
    ensemble = EnsembleRetriever(retrievers=[dense, bm25], weights=list(weights), c=fusion.get("k", 60))
    return {"bm25": bm25, "dense": dense, "ensemble": ensemble, "store": store}


def ranked_topics(retriever: Any, question: str, k: int = 10) -> list[tuple[str, str]]:
    """(source, topic) of the retriever's first k documents for `question`, best first."""
    return [(d.metadata["source"], d.metadata["topic"]) for d in retriever.invoke(question)[:k]]


def evaluate_langchain(corpus_index: Any, rows: Sequence[dict[str, Any]],
                       on_row: Callable[[], None] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """hit@k / MRR@10 / nDCG@10 and latency of LangChain's BM25, dense and ensemble, with its default BM25
    tokenisation and with keyword.py's, on `rows`: the bench's "langchain" section."""
    import statistics
    import time

    from stage3_retrieval.evaluate import average, judge_ranking, percentile, relevant_of
    from stage3_retrieval.keyword import tokenize

    results = []
    for label, preprocess in (("langchain", None), ("langchain + our tokenizer", tokenize)):
        retrievers = build_retrievers(corpus_index, preprocess=preprocess)
        names = ("bm25", "dense", "ensemble") if preprocess is None else ("bm25", "ensemble")
        for name in names:
            per_question, latencies = [], []
            for row in rows:
                start = time.perf_counter()
                ranked = ranked_topics(retrievers[name], row["question"])
                latencies.append(1000 * (time.perf_counter() - start))
                per_question.append(judge_ranking(ranked, relevant_of(row)))
                if on_row:
                    on_row()
            results.append({"mode": f"{label}: {name}", "n": len(rows), **average(per_question),
                            "p50_ms": statistics.median(latencies), "p95_ms": percentile(latencies, 95)})  # fmt: skip
        retrievers["store"].delete_collection()
    return results
