"""Scoring one answer: against its reference, against the context it was given, and its citations.

Retrieval metrics (evaluate.py) ask whether the right chunk came back. These ask whether the
answer is any good, per question, with no model in the loop unless a judge is named:

    similarity          cosine of MiniLM embeddings of the answer and the golden reference answer:
                        same meaning in other words scores high (0.6-0.9), a wrong or empty answer low
    rouge_l             Ragas' RougeScore (rougeL F-measure): word overlap with the reference, a
                        stricter and more literal view of the same question
    context_recall      Ragas' NonLLMContextRecall: the share of the reference contexts (export.py)
                        that some shown passage matches (Levenshtein similarity > 0.5)
    context_precision   Ragas' NonLLMContextPrecisionWithReference: are the passages that match
                        a reference context ranked first
    context_hit         1 if any shown passage comes from a relevant topic (the answer was
                        reachable at all)
    support             the answer's best cosine similarity to a shown passage (what citations
                        are decided on: context.SUPPORT_MIN)
    cited / citation_precision   did the answer cite anything, and what share of its citations
                        come from a relevant topic
    refused             the pipeline declined: out of scope, or "I don't know"
    faithfulness        (only with a judge: --judge-base-url) Ragas' Faithfulness: the share of the
                        answer's claims the judge finds supported by the passages

Ragas' metrics are scored one sample at a time through `single_turn_score`, with no LLM: the
non-LLM ones run in milliseconds.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

from stage3_retrieval.evaluate import relevant_of


@contextlib.contextmanager
def quiet_ragas() -> Iterator[None]:
    """Ragas 0.4 warns on import that its legacy metrics move; they are the only non-LLM ones it has."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.getLogger("ragas").level
        logging.getLogger("ragas").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("ragas").setLevel(level)


class AnswerScorer:
    def __init__(self, judge_base_url: str | None = None, judge_model: str | None = None,
                 judge_api_key: str | None = None):  # fmt: skip
        with quiet_ragas():
            from ragas.metrics import NonLLMContextPrecisionWithReference, NonLLMContextRecall, RougeScore

            self.recall, self.precision = NonLLMContextRecall(), NonLLMContextPrecisionWithReference()
            self.rouge = RougeScore(rouge_type="rougeL", mode="fmeasure")
        self.faithfulness = (self._judge_metric(judge_base_url, judge_model, judge_api_key)
                             if judge_base_url else None)  # fmt: skip

    @staticmethod
    def _judge_metric(base_url: str, model: str | None, api_key: str | None) -> Any:
        """Ragas' Faithfulness with any OpenAI-compatible server as the judge (LangChain's ChatOpenAI,
        in Ragas' wrapper: plain chat completions, parsed by Ragas with its fix-the-format retry)."""
        import os

        from langchain_openai import ChatOpenAI

        from shared.models import DEFAULT_CHAT_MODEL

        with quiet_ragas():
            from ragas.llms import LangchainLLMWrapper
            from ragas.metrics import Faithfulness
            from ragas.run_config import RunConfig

            chat = ChatOpenAI(base_url=base_url, model=model or DEFAULT_CHAT_MODEL, temperature=0, max_tokens=512,
                              api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY", timeout=120,
                              max_retries=0, use_responses_api=False)  # fmt: skip
            metric = Faithfulness(llm=LangchainLLMWrapper(chat, bypass_temperature=True))
            metric.init(RunConfig(timeout=120, max_retries=2, max_wait=5))
        return metric

    def score(self, row: dict[str, Any], result: Any, reference_contexts: list[str]) -> dict[str, Any]:
        """Every metric for one golden row and the pipeline's RAGResult."""
        from ragas.dataset_schema import SingleTurnSample

        from stage3_retrieval.dense import embed

        contexts, answer = result.contexts, result.answer
        vectors = embed([answer, row["answer"]])
        relevant = relevant_of(row)
        chunks = result.context.chunks
        by_id = {c.id: c for c in chunks}
        cited = [by_id[c] for c in result.citations if c in by_id]
        from stage3_retrieval.context import support

        scores: dict[str, Any] = {
            "answer": answer,
            "support": max(support(answer, result.context), default=0.0),
            "similarity": max(0.0, float(vectors[0] @ vectors[1])),
            "context_hit": float(any((c.source, c.topic) in relevant for c in chunks)),
            "refused": float(result.refused),
            "cited": float(bool(cited)),
            "citation_precision": (sum((c.source, c.topic) in relevant for c in cited) / len(cited)) if cited else None,
        }  # fmt: skip
        with quiet_ragas():
            scores["rouge_l"] = float(self.rouge.single_turn_score(SingleTurnSample(response=answer,
                                                                                    reference=row["answer"])))  # fmt: skip
            if contexts and reference_contexts:
                sample = SingleTurnSample(user_input=row["question"], retrieved_contexts=contexts,
                                          reference_contexts=reference_contexts)  # fmt: skip
                scores["context_recall"] = float(self.recall.single_turn_score(sample))
                scores["context_precision"] = float(self.precision.single_turn_score(sample))
            else:  # refused before retrieval: nothing was found
                scores["context_recall"] = scores["context_precision"] = 0.0
            if self.faithfulness is not None and contexts and not result.refused:
                sample = SingleTurnSample(
                    user_input=row["question"], retrieved_contexts=contexts, response=answer
                )
                try:
                    scores["faithfulness"] = float(self.faithfulness.single_turn_score(sample))
                except Exception as e:  # a judge that cannot answer must not end the evaluation
                    scores["faithfulness"] = None
                    scores["faithfulness_error"] = type(e).__name__
        return scores
