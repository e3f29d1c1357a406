"""Dense search: chunks and queries as vectors, nearest neighbours by cosine similarity.

all-MiniLM-L6-v2 (the bundled embedding model) maps a text to 384 numbers such that texts with
similar meaning land close together: "How can an inner function rebind an outer variable?" lands
near the `nonlocal` section though they share almost no words. Chroma stores the vectors on disk
(`PersistentClient`) with an HNSW index for fast approximate nearest-neighbour search.

We embed ourselves and hand Chroma the vectors (`embedding_function=None`): the same model embeds
chunks and queries, nothing is downloaded behind our back, and the choice is visible. Vectors are
normalised, the collection's space is cosine, and a score is `1 - distance`, the cosine similarity.

Embedding is most of an index build (the bench reports the split). The same text through the same model always gives the same vector, so vectors
are kept in a content-addressed cache (`$LLM_ROADMAP_HOME/embeddings/`, keyed by a hash of the
model name and the text): rebuilding an index whose chunks did not change, or building the
fixed-window index after the structured one, embeds only the chunks that are new.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared import paths
from shared.models import DEFAULT_EMBEDDING_MODEL
from stage3_retrieval.ingest import Chunk

COLLECTION = "chunks"
BATCH = 32  # texts per forward pass
GROUP = 512  # texts per encode call: sentence-transformers sorts a call's texts by length, so less padding
DIM = 384


def chroma_client(path: Path) -> Any:
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))


def release_clients() -> None:
    """Chroma keeps one system per path per process; drop them before a directory is renamed."""
    from chromadb.api.shared_system_client import SharedSystemClient

    SharedSystemClient.clear_system_cache()


def encode(texts: Sequence[str], batch_size: int = BATCH) -> np.ndarray:
    """(len(texts), 384) unit vectors, straight from the model."""
    from shared.models import load_embedder

    return load_embedder().encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False)  # fmt: skip


def embed(texts: Sequence[str], batch_size: int = BATCH) -> np.ndarray:
    """(len(texts), 384) unit vectors. Queries are embedded fresh: caching them would only fill the disk."""
    return encode(texts, batch_size)


def embed_passages(texts: Sequence[str]) -> np.ndarray:
    """Like `embed`, through the process's embedding cache: for corpus text that is embedded again and again
    (passages, community summaries), never for one-off queries or answers."""
    global _CACHE
    if _CACHE is None or _CACHE.root != cache_root():  # LLM_ROADMAP_HOME may have moved (tests)
        _CACHE = EmbeddingCache()
    return _CACHE.embed(texts)


# ---------------------------------------------------------------------------------------------
# The embedding cache


def cache_root(model: str = DEFAULT_EMBEDDING_MODEL) -> Path:
    return paths.cache_dir() / "embeddings" / model


class EmbeddingCache:
    """text -> vector for one model, in one .npy of vectors plus a JSON list of their keys.

    Example: cache.embed(["a", "b"]) embeds both; a second cache.embed(["b", "c"]) embeds only "c".
    """

    def __init__(self, root: Path | None = None, model: str = DEFAULT_EMBEDDING_MODEL):
        self.root = Path(root) / model if root else cache_root(model)
        self.model = model
        self.keys: list[str] = []
        self.vectors = np.zeros((0, DIM), dtype=np.float32)
        keys_path, vectors_path = self.root / "keys.json", self.root / "vectors.npy"
        if keys_path.is_file() and vectors_path.is_file():
            try:
                keys, vectors = json.loads(keys_path.read_text()), np.load(vectors_path)
                if len(keys) == len(vectors):
                    self.keys, self.vectors = keys, vectors
            except (OSError, ValueError):
                pass  # a damaged cache is an empty one: it only costs time
        self.position = {k: i for i, k in enumerate(self.keys)}
        self.hits = self.misses = 0

    def key(self, text: str) -> str:
        return hashlib.sha256(f"{self.model}\x00{text}".encode()).hexdigest()[:24]

    def embed(self, texts: Sequence[str], batch_size: int = BATCH) -> np.ndarray:
        keys = [self.key(t) for t in texts]
        missing = list(dict.fromkeys(t for t, k in zip(texts, keys, strict=True) if k not in self.position))
        self.hits += len(texts) - len(missing)  # counted over the cache's life: a whole build's worth
        self.misses += len(missing)
        if missing:
            fresh = encode(missing, batch_size).astype(np.float32)
            for text in missing:
                self.position[self.key(text)] = len(self.keys)
                self.keys.append(self.key(text))
            self.vectors = np.concatenate([self.vectors, fresh])
            self.save()
        return self.vectors[[self.position[k] for k in keys]]

    def save(self) -> None:
        paths.ensure(self.root)
        tmp = self.root / ".vectors.tmp.npy"
        np.save(tmp, self.vectors)
        tmp.replace(self.root / "vectors.npy")
        paths.atomic_write_text(self.root / "keys.json", json.dumps(self.keys))


_CACHE: EmbeddingCache | None = None


# ---------------------------------------------------------------------------------------------
# The Chroma collection


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

    def add(self, chunks: Sequence[Chunk], on_batch: Callable[[int], None] | None = None,
            cache: EmbeddingCache | None = None) -> None:  # fmt: skip
        """Embed and upsert: the same chunk (same id) indexed twice is stored once."""
        for start in range(0, len(chunks), GROUP):
            batch = chunks[start : start + GROUP]
            texts = [c.searchable() for c in batch]
            vectors = cache.embed(texts) if cache is not None else encode(texts)
            self.collection.upsert(ids=[c.id for c in batch], embeddings=vectors.tolist(),
                                   documents=[c.text for c in batch],
                                   metadatas=[c.metadata() for c in batch])  # fmt: skip
            if on_batch:
                on_batch(len(batch))

    def count(self) -> int:
        return self.collection.count()

    def vectors(self) -> tuple[list[str], np.ndarray]:
        """Every (id, vector) stored: what FAISS (vectors.py) indexes beside Chroma. Shape (n, 384)."""
        stored = self.collection.get(include=["embeddings"])
        return list(stored["ids"]), np.asarray(stored["embeddings"], dtype=np.float32)

    def search(self, query: str, k: int = 10, vector: Any = None,
               where: dict[str, Any] | None = None) -> list[tuple[str, float]]:  # fmt: skip
        """The k nearest chunks as (id, cosine similarity), best first. `vector` skips embedding the query;
        `where` filters on metadata, e.g. {"source": "stdlib-docs"} (the route filter)."""
        if vector is None:
            vector = embed([query])[0]
        result = self.collection.query(query_embeddings=[list(map(float, vector))], n_results=k, where=where,
                                       include=["distances"])  # fmt: skip
        return [(i, 1.0 - d) for i, d in zip(result["ids"][0], result["distances"][0], strict=True)]
