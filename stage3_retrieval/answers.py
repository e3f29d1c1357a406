"""Answer-level evaluation: does each part of the pipeline make the answers better?

    python -m stage3_retrieval eval --answers --split test [--limit N] [--judge-base-url URL]

The golden set has a reference answer per question, so every pipeline can be run on the same
questions and scored the same way (answer_metrics.py). The pipelines, each one part more than
the one before:

    naive               dense top 3, the model writes the answer. No router, no judge: chunk,
                        embed, top-k, generate
    hybrid+rerank       route (refuse out of scope, filter to the routed source), hybrid search
                        reranked, answer once; with each answerer of answering.py (generate,
                        extract, fallback)
    no route filter     the same without the filter: the route only refuses
    reflective          the full loop (reflect.py): judge the context, rewrite and search again,
                        answer or say "I don't know"

Out-of-scope queries (the routing set's `out_of_scope` rows) measure *refusal accuracy*: the share
refused. In-scope questions refused are counted too (a refusal is not free).

For the reflective loop the report also says how often the judge said "not enough" on the first
round, how often that first round already held a relevant chunk (the judge was wrong), how often a
rewrite then retrieved a relevant chunk, how often it gave up, and what the extra rounds cost.

Greedy decoding makes every model call a function of its prompt, so calls are memoised: two
pipelines that retrieve the same passages for a question get the same answer without a second
generation, and the comparison costs what the differences cost.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from stage3_retrieval.evaluate import percentile, relevant_of

# name: (search mode, router, route filter, reflect, answerer, when every round is judged "not enough").
# None: as shipped (data/tuned.json for the mode and the filter, reflect.ANSWERER for the answerer,
# reflect.ON_EXHAUSTED[0] for the last), so "reflective" is the pipeline `ask` runs.
_SPECS = {
    "naive": ("dense", False, False, False, "generate", None),
    "hybrid+rerank": ("rerank", True, True, False, "generate", None),
    "hybrid+rerank, extract": ("rerank", True, True, False, "extract", None),
    "hybrid+rerank, fallback": ("rerank", True, True, False, "fallback", None),
    "no route filter": ("rerank", True, False, False, None, None),
    "reflective": (None, True, None, True, None, None),
    "reflective, give up": (None, True, None, True, None, "unknown"),
}
PIPELINES = {name: dict(zip(("mode", "router", "route_filter", "reflect", "answerer", "on_exhausted"), spec,
                            strict=True)) for name, spec in _SPECS.items()}  # fmt: skip
METRICS = ("similarity", "rouge_l", "context_recall", "context_precision", "context_hit", "support", "cited",
           "citation_precision", "refused", "faithfulness")  # fmt: skip


class MemoChat:
    """A chat model whose replies are memoised on (messages, settings): exact under greedy decoding.
    Everything else (the judge's direct access to `.model`, `.encode`, ...) passes through."""

    def __init__(self, chat_model: Any):
        self.inner, self.memo, self.hits, self.calls = chat_model, {}, 0, 0
        self.saved_s = 0.0  # generation time a memo hit did not spend: added back to reported latencies

    def chat(self, messages: Sequence[dict[str, Any]], **kwargs: Any) -> Any:
        if kwargs.get("temperature", 0.0) > 0:
            return self.inner.chat(messages, **kwargs)
        key = json.dumps([list(messages), kwargs], sort_keys=True, default=str)
        self.calls += 1
        if key in self.memo:
            self.hits += 1
            self.saved_s += self.memo[key].latency_s
        else:
            self.memo[key] = self.inner.chat(messages, **kwargs)
        return self.memo[key]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class MemoJudge:
    def __init__(self, judge: Callable[[str, Any], float]):
        self.judge, self.memo, self.saved_s = judge, {}, 0.0

    def __call__(self, question: str, context: Any) -> float:
        key = (question, context.passages)
        if key in self.memo:
            self.saved_s += self.memo[key][1]
        else:
            start = time.perf_counter()
            value = self.judge(question, context)
            self.memo[key] = (value, time.perf_counter() - start)
        return self.memo[key][0]


def build_pipeline(name: str, retriever: Any, chat_model: Any, router: Any, judge: Any, graph: Any = None,
                   max_rounds: int = 3) -> Any:  # fmt: skip
    from stage3_retrieval.reflect import ANSWERER, ON_EXHAUSTED, SelfReflectiveRAG

    spec = PIPELINES[name]
    return SelfReflectiveRAG(retriever, chat_model, router if spec["router"] else None, judge=judge, graph=graph,
                             max_rounds=max_rounds, mode=spec["mode"], route_filter=spec["route_filter"],
                             reflect=spec["reflect"], answerer=spec["answerer"] or ANSWERER,
                             on_exhausted=spec["on_exhausted"] or ON_EXHAUSTED[0])  # fmt: skip


def summarise(per_question: list[dict[str, Any]], seconds: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(per_question)}
    for metric in METRICS:
        values = [q[metric] for q in per_question if q.get(metric) is not None]
        out[metric] = statistics.fmean(values) if values else None
        if metric in ("citation_precision", "faithfulness"):
            out[f"{metric}_n"] = len(values)
    out["p50_s"], out["p95_s"] = percentile(seconds, 50), percentile(seconds, 95)
    return out


def reflection_stats(rows: Sequence[dict[str, Any]], results: Sequence[Any], index: Any,
                     baseline_seconds: Sequence[float]) -> dict[str, Any]:  # fmt: skip
    """What the loop did: how often the judge said no, whether it was right, and what rewriting found."""

    def has_relevant(chunk_ids: list[str], row: dict[str, Any]) -> bool:
        return any((index.chunks[c].source, index.chunks[c].topic) in relevant_of(row) for c in chunk_ids)

    judged = [(row, r) for row, r in zip(rows, results, strict=True) if r.rounds]
    first_no = [(row, r) for row, r in judged if not r.rounds[0].sufficient]
    judge_right = [(r.rounds[0].sufficient == has_relevant(r.rounds[0].chunk_ids, row)) for row, r in judged]
    rewrote = [(row, r) for row, r in first_no if len(r.rounds) > 1]
    found = [any(has_relevant(x.chunk_ids, row) for x in r.rounds[1:]) for row, r in rewrote]
    newly = [any(has_relevant(x.chunk_ids, row) for x in r.rounds[1:]) and not has_relevant(r.rounds[0].chunk_ids, row)
             for row, r in rewrote]  # fmt: skip
    extra = [sum(x.seconds for x in r.rounds[1:]) for _, r in judged]
    paired = [r.seconds - b for r, b in zip(results, baseline_seconds, strict=True) if r.rounds]
    n = len(judged) or 1
    return {"questions": len(judged),
            "judged_not_enough_first": len(first_no) / n,
            "first_round_had_relevant_when_judged_not_enough": (sum(has_relevant(r.rounds[0].chunk_ids, row)
                                                                    for row, r in first_no) / len(first_no)
                                                                if first_no else None),
            "judge_agrees_with_labels": statistics.fmean(judge_right) if judge_right else None,
            "rewrites": len(rewrote),
            "rewrite_retrieved_relevant": statistics.fmean(found) if found else None,
            "rewrite_retrieved_relevant_first_lacked": statistics.fmean(newly) if newly else None,
            "exhausted": sum(not any(x.sufficient for x in r.rounds) for _, r in judged) / n,
            "gave_up": sum(r.answer.startswith("I don't know") for _, r in judged) / n,
            "mean_rounds": statistics.fmean(len(r.rounds) for _, r in judged) if judged else None,
            "extra_round_seconds_mean": statistics.fmean(extra) if extra else None,
            "extra_seconds_vs_hybrid_rerank_p50": percentile(paired, 50) if paired else None,
            "extra_seconds_vs_hybrid_rerank_p95": percentile(paired, 95) if paired else None}  # fmt: skip


def refusal_accuracy(pipeline: Any, queries: Sequence[str]) -> dict[str, Any]:
    results = [pipeline.ask(q) for q in queries]
    return {"n": len(queries), "refused": sum(r.refused for r in results) / len(queries) if queries else None,
            "answers": [r.answer for r in results]}  # fmt: skip


def compare_pipelines(retriever: Any, chat_model: Any, rows: Sequence[dict[str, Any]],
                      out_of_scope: Sequence[str], pipelines: Sequence[str] = tuple(PIPELINES),
                      scorer: Any = None, on_step: Callable[[str], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Every pipeline on the same golden rows and out-of-scope queries: the answer table."""
    from stage3_retrieval.answer_metrics import AnswerScorer
    from stage3_retrieval.export import reference_contexts
    from stage3_retrieval.reflect import ModelJudge
    from stage3_retrieval.router import SemanticRouter

    index = retriever.index
    scorer = scorer or AnswerScorer()
    chat = chat_model if isinstance(chat_model, MemoChat) else MemoChat(chat_model)
    judge = MemoJudge(ModelJudge(chat))
    router = SemanticRouter(index=index)
    references = [reference_contexts(index, row) for row in rows]
    report: dict[str, Any] = {"n": len(rows), "pipelines": {}, "settings": {}}
    results_by: dict[str, list[Any]] = {}
    for name in pipelines:
        rag = build_pipeline(name, retriever, chat, router, judge)
        results, per_question = [], []
        for row, refs in zip(rows, references, strict=True):
            saved = chat.saved_s + judge.saved_s
            result = rag.ask(row["question"])
            result.seconds += chat.saved_s + judge.saved_s - saved  # as if nothing had been memoised
            results.append(result)
            per_question.append({"id": row["id"], **scorer.score(row, result, refs)})
            if on_step:
                on_step(name)
        results_by[name] = results
        summary = summarise(per_question, [r.seconds for r in results])
        summary["out_of_scope"] = refusal_accuracy(rag, out_of_scope)
        for _ in out_of_scope:
            if on_step:
                on_step(name)
        report["pipelines"][name] = {**summary, "per_question": per_question}
        report["settings"][name] = rag.describe()
    if "reflective" in results_by and "hybrid+rerank" in results_by:
        report["reflection"] = reflection_stats(rows, results_by["reflective"], index,
                                                [r.seconds for r in results_by["hybrid+rerank"]])  # fmt: skip
    report["model_calls"] = {"calls": chat.calls, "memo_hits": chat.hits}
    return report


# ---------------------------------------------------------------------------------------------
# Global questions: GraphRAG's local search, global search and both, beside plain retrieval


def load_global_questions() -> list[dict[str, Any]]:
    from pathlib import Path

    path = Path(__file__).parent / "data" / "global_questions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def topic_recall(topics: Sequence[str], row: dict[str, Any]) -> float:
    """Share of the question's relevant topics that the context drew on."""
    return len(set(topics) & set(row["relevant"])) / len(row["relevant"])


def compare_global(retriever: Any, chat_model: Any, rows: Sequence[dict[str, Any]] | None = None,
                   on_step: Callable[[str], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """rag (retrieve once), local (graph.py's entity search), global (map-reduce over community
    summaries) and global+local on the global questions: similarity to the reference, topic recall, time."""
    from stage3_retrieval.communities import GlobalSearch
    from stage3_retrieval.context import Context
    from stage3_retrieval.dense import embed
    from stage3_retrieval.graph import build_graph
    from stage3_retrieval.reflect import SelfReflectiveRAG

    rows = list(rows or load_global_questions())
    index = retriever.index
    chat = chat_model if isinstance(chat_model, MemoChat) else MemoChat(chat_model)
    graph = build_graph(list(index.chunks.values()))
    answerer = SelfReflectiveRAG(retriever, chat, reflect=False)
    searcher = GlobalSearch(index.communities, chat)

    def local_context(question: str) -> Context:
        found = graph.local_search(question, k=3)["chunks"]
        return Context.of([index.chunks[c["id"]] for c in found])

    def run(name: str, question: str) -> tuple[str, list[str], float]:
        start, saved = time.perf_counter(), chat.saved_s
        if name == "rag":
            result = answerer.ask(question)
            answer, topics = result.answer, [c.topic for c in result.context.chunks]
        elif name == "local":
            context = local_context(question)
            answer, topics = answerer.answer_from(question, context)[0], [c.topic for c in context.chunks]
        else:
            found = searcher.answer(question, local_context(question) if name == "global+local" else None)
            answer, topics = found.answer, found.topics
        return answer, topics, time.perf_counter() - start + chat.saved_s - saved  # memo hits at full cost

    report: dict[str, Any] = {"n": len(rows), "modes": {}}
    for name in ("rag", "local", "global", "global+local"):
        per_question, seconds = [], []
        for row in rows:
            answer, topics, took = run(name, row["question"])
            vectors = embed([answer, row["answer"]])
            per_question.append({"id": row["id"], "similarity": max(0.0, float(vectors[0] @ vectors[1])),
                                 "topic_recall": topic_recall(topics, row), "answer": answer})  # fmt: skip
            seconds.append(took)
            if on_step:
                on_step(name)
        report["modes"][name] = {
            "similarity": statistics.fmean(q["similarity"] for q in per_question),
            "topic_recall": statistics.fmean(q["topic_recall"] for q in per_question),
            "p50_s": percentile(seconds, 50), "p95_s": percentile(seconds, 95), "per_question": per_question}  # fmt: skip
    return report
