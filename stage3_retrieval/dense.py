"""Dense search: chunks and queries as vectors, nearest neighbours by cosine similarity.

all-MiniLM-L6-v2 (the bundled embedding model) maps a text to 384 numbers such that texts with
similar meaning land close together: "How can an inner function rebind an outer variable?" lands
near the `nonlocal` section though they share almost no words. Chroma stores the vectors on disk
(`PersistentClient`) with an HNSW index for fast approximate nearest-neighbour search.

We embed ourselves and hand Chroma the vectors (`embedding_function=None`): the same model embeds
chunks and queries, nothing is downloaded behind our back, and the choice is visible. Vectors are
normalised, the collection's space is cosine, and a score is `1 - distance`, the cosine similarity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stage3_retrieval.ingest import Chunk

COLLECTION = "chunks"
BATCH = 32  # texts per forward pass
GROUP = 512  # texts per encode call: sentence-transformers sorts a call's texts by length, so less padding


def chroma_client(path: Path) -> Any:
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))


def release_clients() -> None:
    """Chroma keeps one system per path per process; drop them before a directory is renamed."""
    from chromadb.api.shared_system_client import SharedSystemClient

    SharedSystemClient.clear_system_cache()


def embed(texts: Sequence[str], batch_size: int = BATCH) -> Any:
    from shared.models import load_embedder

    return load_embedder().encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False)  # fmt: skip


class DenseIndex:
    """A Chroma collection of chunk embeddings under `path`."""

    def __init__(self, path: Path, create: bool = False):
        self.path = Path(path)
        client = chroma_client(self.path)
        if create:
            self.collection = client.get_or_create_collection(
                COLLECTION, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
            )
        else:
            self.collection = client.get_collection(COLLECTION, embedding_function=None)

    def add(self, chunks: Sequence[Chunk], on_batch: Callable[[int], None] | None = None) -> None:
        """Embed and upsert: the same chunk (same id) indexed twice is stored once."""
        for start in range(0, len(chunks), GROUP):
            batch = chunks[start : start + GROUP]
            vectors = embed([c.searchable() for c in batch])
            self.collection.upsert(ids=[c.id for c in batch], embeddings=vectors.tolist(),
                                   documents=[c.text for c in batch],
                                   metadatas=[c.metadata() for c in batch])  # fmt: skip
            if on_batch:
                on_batch(len(batch))

    def count(self) -> int:
        return self.collection.count()

    def search(self, query: str, k: int = 10, vector: Any = None,
               where: dict[str, Any] | None = None) -> list[tuple[str, float]]:  # fmt: skip
        """The k nearest chunks as (id, cosine similarity), best first. `vector` skips embedding the query;
        `where` filters on metadata, e.g. {"source": "stdlib-docs"}."""
        if vector is None:
            vector = embed([query])[0]
        result = self.collection.query(query_embeddings=[list(map(float, vector))], n_results=k, where=where,
                                       include=["distances"])  # fmt: skip
        return [(i, 1.0 - d) for i, d in zip(result["ids"][0], result["distances"][0], strict=True)]
