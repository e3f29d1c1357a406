"""GraphRAG's global search: summaries of the graph's communities, searched by map and reduce.

Local search (graph.py) starts from the entities a question names and gathers the chunks around
them. Some questions name nothing in particular: "what kinds of statements can change the flow of
control?" asks about the corpus as a whole, and no single chunk, however well ranked, holds that
answer. GraphRAG (Edge et al., 2024) answers those from *community summaries*:

    communities   Louvain clusters of the entity graph (graph.py): break, continue, return, for,
                  while end up together because the same sections mention them together
    summary       one text per community, written at index time and stored with the index
                  (communities.json): its central entities, the topics they live in, and for
                  each central entity the opening sentence of the chunk most about it. Extractive:
                  the 135M model would take minutes per summary and would invent; a sentence
                  copied from the docs cannot be wrong about the docs
    global search map:    the summaries nearest the question (MiniLM); the model reads each one and
                          writes the point it makes about the question (one call per community)
                  reduce: the model answers from those points, numbered like passages

The points the reduce step reads are the context of a global answer, as the passages are of a
local one; `eval --answers` scores local, global and both together on data/global_questions.jsonl.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from stage3_retrieval.context import Context
from stage3_retrieval.ingest import Chunk

SUMMARY_CHUNKS = 5  # sentences (one per central entity) quoted per summary
SENTENCE_CHARS = 220
MAP_COMMUNITIES = 3  # summaries read per global question
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def first_sentence(text: str, max_chars: int = SENTENCE_CHARS) -> str:
    """The first sentence of the chunk's prose (grammar lines and headings skipped), cut to max_chars.

    Example: first_sentence("if_stmt ::= ...\\n\\nThe if statement is used for conditional execution.")
             -> "The if statement is used for conditional execution."
    """
    for paragraph in text.split("\n\n"):
        flat = " ".join(paragraph.split())
        if len(flat) < 40 or "::=" in flat or flat.startswith((">>>", "*", "#", "|", "-")):
            continue
        sentence = SENTENCE.split(flat, maxsplit=1)[0]
        return sentence if len(sentence) <= max_chars else sentence[:max_chars].rsplit(" ", 1)[0] + " ..."
    return ""


def summarise(
    community: dict[str, Any], postings: dict[str, list[str]], chunks: dict[str, Chunk]
) -> dict[str, Any]:
    """A community as text: its central entities, their topics, and one sentence per central entity,
    taken from the chunk that is most about it (its own topic's first chunk: `break` for break,
    `heapq` for heapq; else the chunk that mentions it first among those mentioning most members)."""
    members = set(community["members"])
    density: Counter = Counter()
    for entity in members:
        density.update(postings.get(entity, []))
    quoted: list[str] = []
    seen_text: set[str] = set()
    for entity in community["central"]:
        own = sorted((c for c in postings.get(entity, []) if chunks[c].topic == entity),
                     key=lambda c: chunks[c].position)  # fmt: skip
        ranked = own or sorted(postings.get(entity, []), key=lambda c: (-density[c], c))
        for chunk_id in ranked[:3]:
            sentence = first_sentence(chunks[chunk_id].text)
            if sentence and sentence not in seen_text:
                quoted.append(chunk_id)
                seen_text.add(sentence)
                break
        if len(quoted) == SUMMARY_CHUNKS:
            break
    sentences = [first_sentence(chunks[c].text) for c in quoted]
    text = (f"About {', '.join(community['central'][:8])} (in: {', '.join(community['topics'][:5])}). "
            + " ".join(sentences))  # fmt: skip
    sources = Counter(chunks[c].source for c in quoted)
    return {"id": community["id"], "size": community["size"], "central": community["central"],
            "topics": community["topics"], "source": sources.most_common(1)[0][0] if sources else None,
            "chunk_ids": quoted, "summary": text}  # fmt: skip


def build_communities(chunks: Sequence[Chunk]) -> list[dict[str, Any]]:
    """Every community of the entity graph with its extractive summary: what communities.json holds."""
    from stage3_retrieval.graph import build_graph

    graph = build_graph(chunks)
    by_id = {c.id: c for c in chunks}
    return [summarise(c, graph.postings, by_id) for c in graph.communities]


# ---------------------------------------------------------------------------------------------
# Global search: map over the nearest summaries, reduce to one answer


@dataclass
class GlobalAnswer:
    question: str
    answer: str
    points: list[str]  # what the reduce step read: one point per community
    communities: list[int]
    topics: list[str]  # the topics behind those communities (for topic recall)
    seconds: float = 0.0
    trace: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "points": self.points, "communities": self.communities,
                "topics": self.topics, "seconds": round(self.seconds, 3), "trace": self.trace}  # fmt: skip


class GlobalSearch:
    def __init__(self, communities: list[dict[str, Any]], chat_model: Any, top: int = MAP_COMMUNITIES):
        if not communities:
            raise ValueError(
                "no community summaries: rebuild the index (python -m stage3_retrieval index --rebuild)"
            )
        self.communities, self.chat_model, self.top = communities, chat_model, top
        self._vectors: Any = None

    def select(self, question: str) -> list[dict[str, Any]]:
        """The `top` summaries nearest the question, nearest first."""
        from stage3_retrieval.dense import embed, embed_passages

        if self._vectors is None:  # (n_communities, 384)
            self._vectors = embed_passages([c["summary"] for c in self.communities])
        scores = self._vectors @ embed([question])[0]
        best = sorted(range(len(scores)), key=lambda i: -scores[i])[: self.top]
        return [self.communities[i] for i in best]

    def map(self, question: str, community: dict[str, Any]) -> str:
        reply = self.chat_model.chat(
            [{"role": "system", "content": "You read a summary of Python documentation and note what it says "
                                           "about a question. Reply with one sentence."},
             {"role": "user", "content": f"Summary: {community['summary']}\n\nQuestion: {question}\n"
                                         "What does the summary say that helps answer the question?"}],
            max_tokens=48, stop=["\n\n"],
        )  # fmt: skip
        return reply.text.strip()

    def reduce(self, question: str, points: Sequence[str], local: Context | None = None) -> str:
        notes = "\n".join(f"[{i + 1}] {p}" for i, p in enumerate(points))
        if local:
            notes += "\n\n" + "\n\n".join(
                f"[{len(points) + i + 1}] {p}" for i, p in enumerate(local.passages)
            )
        reply = self.chat_model.chat(
            [{"role": "system", "content": "You answer questions about Python from numbered notes. Reply in two "
                                           "sentences that name the kinds of things asked for."},
             {"role": "user", "content": f"Question: {question}\n\nNotes:\n{notes}\n\nQuestion: {question}\n"
                                         "Answer in two sentences."}],
            max_tokens=80, stop=["\n\n", "```"],
        )  # fmt: skip
        return reply.text.strip()

    def answer(self, question: str, local: Context | None = None) -> GlobalAnswer:
        """Global search (map over the nearest summaries, then reduce); with `local`, its passages are
        read in the reduce step too: the hybrid of global and local."""
        start, trace = time.perf_counter(), []
        chosen = self.select(question)
        trace.append({"step": "select", "communities": [c["id"] for c in chosen]})
        points = []
        for community in chosen:
            mark = time.perf_counter()
            points.append(self.map(question, community))
            trace.append(
                {
                    "step": "map",
                    "community": community["id"],
                    "ms": round(1000 * (time.perf_counter() - mark)),
                }
            )
        mark = time.perf_counter()
        answer = self.reduce(question, points, local)
        trace.append({"step": "reduce", "ms": round(1000 * (time.perf_counter() - mark))})
        topics = list(dict.fromkeys(t for c in chosen for t in c["topics"]))
        if local:
            topics += [c.topic for c in local.chunks if c.topic not in topics]
        return GlobalAnswer(question, answer, points + (list(local.passages) if local else []),
                            [c["id"] for c in chosen], topics, time.perf_counter() - start, trace)  # fmt: skip
