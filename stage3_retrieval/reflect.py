"""The capstone: a self-reflective RAG that checks its own context before it answers.

Naive RAG retrieves once and answers whatever it got. This loop asks first whether what it got can
answer the question, and tries again when it cannot:

    route      out of scope?  -> a polite refusal, no retrieval. In scope: the route *filters*
               retrieval, so both indexes search only that source's chunks
    retrieve   the tuned mode (hybrid, plus the reranker when it won on dev)
    judge      is the context enough?  The model's probability of "yes" against "no" as its whole
               reply, together with the retrieval's own confidence (cosine similarity of the best
               chunk to the question): both must agree
    rewrite    if not: a new query, one strategy per round
                   hyde     the model writes a short hypothetical answer; search with question + answer
                   expand   add the graph neighbours of the question's entities (graph.py)
               and retrieve again, at most `max_rounds` rounds in all
    answer     from the context of the sufficient round (answering.py: generated, extracted, or
               generated with extraction when no passage supports it), citing the passages that
               support it (context.py). When no round was judged sufficient: by default, from the
               first round's context (`on_exhausted="first-round"`); or "I don't know"
               (`on_exhausted="unknown"`, `ask --give-up`), the refusal of the Self-RAG papers.

Why the default answers anyway: measured on the test split (`bench`, the "reflective" and
"reflective, give up" rows of the answer table), SmolLM2-135M's "is this enough?" verdict agrees with
the labels about as often as a coin, and when it says "not enough" the first round nearly always
held a relevant passage already. Refusing on that verdict turned answerable questions into "I don't
know"; the answerer's own support check (`fallback`) still says "I don't know" when no passage backs
what it wrote.

The judge and the answerer read the same Context, and that Context is what `export-eval` writes.
`reflect=False` answers from the first retrieval without judging (the "retrieve once" pipelines
that `eval --answers` compares the loop against). Every step is recorded (what it did, what it saw,
how long it took) in the result's `trace`, so a wrong answer can be followed back to its step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stage3_retrieval.context import CONTEXT_CHUNKS, Context
from stage3_retrieval.hybrid import Retriever, load_tuned
from stage3_retrieval.router import SemanticRouter

STRATEGIES = ("hyde", "expand")
MIN_SIMILARITY = 0.30
REFUSAL = (
    "I can only answer questions about Python and this course; that question is outside what I can search."
)
UNKNOWN = "I don't know: the sources I searched do not answer that."
ANSWER, GIVE_UP = "answer", "give up"
# Which answerer writes the answer (answering.py). Not yet chosen by a measurement: `eval --answers` reports
# all three on the same questions; "fallback" is the default because it never ships an answer no passage backs.
ANSWERER = "fallback"
# What to do when every round was judged "not enough": answer from the first round's context, or say UNKNOWN.
ON_EXHAUSTED = ("first-round", "unknown")


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


def judge_messages(question: str, context: Context) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You check whether numbered passages answer a question. Reply yes or no."},
            {"role": "user", "content": f"Passages:\n{context.prompt()}\n\nQuestion: {question}\n\n"
                                        "Do the passages contain the answer to the question?"}]  # fmt: skip


def yes_logprob(chat_model: Any, messages: list[dict[str, str]]) -> float:
    """log P("yes") / (P("yes") + P("no")) for the model's first reply token ("Yes"/"yes", "No"/"no" pooled):
    one forward pass, no generation. Also what the LLM reranker scores with (rerank.py)."""
    import torch

    tok = chat_model.tokenizer
    yes = [tok(w, add_special_tokens=False)["input_ids"][0] for w in ("yes", "Yes")]
    no = [tok(w, add_special_tokens=False)["input_ids"][0] for w in ("no", "No")]
    ids = torch.tensor([chat_model.encode(messages)], device=chat_model.device)
    with torch.inference_mode():
        logits = chat_model.model(input_ids=ids).logits[0, -1]
    pair = torch.stack([torch.logsumexp(logits[yes], 0), torch.logsumexp(logits[no], 0)])
    return float(pair.log_softmax(0)[0])


class ModelJudge:
    """P(the context answers the question): the model's "yes" against "no" as its whole reply."""

    def __init__(self, chat_model: Any):
        self.chat_model = chat_model

    def __call__(self, question: str, context: Context) -> float:
        import math

        messages = judge_messages(question, context)
        if hasattr(self.chat_model, "model") and hasattr(self.chat_model, "encode"):
            return math.exp(yes_logprob(self.chat_model, messages))
        if hasattr(getattr(self.chat_model, "client", None), "chat"):
            return served_p_yes(self.chat_model, messages)
        reply = self.chat_model.chat(messages, max_tokens=3).text.strip().lower()  # any other backend
        return 1.0 if reply.startswith("yes") else 0.0


def served_p_yes(chat_model: Any, messages: list[dict[str, str]]) -> float:
    """The same P("yes") over an OpenAI-compatible server (vLLM): one generated token, read from its top-20
    log-probabilities ("yes"/"Yes" pooled against "no"/"No"); 0.0 when neither is among them. Reading the
    reply's text instead fails: SmolLM2 rarely replies with a bare "yes" ("The passages contain ...")."""
    import math

    from shared.chat import ChatError

    try:
        reply = chat_model.client.chat.completions.create(model=chat_model.name, messages=messages, max_tokens=1,
                                                          temperature=0.0, logprobs=True, top_logprobs=20)  # fmt: skip
    except Exception as e:
        error = getattr(chat_model, "_error", None)
        raise (error(e) if error else ChatError(f"judge request failed: {e}")) from e
    logprobs = reply.choices[0].logprobs
    top = logprobs.content[0].top_logprobs if logprobs and logprobs.content else []
    yes = sum(math.exp(t.logprob) for t in top if t.token.strip().lower() == "yes")
    no = sum(math.exp(t.logprob) for t in top if t.token.strip().lower() == "no")
    return yes / (yes + no) if yes + no > 0 else 0.0


@dataclass
class Round:
    query: str
    strategy: str
    chunk_ids: list[str]
    similarity: float
    p_yes: float | None  # None: not judged (reflect=False)
    sufficient: bool
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "strategy": self.strategy, "sufficient": self.sufficient,
                "p_yes": None if self.p_yes is None else round(self.p_yes, 3), "similarity": round(self.similarity, 3),
                "chunk_ids": self.chunk_ids, "seconds": round(self.seconds, 3)}  # fmt: skip


@dataclass
class RAGResult:
    question: str
    answer: str
    citations: list[str]
    route: str
    rounds: list[Round]
    trace: list[dict[str, Any]] = field(default_factory=list)
    context: Context = field(default_factory=lambda: Context((), ()))  # what the answer was written from
    seconds: float = 0.0

    @property
    def contexts(self) -> list[str]:
        return list(self.context.passages)

    @property
    def refused(self) -> bool:
        return self.answer in (REFUSAL, UNKNOWN)

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "citations": self.citations, "route": self.route,
                "contexts": self.contexts, "rounds": [r.to_dict() for r in self.rounds],
                "seconds": round(self.seconds, 3), "trace": self.trace}  # fmt: skip


class SelfReflectiveRAG:
    def __init__(self, retriever: Retriever, chat_model: Any, router: SemanticRouter | None = None,
                 judge: Callable[[str, Context], float] | None = None, graph: Any = None,
                 max_rounds: int = 3, mode: str | None = None, min_similarity: float = MIN_SIMILARITY,
                 route_filter: bool | None = None, reflect: bool = True, k: int = CONTEXT_CHUNKS,
                 answerer: str = ANSWERER, on_exhausted: str = ON_EXHAUSTED[0]):  # fmt: skip
        if max_rounds < 1:
            raise ValueError(f"max_rounds must be at least 1, got {max_rounds}")
        if on_exhausted not in ON_EXHAUSTED:
            raise ValueError(f"on_exhausted must be one of {', '.join(ON_EXHAUSTED)}, got {on_exhausted!r}")
        self.on_exhausted = on_exhausted
        self.retriever, self.chat_model, self.router = retriever, chat_model, router
        self.judge = judge or ModelJudge(chat_model)
        self.graph, self.max_rounds, self.min_similarity = graph, max_rounds, min_similarity
        tuned = load_tuned()  # what dev chose (tune.py); explicit arguments win
        self.mode = mode or ("rerank" if tuned.get("rerank", {}).get("use") else "hybrid")
        if route_filter is None:
            route_filter = tuned.get("route_filter", {}).get("use", True)
        self.route_filter, self.reflect, self.k, self.answerer = route_filter, reflect, k, answerer
        self.answered_by = ""  # which answerer wrote the last answer ("generate" or "extract")

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "router": self.router is not None, "route_filter": self.route_filter,
                "reflect": self.reflect, "max_rounds": self.max_rounds if self.reflect else 1, "k": self.k,
                "answerer": self.answerer, "on_exhausted": self.on_exhausted if self.reflect else None}  # fmt: skip

    # ------------------------------------------------------------------------------------ steps

    def _step(self, trace: list[dict[str, Any]], name: str, fn: Callable[[], Any], **details: Any) -> Any:
        start = time.perf_counter()
        out = fn()
        trace.append({"step": name, "ms": round(1000 * (time.perf_counter() - start), 1), **details})
        return out

    def rewrite(self, question: str, strategy: str, context: Context) -> str:
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
            extra += [c.title for c in context.chunks[:2]]  # what the best chunks are about
            return " ".join(dict.fromkeys([question, *extra]))
        raise ValueError(f"unknown rewrite strategy {strategy!r}")

    def answer_from(self, question: str, context: Context) -> tuple[str, list[str]]:
        """The answer from the context (answering.py) and the passages that support it."""
        from stage3_retrieval.answering import answer

        text, citations, how = answer(self.chat_model, question, context, self.answerer)
        self.answered_by = how
        return (text, citations) if text else (UNKNOWN, [])

    # ------------------------------------------------------------------------------------- loop

    def ask(self, question: str) -> RAGResult:
        start = time.perf_counter()
        result = self._ask(question)
        result.seconds = time.perf_counter() - start
        return result

    def _ask(self, question: str) -> RAGResult:
        trace: list[dict[str, Any]] = []
        route, source = "unrouted", None
        if self.router is not None:
            decision = self._step(trace, "route", lambda: self.router.route(question))
            trace[-1].update(decision.to_dict())
            route = decision.name
            if not decision.in_scope:
                return RAGResult(question, REFUSAL, [], route, [], trace)
            source = route if self.route_filter else None
        rounds: list[Round] = []
        query, strategy = question, "original"
        first: Context | None = None
        for number in range(self.max_rounds if self.reflect else 1):
            round_start = time.perf_counter()
            hits = self._step(trace, "retrieve", lambda q=query: self.retriever.search(q, self.mode, self.k, source=source),
                              round=number + 1, query=query, mode=self.mode, source=source)  # fmt: skip
            context = Context.of([self.retriever.index.chunks[h.id] for h in hits], self.k)
            trace[-1]["chunk_ids"] = context.ids
            if first is None:
                first = context
            if not self.reflect:
                rounds.append(Round(query, strategy, context.ids, 0.0, None, True))
                return self._answer(question, context, route, rounds, trace)
            similarity = self._similarity(question, context)
            p_yes = self._step(trace, "judge", lambda c=context: self.judge(question, c) if c else 0.0)
            step = next_step(p_yes, similarity, number, self.max_rounds, self.min_similarity)
            sufficient = step == ANSWER
            trace[-1].update(p_yes=round(p_yes, 3), similarity=round(similarity, 3), sufficient=sufficient)
            rounds.append(Round(query, strategy, context.ids, similarity, p_yes, sufficient))
            if sufficient:
                rounds[-1].seconds = time.perf_counter() - round_start
                return self._answer(question, context, route, rounds, trace)
            if step != GIVE_UP:
                strategy = step
                query = self._step(trace, "rewrite", lambda s=strategy, c=context: self.rewrite(question, s, c),
                                   strategy=strategy)  # fmt: skip
                trace[-1]["query"] = query
            rounds[-1].seconds = time.perf_counter() - round_start
        # every round judged "not enough"
        if self.on_exhausted == "first-round" and first is not None:
            return self._answer(question, first, route, rounds, trace, exhausted=True)
        # no answer; the last context searched is still what an evaluation of the retrieval should see
        return RAGResult(question, UNKNOWN, [], route, rounds, trace, context)

    def _answer(self, question: str, context: Context, route: str, rounds: list[Round],
                trace: list[dict[str, Any]], exhausted: bool = False) -> RAGResult:  # fmt: skip
        answer, citations = self._step(trace, "answer", lambda: self.answer_from(question, context))
        trace[-1].update(citations=citations, answered_by=self.answered_by)
        if exhausted:
            trace[-1].update(exhausted=True, from_round=1)
        return RAGResult(question, answer, citations, route, rounds, trace, context)

    def _similarity(self, question: str, context: Context) -> float:
        """Cosine similarity of the question to the best passage: the retrieval's own confidence."""
        from stage3_retrieval.dense import embed, embed_passages

        if not context:
            return 0.0
        return float((embed_passages(context.passages) @ embed([question])[0]).max())
