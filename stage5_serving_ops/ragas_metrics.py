"""Scoring records with Ragas: which metric needs what, and how a score that could not be made is counted.

Reference-based and reference-free metrics
------------------------------------------
A *reference-based* metric compares what the system did with what a person wrote down as right:

    non_llm_string_similarity   1 - normalised Levenshtein distance between answer and reference
                                (characters: a paraphrase scores ~0.6-0.8, unrelated text ~0.25)
    semantic_similarity         cosine of the answer's and the reference's MiniLM embeddings:
                                meaning, not spelling; a paraphrase scores ~0.9
    non_llm_context_precision_with_reference
                                were the contexts shown the right ones, and ranked first?
                                (average precision over the contexts)
    non_llm_context_recall      the share of the reference contexts that some context shown matches

They need no model to judge, so they are cheap, deterministic and run anywhere, CI included. Their
price is the reference: someone has to write the right answer and mark the right passages.

When does a context shown "match" a reference context? Ragas compares the two strings with a
similarity and a threshold (0.5). Its default similarity, Levenshtein over the whole strings, fails
on real retrieval: a 700-character chunk of a 9,000-character reference topic is 92% *missing* from
the other string and scores ~0.1, although it is exactly the right passage. So the context metrics
here use **containment**: rapidfuzz's `partial_ratio`, the similarity of the shorter text to its
best-aligned window in the longer one. A chunk cut from the reference scores 1.0; on stage 3's
exports, chunks from other topics scored below 0.6, a few chunks that overlap a topic in part fell
between, and the threshold is CONTAINMENT_MATCH = 0.8.

A *reference-free* metric judges against the question and the contexts alone, as in production,
where no one wrote a reference:

    faithfulness                the share of the answer's statements that the contexts support
    answer_relevancy            questions written back from the answer, compared with the real one

Both need an LLM judge (judge.py: vLLM under a JSON schema), and Ragas' `collections` metrics, which
ask the judge for pydantic objects, are used for them.

Failures are counted, not scored
--------------------------------
A metric that could not produce a score on a record (the judge's reply was cut off, a server
error, NaN because the judge found no statements) is a *failure*: counting it as 0 would call a
good answer bad, and dropping it silently would average over the easy cases only. `evaluate_set`
counts failures per metric with their reasons and averages only the scores that exist. A record
without what a metric needs (no reference contexts, an empty reference) is *skipped* for it,
counted apart. Retrieving nothing when there was something to find scores 0 on both context metrics.

Ragas 0.4.3 notes: the no-LLM context metrics exist only as legacy `ragas.metrics` classes
(although the deprecation warning says to import them from `ragas.metrics.collections`), scored one
sample at a time with `single_turn_ascore`. Cosine scores come back raw (an unrelated answer
measured -0.006) and are clamped to [0, 1]. Ragas records usage events even with tracking off;
`RAGAS_DO_NOT_TRACK=true`, set before Ragas is imported, keeps them from being sent.

    from stage5_serving_ops import dataset, ragas_metrics
    result = ragas_metrics.evaluate_set(dataset.load_dataset())                  # no LLM
    result = ragas_metrics.evaluate_set(records, judge=StructuredJudge(url, name))
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from shared.console import BadInput, one_line
from stage5_serving_ops.dataset import normalize_record

os.environ["RAGAS_DO_NOT_TRACK"] = "true"  # read once by Ragas: set before any import of it

NO_LLM_METRICS = (
    "non_llm_context_precision_with_reference",
    "non_llm_context_recall",
    "non_llm_string_similarity",
    "semantic_similarity",
)
JUDGE_METRICS = ("faithfulness", "answer_relevancy")
CONTEXT_METRICS = NO_LLM_METRICS[:2]
ALL_METRICS = NO_LLM_METRICS + JUDGE_METRICS


def short_name(metric: str) -> str:
    """Ragas' metric name without its family prefix and suffix: context_precision, string_similarity."""
    return metric.replace("non_llm_", "").replace("_with_reference", "")


# What each metric needs from a record (non-empty); a record without it is skipped for that metric.
NEEDS = {
    "non_llm_context_precision_with_reference": ("reference_contexts",),
    "non_llm_context_recall": ("reference_contexts",),
    "non_llm_string_similarity": ("reference",),
    "semantic_similarity": ("reference",),
    "faithfulness": ("contexts", "answer"),
    "answer_relevancy": ("answer",),
}
CONTAINMENT_MATCH = 0.8  # a context matches a reference context at this containment or above
CONCURRENCY = 4  # judge requests in flight; a vLLM server batches them
TIMEOUT_S = 300.0  # one metric on one record


@contextmanager
def quiet_ragas() -> Iterator[None]:
    """Ragas warns that its legacy classes are deprecated and logs every judge error; we count and
    report those ourselves, so keep stderr for what the learner needs."""
    logger = logging.getLogger("ragas")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


# ------------------------------------------------------------------------------------------------
# Embeddings and the containment similarity


class _Vectors:
    """MiniLM vectors, batched and remembered: Ragas embeds one text at a time."""

    def __init__(self, encoder: Any):
        self.encoder = encoder
        self.cache: dict[str, list[float]] = {}

    def __call__(self, texts: list[str]) -> list[list[float]]:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            vectors = self.encoder.encode(missing, batch_size=32, normalize_embeddings=True,
                                          show_progress_bar=False, convert_to_numpy=True)  # fmt: skip
            self.cache.update(zip(missing, vectors.tolist(), strict=True))
        return [self.cache[t] for t in texts]


def minilm_embeddings(encoder: Any = None) -> tuple[Any, Any]:
    """The bundled all-MiniLM-L6-v2 for Ragas, twice over one cache: the legacy interface (for
    SemanticSimilarity) and the modern one (for the collections' AnswerRelevancy)."""
    from ragas.embeddings.base import BaseRagasEmbedding, BaseRagasEmbeddings
    from ragas.run_config import RunConfig

    if encoder is None:
        from shared.models import load_embedder

        encoder = load_embedder()
    vectors = _Vectors(encoder)

    class LegacyMiniLM(BaseRagasEmbeddings):
        def __init__(self) -> None:
            super().__init__()
            self.set_run_config(RunConfig())

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return vectors(texts)

        def embed_query(self, text: str) -> list[float]:
            return vectors([text])[0]

        async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
            return vectors(texts)

        async def aembed_query(self, text: str) -> list[float]:
            return vectors([text])[0]

        async def aembed_text(self, text: str, **kwargs: Any) -> list[float]:
            return vectors([text])[0]

    class ModernMiniLM(BaseRagasEmbedding):
        def embed_text(self, text: str, **kwargs: Any) -> list[float]:
            return vectors([text])[0]

        async def aembed_text(self, text: str, **kwargs: Any) -> list[float]:
            return vectors([text])[0]

        async def aembed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
            return vectors(list(texts))

    legacy, modern = LegacyMiniLM(), ModernMiniLM()
    legacy.vectors = modern.vectors = vectors  # for batching ahead of scoring
    return legacy, modern


def containment(a: str, b: str) -> float:
    """How much of the shorter text appears in the longer one: rapidfuzz partial_ratio in [0, 1].

    Example: containment("the KV cache", "Notes. The KV cache stores keys.") -> ~0.92 (case differs)
    """
    from rapidfuzz import fuzz

    shorter, longer = (a, b) if len(a) <= len(b) else (b, a)
    return fuzz.partial_ratio(shorter, longer) / 100.0 if shorter else 0.0


def containment_metric() -> Any:
    """`containment` as a Ragas single-turn metric, to plug into the context metrics' distance_measure."""
    from ragas.metrics import NonLLMStringSimilarity

    class ContainmentSimilarity(NonLLMStringSimilarity):
        async def _single_turn_ascore(self, sample: Any, callbacks: Any = None) -> float:
            return containment(sample.reference or "", sample.response or "")

    return ContainmentSimilarity(name="containment")


# ------------------------------------------------------------------------------------------------
# The metrics, each as "record -> awaitable float"


def build_metrics(legacy_embeddings: Any, modern_embeddings: Any, judge: Any = None,
                  judged: Sequence[str] = JUDGE_METRICS) -> dict[str, Callable[..., Any]]:  # fmt: skip
    """Metric name -> async function(record) giving its score. `judge` (a StructuredJudge) adds the
    `judged` metrics; answer relevancy asks for one question (strictness=1): at temperature 0 Ragas'
    default three would be three copies of the same question."""
    from ragas.dataset_schema import SingleTurnSample
    from ragas.run_config import RunConfig

    with quiet_ragas():
        from ragas.metrics import (
            NonLLMContextPrecisionWithReference,
            NonLLMContextRecall,
            NonLLMStringSimilarity,
            SemanticSimilarity,
        )

        precision = NonLLMContextPrecisionWithReference(distance_measure=containment_metric(),
                                                        threshold=CONTAINMENT_MATCH)  # fmt: skip
        recall = NonLLMContextRecall(threshold=CONTAINMENT_MATCH)
        recall._distance_measure = containment_metric()  # its constructor only takes Ragas' own measures
        legacy = {
            "non_llm_context_precision_with_reference": precision,
            "non_llm_context_recall": recall,
            "non_llm_string_similarity": NonLLMStringSimilarity(),
            "semantic_similarity": SemanticSimilarity(embeddings=legacy_embeddings),
        }
    for metric in legacy.values():
        metric.init(RunConfig())

    def sample(record: dict[str, Any]) -> Any:
        return SingleTurnSample(user_input=record["question"], retrieved_contexts=record["contexts"],
                                response=record["answer"], reference=record["reference"],
                                reference_contexts=record["reference_contexts"])  # fmt: skip

    def legacy_score(metric: Any) -> Callable[..., Any]:
        async def score(record: dict[str, Any]) -> float:
            return await metric.single_turn_ascore(sample(record))

        return score

    metrics: dict[str, Callable[..., Any]] = {name: legacy_score(m) for name, m in legacy.items()}
    if judge is not None:
        with quiet_ragas():
            from ragas.metrics.collections import AnswerRelevancy, Faithfulness

            faithfulness = Faithfulness(llm=judge)
            relevancy = AnswerRelevancy(llm=judge, embeddings=modern_embeddings, strictness=1)

        async def faithful(record: dict[str, Any]) -> float:
            result = await faithfulness.ascore(user_input=record["question"], response=record["answer"],
                                               retrieved_contexts=record["contexts"])  # fmt: skip
            return result.value

        async def relevant(record: dict[str, Any]) -> float:
            return (await relevancy.ascore(user_input=record["question"], response=record["answer"])).value

        for name, score in (("faithfulness", faithful), ("answer_relevancy", relevant)):
            if name in judged:
                metrics[name] = score
    return metrics


def failure_reason(error: BaseException) -> str:
    """A short, countable name for why a metric produced no score."""
    from stage5_serving_ops.judge import JudgeOutputError

    if isinstance(error, JudgeOutputError):
        return one_line(error).split(":")[0]
    if isinstance(error, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    return f"{type(error).__name__}: {one_line(error)[:120]}"


async def _score_all(jobs: list[tuple[str, Callable[..., Any], dict[str, Any]]], timeout: float,
                     on_done: Callable[[], None] | None) -> list[tuple[float | None, str | None]]:  # fmt: skip
    """Run (name, score, record) jobs, a few at a time; each gives (score, None) or (None, reason)."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(
        name: str, score: Callable[..., Any], record: dict[str, Any]
    ) -> tuple[float | None, str | None]:
        async with gate:
            try:
                value = await asyncio.wait_for(score(record), timeout)
            except Exception as e:  # a judge's bad day must not end the evaluation
                outcome: tuple[float | None, str | None] = (None, failure_reason(e))
            else:
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    value = math.nan
                if math.isfinite(value):
                    outcome = (min(max(value, 0.0), 1.0), None)  # cosines dip just below 0
                elif name in JUDGE_METRICS:
                    outcome = (None, "no score (NaN): the judge found no statements")
                else:
                    outcome = (None, "no score (NaN)")
            if on_done:
                on_done()
            return outcome

    return await asyncio.gather(*(one(*job) for job in jobs))


def _run(coro_factory: Callable[[], Any]) -> Any:
    """asyncio.run, also from code that already runs an event loop (a notebook, a server)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(coro_factory())).result()


# ------------------------------------------------------------------------------------------------
# Evaluate


def evaluate_set(records: Sequence[dict[str, Any]], judge: Any = None, *, judged: Sequence[str] = JUDGE_METRICS,
                 encoder: Any = None, on_done: Callable[[], None] | None = None,
                 timeout: float = TIMEOUT_S) -> dict[str, Any]:  # fmt: skip
    """Score `records` with the no-LLM metrics, and with the `judged` ones when a judge is given.

    Returns {"n", "metrics": {name: mean or None}, "per_record": [{"id", "question", "scores",
    "failures"}], "failed": {name: count}, "failure_reasons": {name: {reason: count}},
    "skipped": {name: count}, "judge": {"base_url", "model", "stats"} or None}. A mean covers the
    records that got a score. `encoder` is a SentenceTransformer (default: the bundled MiniLM);
    `on_done` is called after each (metric, record) score, for a progress bar.

    Example: evaluate_set(load_dataset())["metrics"]["semantic_similarity"] -> 0.9...
    """
    records = [normalize_record(r, f"record {i + 1}", i) for i, r in enumerate(records)]
    if not records:
        raise BadInput("no records to evaluate")
    with quiet_ragas():
        legacy, modern = minilm_embeddings(encoder)
        # One batched encode up front instead of one or two per record: the same vectors, much sooner.
        legacy.vectors([r[f] or " " for r in records for f in ("answer", "reference", "question")])
        metrics = build_metrics(legacy, modern, judge, judged)
        jobs, where, nothing_retrieved = [], [], []
        skipped: Counter[str] = Counter()
        for i, record in enumerate(records):
            for name, score in metrics.items():
                if not all(record[f] for f in NEEDS[name]):
                    skipped[name] += 1
                elif name in CONTEXT_METRICS and not record["contexts"]:
                    nothing_retrieved.append((i, name))  # Ragas' recall would fail on max([])
                else:
                    jobs.append((name, score, record))
                    where.append((i, name))
        outcomes = _run(lambda: _score_all(jobs, timeout, on_done))
    where += nothing_retrieved
    outcomes += [(0.0, None)] * len(nothing_retrieved)

    per_record = [{"id": r["id"], "question": r["question"], "scores": dict.fromkeys(metrics), "failures": {}}
                  for r in records]  # fmt: skip
    reasons: dict[str, Counter[str]] = {name: Counter() for name in metrics}
    for (i, name), (value, reason) in zip(where, outcomes, strict=True):
        per_record[i]["scores"][name] = value
        if reason is not None:
            per_record[i]["failures"][name] = reason
            reasons[name][reason] += 1
    means = {}
    for name in metrics:
        values = [p["scores"][name] for p in per_record if p["scores"][name] is not None]
        means[name] = sum(values) / len(values) if values else None
    judge_info = None
    if judge is not None:
        judge_info = {"base_url": judge.base_url, "model": judge.model, "stats": judge.stats.to_dict()}
    return {
        "n": len(records),
        "metrics": means,
        "per_record": per_record,
        "failed": {name: sum(reasons[name].values()) for name in metrics},
        "failure_reasons": {name: dict(reasons[name]) for name in metrics if reasons[name]},
        "skipped": {name: skipped[name] for name in metrics},
        "judge": judge_info,
    }
