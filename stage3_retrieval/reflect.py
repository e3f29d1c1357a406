"""The capstone: a self-reflective RAG that checks its own context before it answers.

Naive RAG retrieves once and answers whatever it got. This loop asks first whether what it got can
answer the question, and tries again when it cannot:

    route      out of scope?  -> a polite refusal, no retrieval
    retrieve   the best mode (hybrid, plus the reranker when it won on dev)
    judge      is the context enough?  The model's constrained yes/no (the probability it gives
               "yes" against "no" as its whole reply), together with the retrieval's own confidence
               (cosine similarity of the best chunk): both must agree
    rewrite    if not: a new query, one strategy per round
                   hyde     the model writes a short hypothetical answer; search with question + answer
                   expand   add the graph neighbours of the question's entities (graph.py)
               and retrieve again, at most `max_rounds` rounds in all
    answer     from the context of the best sufficient round, citing its chunk ids; or "I don't know"

Every step is recorded (what it did, what it saw, how long it took) in the result's `trace`, so a
wrong answer can be followed back to the step that went wrong.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stage3_retrieval.hybrid import Retriever, load_tuned
from stage3_retrieval.router import SemanticRouter

STRATEGIES = ("hyde", "expand")
CONTEXT_CHUNKS = 3
CHARS_PER_CHUNK = 700
ANSWER_CHUNKS, ANSWER_CHARS = 2, 600
MIN_SIMILARITY = 0.30
REFUSAL = (
    "I can only answer questions about Python and this course; that question is outside what I can search."
)
UNKNOWN = "I don't know: the sources I searched do not answer that."
ANSWER, GIVE_UP = "answer", "give up"


def next_step(p_yes: float, similarity: float, round_number: int, max_rounds: int,
              min_similarity: float = MIN_SIMILARITY) -> str:  # fmt: skip
    """After judging round `round_number` (0-based): ANSWER when the context is enough, that is when the
    judge leans yes (p_yes >= 0.5) and the retrieval is confident (similarity >= min_similarity); otherwise
    the rewrite strategy for the next round (STRATEGIES in turn), or GIVE_UP after the last round.

    Example: next_step(0.2, 0.6, 0, 3) -> "hyde";  next_step(0.9, 0.6, 0, 3) -> "answer"
    """
    # EXERCISE stage3.reflect_decision: ANSWER if p_yes >= 0.5 and similarity >= min_similarity; else, while round_number + 1 < max_rounds, the strategy at index round_number % len(STRATEGIES); else GIVE_UP
    if p_yes >= 0.5 and similarity >= min_similarity:
        return ANSWER
    if round_number + 1 < max_rounds:
        return STRATEGIES[round_number % len(STRATEGIES)]
    return GIVE_UP
    # END EXERCISE


class ModelJudge:
    """P(the context answers the question): the model's "yes" against "no" as its whole reply."""

    def __init__(self, chat_model: Any):
        self.chat_model = chat_model

    def messages(self, question: str, contexts: list[str]) -> list[dict[str, str]]:
        shown = "\n\n".join(f"[{i + 1}] {c[:CHARS_PER_CHUNK]}" for i, c in enumerate(contexts))
        return [{"role": "system", "content": "You check whether a context answers a question. Reply yes or no."},
                {"role": "user", "content": f"Context:\n{shown}\n\nQuestion: {question}\n\n"
                                            "Does the context contain the answer to the question?"}]  # fmt: skip

    def __call__(self, question: str, contexts: list[str]) -> float:
        messages = self.messages(question, contexts)
        if hasattr(self.chat_model, "model") and hasattr(self.chat_model, "encode"):
            import torch

            ids = self.chat_model.encode(messages)
            tok = self.chat_model.tokenizer
            with torch.inference_mode():
                logits = self.chat_model.model(
                    input_ids=torch.tensor([ids], device=self.chat_model.device)
                ).logits[0, -1]
            yes, no = (tok(w, add_special_tokens=False)["input_ids"][0] for w in ("yes", "no"))
            big_yes, big_no = (tok(w, add_special_tokens=False)["input_ids"][0] for w in ("Yes", "No"))
            pair = torch.stack(
                [torch.logsumexp(logits[[yes, big_yes]], 0), torch.logsumexp(logits[[no, big_no]], 0)]
            )
            return float(pair.softmax(0)[0])
        client = getattr(self.chat_model, "client", None)
        if client is not None and hasattr(client, "chat"):
            # An OpenAI-compatible server: the same P(yes), from the first token's top log-probabilities
            # (the reply text is rarely a bare "yes": SmolLM2 answered "The context contains ...").
            import math

            reply = client.chat.completions.create(model=self.chat_model.name, messages=messages, max_tokens=1,
                                                   temperature=0.0, logprobs=True, top_logprobs=20)  # fmt: skip
            content = reply.choices[0].logprobs.content if reply.choices[0].logprobs else None
            top = content[0].top_logprobs if content else []
            yes = sum(math.exp(t.logprob) for t in top if t.token.strip().lower() == "yes")
            no = sum(math.exp(t.logprob) for t in top if t.token.strip().lower() == "no")
            return yes / (yes + no) if yes + no > 0 else 0.0
        reply = self.chat_model.chat(messages, max_tokens=3).text.strip().lower()  # any other backend
        return 1.0 if reply.startswith("yes") else 0.0


@dataclass
class Round:
    query: str
    strategy: str
    chunk_ids: list[str]
    similarity: float
    p_yes: float
    sufficient: bool

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "strategy": self.strategy, "sufficient": self.sufficient,
                "p_yes": round(self.p_yes, 3), "similarity": round(self.similarity, 3), "chunk_ids": self.chunk_ids}  # fmt: skip


@dataclass
class RAGResult:
    question: str
    answer: str
    citations: list[str]
    route: str
    rounds: list[Round]
    trace: list[dict[str, Any]] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)  # the texts answered from (or last searched)

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "citations": self.citations, "route": self.route,
                "rounds": [r.to_dict() for r in self.rounds], "trace": self.trace}  # fmt: skip


class SelfReflectiveRAG:
    def __init__(self, retriever: Retriever, chat_model: Any, router: SemanticRouter | None = None,
                 judge: Callable[[str, list[str]], float] | None = None, graph: Any = None,
                 max_rounds: int = 3, mode: str | None = None, min_similarity: float = MIN_SIMILARITY):  # fmt: skip
        if max_rounds < 1:
            raise ValueError(f"max_rounds must be at least 1, got {max_rounds}")
        self.retriever, self.chat_model, self.router = retriever, chat_model, router
        self.judge = judge or ModelJudge(chat_model)
        self.graph, self.max_rounds, self.min_similarity = graph, max_rounds, min_similarity
        self.mode = mode or ("rerank" if load_tuned().get("rerank", {}).get("use") else "hybrid")

    # ------------------------------------------------------------------------------------ steps

    def _step(self, trace: list[dict[str, Any]], name: str, fn: Callable[[], Any], **details: Any) -> Any:
        start = time.perf_counter()
        out = fn()
        trace.append({"step": name, "ms": round(1000 * (time.perf_counter() - start), 1), **details})
        return out

    def rewrite(self, question: str, strategy: str, hits: list[Any]) -> str:
        if strategy == "hyde":
            reply = self.chat_model.chat(
                [{"role": "system", "content": "You write short, factual passages of Python documentation."},
                 {"role": "user", "content": f"Write two sentences of documentation that answer: {question}"}],
                max_tokens=60,
            )  # fmt: skip
            return f"{question} {reply.text.strip()}"
        if strategy == "expand":
            if self.graph is None:
                from stage3_retrieval.graph import build_graph

                self.graph = build_graph(list(self.retriever.index.chunks.values()))
            from stage3_retrieval.graph import query_entities

            seeds = query_entities(question, self.graph.graph)
            extra = [n for e in seeds for n, _ in self.graph.neighbours(e, 3)]
            extra += [
                self.retriever.index.chunks[h.id].title for h in hits[:2]
            ]  # what the best chunks are about
            return " ".join(dict.fromkeys([question, *extra]))
        raise ValueError(f"unknown rewrite strategy {strategy!r}")

    def answer_from(self, question: str, chunks: list[Any]) -> tuple[str, list[str]]:
        """One sentence from the best chunks; the question comes before and after the context, and the
        reply stops at its first blank line (a small model otherwise goes on copying the context)."""
        shown = "\n\n".join(f"[{c.id}] {c.title}\n{c.text[:ANSWER_CHARS]}" for c in chunks[:ANSWER_CHUNKS])
        reply = self.chat_model.chat(
            [{"role": "system", "content": "You answer questions about Python from the context given. "
                                           "Reply with one short sentence."},
             {"role": "user", "content": f"Question: {question}\n\nContext:\n{shown}\n\n"
                                         f"Question: {question}\nAnswer in one sentence."}],
            max_tokens=64, stop=["\n\n"],
        )  # fmt: skip
        answer = reply.text.strip()
        return answer, cite(answer, chunks[:ANSWER_CHUNKS])

    # ------------------------------------------------------------------------------------- loop

    def ask(self, question: str) -> RAGResult:
        trace: list[dict[str, Any]] = []
        route = "python-reference"
        if self.router is not None:
            decision = self._step(trace, "route", lambda: self.router.route(question))
            trace[-1].update(decision.to_dict())
            route = decision.name
            if not decision.in_scope:
                return RAGResult(question, REFUSAL, [], route, [], trace)
        rounds: list[Round] = []
        query, strategy = question, "original"
        for number in range(self.max_rounds):
            hits = self._step(trace, "retrieve", lambda q=query: self.retriever.search(q, self.mode, k=CONTEXT_CHUNKS),
                              round=number + 1, query=query, mode=self.mode)  # fmt: skip
            trace[-1]["chunk_ids"] = [h.id for h in hits]
            chunks = [self.retriever.index.chunks[h.id] for h in hits]
            similarity = self._similarity(question, hits) if hits else 0.0
            p_yes = self._step(
                trace, "judge", lambda c=chunks: self.judge(question, [x.text for x in c]) if c else 0.0
            )
            step = next_step(p_yes, similarity, number, self.max_rounds, self.min_similarity)
            sufficient = step == ANSWER
            trace[-1].update(p_yes=round(p_yes, 3), similarity=round(similarity, 3), sufficient=sufficient)
            rounds.append(Round(query, strategy, [h.id for h in hits], similarity, p_yes, sufficient))
            if sufficient:
                answer, citations = self._step(
                    trace, "answer", lambda c=chunks: self.answer_from(question, c)
                )
                trace[-1]["citations"] = citations
                return RAGResult(question, answer, citations, route, rounds, trace, [c.text for c in chunks])
            if step != GIVE_UP:
                strategy = step
                query = self._step(trace, "rewrite", lambda s=strategy, h=hits: self.rewrite(question, s, h),
                                   strategy=strategy)  # fmt: skip
                trace[-1]["query"] = query
        # no answer, but what it searched still matters to an evaluation of the retrieval
        last = [self.retriever.index.chunks[i] for i in rounds[-1].chunk_ids]
        return RAGResult(question, UNKNOWN, [], route, rounds, trace, [c.text for c in last])

    def _similarity(self, question: str, hits: list[Any]) -> float:
        """Cosine similarity of the question to the best retrieved chunk: the retrieval's own confidence."""
        from stage3_retrieval.dense import embed

        vectors = embed([question, *(self.retriever.index.chunks[h.id].searchable() for h in hits)])
        return float((vectors[1:] @ vectors[0]).max())


def cite(answer: str, chunks: list[Any]) -> list[str]:
    """The context chunks the answer draws on: those sharing content words with it (at least the best one)."""
    words = {w for w in re.findall(r"[a-z_][a-z0-9_]{3,}", answer.lower())}
    overlaps = [(len(words & set(re.findall(r"[a-z_][a-z0-9_]{3,}", c.text.lower()))), c.id) for c in chunks]
    cited = [cid for n, cid in sorted(overlaps, key=lambda x: -x[0]) if n > 0]
    return (cited or [chunks[0].id]) if chunks else []
