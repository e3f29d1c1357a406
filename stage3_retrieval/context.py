"""One context: what the model reads is what the judge reads, what the answer cites, what is exported.

A RAG system fails quietly when its parts disagree about the context: the judge is shown three
chunks, the answerer two shorter ones, the evaluation scores all three in full, and the citations
point at chunks the model never read. Here there is one object, built once per retrieval round:

    Context.passages    the exact strings the model is shown, one per chunk: its title, a blank
                        line, its text cut at a word boundary to PASSAGE_CHARS (a structured chunk,
                        at most 1,000 characters, usually fits whole)
    Context.prompt()    the passages numbered [1] [2] [3], as they appear inside the prompt

The judge (reflect.py) and the answerer read `prompt()`; `export-eval` writes `passages` as the
record's `contexts`; `cite` only ever names chunks from it.

Citations that can fail. Naming a chunk because it shares a word with the answer cites something
for every answer, even a wrong or an unrelated one. Here a passage is cited only when it *supports*
the answer: the cosine similarity of the answer's embedding to the passage's (MiniLM) is at least
SUPPORT_MIN. An answer no passage supports (an off-topic reply, "I don't know") cites nothing, and
the evaluation counts how often the cited chunks come from the question's relevant topics
(citation precision, in `eval --answers`). The threshold was read off dev answers: supported
answers scored 0.5-0.8 against their own passage, unrelated sentences 0.0-0.25.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stage3_retrieval.ingest import Chunk

CONTEXT_CHUNKS = 3  # passages shown to the judge and the answerer
PASSAGE_CHARS = 900  # per passage, title included
SUPPORT_MIN = 0.40  # cosine(answer, passage) at which a passage counts as supporting the answer


def passage(chunk: Chunk, max_chars: int = PASSAGE_CHARS) -> str:
    """The chunk as the model sees it: title, blank line, text, cut at a word boundary.

    Example: passage(Chunk(..., title="heapq", text="Heap queue algorithm ...")) -> "heapq\\n\\nHeap queue ..."
    """
    text = f"{chunk.title}\n\n{chunk.text}"
    if len(text) <= max_chars:
        return text
    cut = text.rfind(" ", 0, max_chars)
    return text[: cut if cut > max_chars // 2 else max_chars].rstrip() + " ..."


@dataclass(frozen=True)
class Context:
    chunks: tuple[Chunk, ...]
    passages: tuple[str, ...]  # what the model is shown, in order

    @classmethod
    def of(cls, chunks: Sequence[Chunk], k: int = CONTEXT_CHUNKS, max_chars: int = PASSAGE_CHARS) -> Context:
        chosen = tuple(chunks[:k])
        return cls(chosen, tuple(passage(c, max_chars) for c in chosen))

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.chunks]

    def prompt(self) -> str:
        """The passages as the prompt shows them: "[1] title\\n\\ntext\\n\\n[2] ..."."""
        return "\n\n".join(f"[{i + 1}] {p}" for i, p in enumerate(self.passages))

    def __bool__(self) -> bool:
        return bool(self.chunks)


def support(answer: str, context: Context) -> list[float]:
    """Cosine similarity of the answer to each passage (MiniLM): how much each passage backs it."""
    from stage3_retrieval.dense import embed, embed_passages

    if not answer.strip() or not context:
        return [0.0] * len(context.passages)
    # (n_passages, 384) @ (384,): unit vectors, so dot products are cosines
    return [float(s) for s in embed_passages(context.passages) @ embed([answer])[0]]


def cite(answer: str, context: Context, min_support: float = SUPPORT_MIN) -> list[str]:
    """Ids of the passages that support the answer, most supportive first; [] when none does."""
    scores = support(answer, context)
    ranked = sorted(zip(scores, context.ids, strict=True), key=lambda x: -x[0])
    return [chunk_id for score, chunk_id in ranked if score >= min_support]
