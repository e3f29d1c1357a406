"""The hand-off to stage 5: the RAG's real answers as JSONL records that Ragas can score.

    python -m stage3_retrieval export-eval reports/stage3_records.jsonl --split test --limit 20
    python -m stage3_retrieval export-eval FILE --base-url http://127.0.0.1:8000/v1 --api-key K --model NAME
    python -m stage3_retrieval export-eval FILE --mode bm25        # a regression, made by a flag
    python -m stage3_retrieval export-eval FILE --chunker fixed    # another one

One record a line, exactly these fields (the contract stage 5's gate reads):

    id                  the golden question's id ("g002")
    question            the question as asked
    contexts            list[str]: the exact passages the model was shown (context.py), in order;
                        [] when the question was refused before any retrieval
    answer              what the pipeline answered (a refusal or "I don't know" included)
    reference           the golden reference answer
    reference_contexts  list[str]: for each golden `relevant` topic, in order, the passage of that
                        topic nearest the reference answer (MiniLM), formatted exactly as `contexts`
                        are, so the same chunk retrieved matches character for character;
                        duplicates dropped, at most MAX_REFERENCE_CONTEXTS
    meta                dict: route, citations, rounds (strategy, p_yes, similarity, chunk ids),
                        pipeline settings (mode, route_filter, reflect, max_rounds, chunker,
                        model), source, relevant topics, seconds

The reference contexts come from the index being evaluated (same chunker), so context recall asks
"did retrieval find the passages that hold the answer, as this index cuts them".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shared import paths
from stage3_retrieval.context import passage

MAX_REFERENCE_CONTEXTS = 3
FIELDS = ("id", "question", "contexts", "answer", "reference", "reference_contexts", "meta")


def reference_contexts(index: Any, row: dict[str, Any], limit: int = MAX_REFERENCE_CONTEXTS) -> list[str]:
    """Per relevant topic (in the golden order), the passage nearest the reference answer."""
    from stage3_retrieval.dense import embed, embed_passages

    target = embed([f"{row['question']} {row.get('answer', '')}"])[0]
    out: list[str] = []
    for topic in row["relevant"]:
        candidates = [c for c in index.chunks.values() if c.source == row["source"] and c.topic == topic]
        if not candidates:
            continue
        texts = [passage(c) for c in candidates]
        scores = embed_passages(texts) @ target
        best = texts[int(scores.argmax())]
        if best not in out:
            out.append(best)
        if len(out) == limit:
            break
    return out


def record(row: dict[str, Any], result: Any, index: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """One exported record for a golden row and the pipeline's RAGResult."""
    return {"id": row["id"], "question": row["question"], "contexts": result.contexts, "answer": result.answer,
            "reference": row.get("answer", ""), "reference_contexts": reference_contexts(index, row),
            "meta": {"route": result.route, "citations": result.citations,
                     "rounds": [r.to_dict() for r in result.rounds], **settings, "source": row["source"],
                     "relevant": row["relevant"], "refused": result.refused,
                     "seconds": round(result.seconds, 3)}}  # fmt: skip


def export_records(rag: Any, rows: Sequence[dict[str, Any]], out: Path, settings: dict[str, Any] | None = None,
                   on_row: Callable[[], None] | None = None) -> int:  # fmt: skip
    """Answer every row with `rag` and write the records to `out` atomically; the count written."""
    settings = {**rag.describe(), **(settings or {})}
    lines = []
    for row in rows:
        lines.append(json.dumps(record(row, rag.ask(row["question"]), rag.retriever.index, settings),
                                ensure_ascii=False))  # fmt: skip
        if on_row:
            on_row()
    paths.atomic_write_text(out, "\n".join(lines) + "\n")
    return len(lines)
