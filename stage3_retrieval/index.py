"""The on-disk index: chunks, their embeddings in Chroma, and a manifest, built atomically.

    <artifacts>/stage3/index/
        manifest.json     version, chunker, embedding model, counts, build time and its parts
        chunks.jsonl      every chunk with its metadata (BM25 is rebuilt from it in well under a second)
        chroma/           the Chroma PersistentClient directory (vectors + HNSW)
        communities.json  GraphRAG's community summaries (communities.py), for global search

One index per chunker: `index/` holds the structured chunks (the default), `index-fixed/` the
fixed windows, so the two can be compared side by side (`--chunker fixed` on any command).

A build writes to a temporary directory and renames it into place only when complete, so a crash
or Ctrl-C mid-build leaves the previous index intact, never half of one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import BadInput, WorkFailed
from shared.models import DEFAULT_EMBEDDING_MODEL
from stage3_retrieval.dense import DenseIndex, EmbeddingCache, release_clients
from stage3_retrieval.ingest import SOURCES, Chunk, chunk_documents, load_documents
from stage3_retrieval.keyword import BM25Index

INDEX_VERSION = 2
INDEX_HINT = "run `python -m stage3_retrieval index` first"


def default_index_dir(chunker: str = "structured") -> Path:
    return paths.artifacts_dir() / "stage3" / ("index" if chunker == "structured" else f"index-{chunker}")


@dataclass
class CorpusIndex:
    path: Path
    manifest: dict[str, Any]
    chunks: dict[str, Chunk]
    bm25: BM25Index
    dense: DenseIndex
    communities: list[dict[str, Any]]  # GraphRAG community summaries, largest first

    @classmethod
    def load(cls, path: Path | None = None) -> CorpusIndex:
        path = Path(path or default_index_dir())
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise BadInput(f"no index at {path}; {INDEX_HINT}")
        damaged = (f"the index at {path} is damaged ({{}}); rebuild it with "
                   "`python -m stage3_retrieval index --rebuild`")  # fmt: skip
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as e:
            raise WorkFailed(damaged.format(f"{type(e).__name__}: {e}")) from None
        if not isinstance(manifest, dict) or manifest.get("version") != INDEX_VERSION:
            raise BadInput(f"the index at {path} is from another version; rebuild it with "
                           "`python -m stage3_retrieval index --rebuild`")  # fmt: skip
        try:
            rows = [json.loads(line) for line in (path / "chunks.jsonl").read_text().splitlines() if line]
            chunks = {r["id"]: Chunk(**r) for r in rows}
            dense = DenseIndex(path / "chroma")
            count = dense.count()
            communities = json.loads((path / "communities.json").read_text())
        except Exception as e:  # any damage: unreadable JSON, missing files, a broken Chroma store
            raise WorkFailed(damaged.format(f"{type(e).__name__}: {e}")) from None
        if count != len(chunks):
            raise WorkFailed(damaged.format(f"Chroma holds {count} vectors for {len(chunks)} chunks"))
        return cls(path, manifest, chunks, BM25Index(list(chunks.values())), dense, communities)


def build_index(
    path: Path | None = None,
    sources: Iterable[str] = SOURCES,
    chunker: str = "structured",
    on_chunks: Callable[[int], None] | None = None,
    on_embedded: Callable[[int], None] | None = None,
    cache: EmbeddingCache | None | bool = True,
) -> CorpusIndex:
    """Load, chunk, embed and store every source; replace the index at `path` only on success.

    `cache`: True uses the shared embedding cache, False embeds everything afresh (what the bench
    times), or pass an EmbeddingCache. The manifest records how long each part took."""
    from stage3_retrieval.communities import build_communities

    path = Path(path or default_index_dir(chunker))
    cache = EmbeddingCache() if cache is True else (cache or None)
    start = time.perf_counter()
    sources = list(sources)
    chunks = chunk_documents(load_documents(sources), chunker)
    if not chunks:
        raise WorkFailed("no chunks to index: every document was empty")
    if on_chunks:
        on_chunks(len(chunks))
    seconds = {"load_and_chunk": time.perf_counter() - start}
    counts = {s: sum(c.source == s for c in chunks) for s in sources}
    with paths.atomic_directory(path) as tmp:
        (tmp / "chunks.jsonl").write_text(
            "".join(json.dumps(c.to_dict(), ensure_ascii=False) + "\n" for c in chunks)
        )
        mark = time.perf_counter()
        DenseIndex(tmp / "chroma", create=True).add(chunks, on_embedded, cache)
        seconds["embed_and_store"] = time.perf_counter() - mark
        mark = time.perf_counter()
        communities = build_communities(chunks)
        (tmp / "communities.json").write_text(json.dumps(communities, indent=1, ensure_ascii=False) + "\n")
        seconds["graph_and_communities"] = time.perf_counter() - mark
        manifest = {"version": INDEX_VERSION, "chunker": chunker, "embedding_model": DEFAULT_EMBEDDING_MODEL,
                    "sources": counts, "chunks": len(chunks), "communities": len(communities),
                    "build_seconds": time.perf_counter() - start,
                    "seconds": {k: round(v, 2) for k, v in seconds.items()},
                    "embedding_cache": None if cache is None else {"hits": cache.hits, "misses": cache.misses}}  # fmt: skip
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        release_clients()
    release_clients()
    return CorpusIndex.load(path)


def open_index(
    path: Path | None = None, build_if_missing: bool = False, chunker: str = "structured"
) -> CorpusIndex:
    path = Path(path or default_index_dir(chunker))
    if build_if_missing and not (path / "manifest.json").is_file():
        return build_index(path, chunker=chunker)
    return CorpusIndex.load(path)
