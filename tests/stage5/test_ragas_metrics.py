"""ragas_metrics.py offline: the no-LLM metrics on known cases, containment against Levenshtein on a
real-sized reference, skips and empty retrievals counted apart from failures."""

from __future__ import annotations

import pytest

from stage5_serving_ops import dataset, ragas_metrics

KV = dataset.load_dataset()[0]
UNRELATED_CONTEXT = (
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris and is 330 metres tall."
)
UNRELATED_ANSWER = "Bananas are berries, while strawberries, botanically speaking, are not."


def in_unit_interval(value: float | None) -> bool:
    return value is not None and -1e-6 <= value <= 1 + 1e-6


def test_containment_finds_a_chunk_inside_a_long_reference():
    from rapidfuzz.distance import Levenshtein

    topic = " ".join(
        f"Paragraph {i} of the reference explains rule number {i} at some length." for i in range(120)
    )
    chunk = topic[3000:3700]  # a retrieved chunk cut from the middle of the reference topic
    assert ragas_metrics.containment(chunk, topic) == pytest.approx(1.0)
    assert ragas_metrics.containment(topic, chunk) == pytest.approx(1.0), "symmetric: shorter inside longer"
    assert Levenshtein.normalized_similarity(chunk, topic) < 0.2, "why Ragas' default measure cannot be used"
    assert ragas_metrics.containment(UNRELATED_CONTEXT, topic) < ragas_metrics.CONTAINMENT_MATCH
    assert ragas_metrics.containment("", topic) == 0.0


def test_known_cases_give_the_expected_scores():
    long_reference = "Background first. " * 40 + KV["reference_contexts"][0] + " More text follows." * 40
    records = [
        {**KV, "id": "perfect", "answer": KV["reference"], "contexts": list(KV["reference_contexts"])},
        {**KV, "id": "unrelated", "answer": UNRELATED_ANSWER, "contexts": [UNRELATED_CONTEXT]},
        {**KV, "id": "chunk-of-topic", "reference_contexts": [long_reference], "contexts": [KV["reference_contexts"][0],
                                                                                           UNRELATED_CONTEXT]},
        {"question": "What is BM25?", "contexts": [UNRELATED_CONTEXT], "answer": "A ranking function.",
         "reference": "A keyword ranking function."},
    ]  # fmt: skip
    result = ragas_metrics.evaluate_set(records)
    perfect, unrelated, chunk, no_reference_contexts = (r["scores"] for r in result["per_record"])
    assert perfect["non_llm_string_similarity"] == pytest.approx(1.0)
    assert perfect["semantic_similarity"] == pytest.approx(1.0, abs=1e-4)
    assert perfect["non_llm_context_precision_with_reference"] == pytest.approx(1.0)
    assert perfect["non_llm_context_recall"] == pytest.approx(1.0)
    assert unrelated["non_llm_context_precision_with_reference"] == pytest.approx(0.0)
    assert unrelated["non_llm_context_recall"] == pytest.approx(0.0)
    assert unrelated["non_llm_string_similarity"] < 0.4 and unrelated["semantic_similarity"] < 0.3
    # the right passage first, then a wrong one: recall 1, precision 1 (average precision counts hits only)
    assert chunk["non_llm_context_recall"] == pytest.approx(1.0)
    assert chunk["non_llm_context_precision_with_reference"] == pytest.approx(1.0)
    # no reference contexts: the context metrics are skipped, not failed and not zero
    assert no_reference_contexts["non_llm_context_recall"] is None
    assert result["skipped"]["non_llm_context_recall"] == 1
    assert all(count == 0 for count in result["failed"].values())
    assert set(result["metrics"]) == set(ragas_metrics.NO_LLM_METRICS) and result["judge"] is None
    for scores in (perfect, unrelated, chunk):
        assert all(in_unit_interval(v) for v in scores.values())


def test_a_wrong_passage_ranked_first_lowers_precision_not_recall():
    record = {**KV, "contexts": [UNRELATED_CONTEXT, KV["reference_contexts"][0]],
              "reference_contexts": [KV["reference_contexts"][0]]}  # fmt: skip
    scores = ragas_metrics.evaluate_set([record])["per_record"][0]["scores"]
    assert scores["non_llm_context_recall"] == pytest.approx(1.0)
    assert scores["non_llm_context_precision_with_reference"] == pytest.approx(0.5)


def test_nothing_retrieved_scores_zero_context_metrics():
    scores = ragas_metrics.evaluate_set([{**KV, "contexts": []}])["per_record"][0]["scores"]
    assert scores["non_llm_context_recall"] == 0.0
    assert scores["non_llm_context_precision_with_reference"] == 0.0
