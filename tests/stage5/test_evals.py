"""The Ragas evaluation gate, offline: no-LLM metrics on known cases, the shipped set passes, a bad
set fails, malformed input is named, and the LLM-judge path counts a fake judge's failures."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.console import BadInput, WorkFailed
from stage5_serving_ops import evals

KV = evals.load_dataset()[0]  # the KV-cache record
UNRELATED_CONTEXT = (
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris and is 330 metres tall."
)
UNRELATED_ANSWER = "Bananas are berries, while strawberries, botanically speaking, are not."


@pytest.fixture(scope="module")
def shipped() -> dict:
    return evals.evaluate_set(evals.load_dataset())


def in_unit_interval(value: float | None) -> bool:
    return value is not None and -1e-6 <= value <= 1 + 1e-6


def test_known_cases_give_the_expected_scores():
    records = [
        {**KV, "id": "perfect", "answer": KV["reference"], "contexts": list(KV["reference_contexts"])},
        {**KV, "id": "unrelated", "answer": UNRELATED_ANSWER, "contexts": [UNRELATED_CONTEXT]},
        {
            "question": "What is BM25?",
            "contexts": [UNRELATED_CONTEXT],
            "answer": "A ranking function.",
            "reference": "A keyword ranking function.",
            "relevant": ["bm25"],
            "citations": [],
        },  # fmt: skip
    ]
    result = evals.evaluate_set(records)
    perfect, unrelated, no_reference_contexts = (r["scores"] for r in result["per_record"])
    assert perfect["non_llm_string_similarity"] == pytest.approx(1.0)
    assert perfect["semantic_similarity"] == pytest.approx(1.0, abs=1e-4)
    assert perfect["non_llm_context_precision_with_reference"] == pytest.approx(1.0)
    assert perfect["non_llm_context_recall"] == pytest.approx(1.0)
    assert unrelated["non_llm_context_precision_with_reference"] == pytest.approx(0.0)
    assert unrelated["non_llm_context_recall"] == pytest.approx(0.0)
    assert unrelated["non_llm_string_similarity"] < 0.4
    assert unrelated["semantic_similarity"] < 0.3
    # no reference contexts: the context metrics are skipped, not failed and not zero
    assert no_reference_contexts["non_llm_context_recall"] is None
    assert result["skipped"]["non_llm_context_recall"] == 1
    assert all(count == 0 for count in result["failed"].values())
    assert set(result["metrics"]) == set(evals.NO_LLM_METRICS) and result["judge"] is None
    for scores in (perfect, unrelated, no_reference_contexts):
        assert all(in_unit_interval(v) for v in scores.values() if v is not None)


def test_nothing_retrieved_scores_zero_context_metrics():
    result = evals.evaluate_set([{**KV, "contexts": []}])
    scores = result["per_record"][0]["scores"]
    assert scores["non_llm_context_recall"] == 0.0
    assert scores["non_llm_context_precision_with_reference"] == 0.0


def test_shipped_set_passes_the_gate(shipped):
    assert shipped["n"] == len(evals.load_dataset()) >= 12
    assert all(in_unit_interval(v) for v in shipped["metrics"].values())
    assert sum(shipped["failed"].values()) == 0 and sum(shipped["skipped"].values()) == 0
    assert evals.gate(shipped, evals.load_thresholds()) == []


def test_a_bad_answer_set_fails_the_gate():
    records = evals.load_dataset()
    half = len(records) // 2
    bad = [{**r, "answer": records[(i + half) % len(records)]["answer"],  # another topic's answer
            "contexts": records[(i + 1) % len(records)]["contexts"]}  # the neighbour's retrieval
           for i, r in enumerate(records)]  # fmt: skip
    result = evals.evaluate_set(bad)
    failures = evals.gate(result, evals.load_thresholds())
    assert {f["metric"] for f in failures} == set(evals.NO_LLM_METRICS)
    for f in failures:
        assert f["value"] < f["threshold"]


def test_gate_rules():
    result = {"n": 4, "metrics": {"semantic_similarity": 0.9, "faithfulness": 0.95, "non_llm_context_recall": None},
              "failed": {"faithfulness": 3, "non_llm_context_recall": 0},
              "skipped": {"faithfulness": 0, "non_llm_context_recall": 4}}  # fmt: skip
    thresholds = {
        "semantic_similarity": {"min": 0.8, "required": True},
        "non_llm_context_recall": {"min": 0.8, "required": True},
        "faithfulness": {"min": 0.5, "required": False, "max_failed_fraction": 0.5},
        "answer_relevancy": {"min": 0.5, "required": False},  # not run: no judge, no failure
    }
    failures = {f["metric"]: f for f in evals.gate(result, thresholds)}
    assert set(failures) == {"non_llm_context_recall", "faithfulness"}
    assert "4 skipped" in failures["non_llm_context_recall"]["reason"]
    assert "3 of 4" in failures["faithfulness"]["reason"]


def test_thresholds_file_is_valid_and_bad_ones_are_named(tmp_path):
    thresholds = evals.load_thresholds()
    assert {name for name, t in thresholds.items() if t["required"]} == set(evals.NO_LLM_METRICS)
    bad = tmp_path / "t.toml"
    bad.write_text("[metrics.semantic_similarity]\nmin = 1.5\n")
    with pytest.raises(BadInput, match="semantic_similarity.min"):
        evals.load_thresholds(bad)
    bad.write_text("[metrics.bleu]\nmin = 0.5\n")
    with pytest.raises(BadInput, match="unknown metric 'bleu'"):
        evals.load_thresholds(bad)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "q", "contexts": ["c"], "answer": "a"', "line 2: not valid JSON"),
        ('{"question": "q", "contexts": ["c"], "answer": "a"}', "line 2: missing field 'reference'"),
        (
            '{"question": "q", "contexts": "c", "answer": "a", "reference": "r"}',
            "line 2: 'contexts' must be a list",
        ),
        ('["q", "c"]', "line 2: expected a JSON object"),
    ],
)
def test_a_malformed_line_is_named(tmp_path, line, message):
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps(KV) + "\n" + line + "\n")
    with pytest.raises(BadInput, match=re.escape(message)):
        evals.load_dataset(path)


def test_missing_or_empty_dataset_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="no eval dataset"):
        evals.load_dataset(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(BadInput, match="no records"):
        evals.load_dataset(tmp_path / "empty.jsonl")


def test_stage3_export_records_load(tmp_path):
    # the shape stage3_retrieval.evaluate.export_records writes
    rows = [{"question": "How can an inner function rebind an outer variable?", "contexts": ["nonlocal ..."],
             "answer": "Use nonlocal.", "reference": "Declare it nonlocal.", "relevant": ["nonlocal"],
             "citations": ["python-reference:nonlocal#0"]},
            {"question": "How do I bake bread?", "contexts": [], "answer": "I can only answer about Python.",
             "reference": "", "relevant": [], "citations": []}]  # fmt: skip
    path = tmp_path / "stage3_records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = evals.load_dataset(path)
    assert [r["id"] for r in records] == ["record-1", "record-2"]
    assert records[0]["reference_contexts"] is None
    assert records[0]["meta"] == {"relevant": ["nonlocal"], "citations": ["python-reference:nonlocal#0"]}
    result = evals.evaluate_set(records)
    assert result["skipped"]["non_llm_context_recall"] == 2  # nothing to compare retrieval with
    assert result["skipped"]["semantic_similarity"] == 1  # the empty reference
    assert result["metrics"]["non_llm_string_similarity"] is not None
    # the default gate requires the context metrics, so it says plainly that it could not measure them
    failed = {f["metric"] for f in evals.gate(result, evals.load_thresholds())}
    assert {"non_llm_context_recall", "non_llm_context_precision_with_reference"} <= failed


def test_report_is_written_as_json(tmp_path):
    result = {"n": 1, "metrics": {"semantic_similarity": float("nan")}, "per_record": []}
    path = evals.write_report(result, tmp_path)
    assert path == tmp_path / "stage5_eval.json"
    assert json.loads(path.read_text())["metrics"]["semantic_similarity"] is None


# ------------------------------------------------------------------------------------------------
# The LLM-judge path, against a fake OpenAI-compatible server: it answers Ragas' faithfulness and
# relevancy prompts with well-formed JSON, except for records whose answer says GARBAGE, where it
# writes prose (as a 135M judge often does). Those must be counted as failures, not scores.


def _answer_for(prompt: str) -> str:
    if "GARBAGE" in prompt:
        return "Sure! The answer looks fine to me."
    given = prompt.rsplit("input: ", 1)[-1].rsplit("Output: ", 1)[0]
    if prompt.startswith("Given a question and an answer"):
        return json.dumps({"statements": [json.loads(given)["answer"]]})
    if prompt.startswith("Your task is to judge the faithfulness"):
        statements = json.loads(given)["statements"]
        return json.dumps(
            {"statements": [{"statement": s, "reason": "stated", "verdict": 1} for s in statements]}
        )
    if prompt.startswith("Generate a question for the given answer"):
        return json.dumps({"question": "What does a KV cache save during decoding?", "noncommittal": 0})
    return "I cannot do that."


class FakeJudge(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(
            {
                "object": "list",
                "data": [{"id": "fake-judge", "object": "model", "created": 0, "owned_by": "t"}],
            }
        )

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = _answer_for(body["messages"][-1]["content"])
        choices = [{"index": i, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                   for i in range(body.get("n") or 1)]  # fmt: skip
        self._send({"id": "c", "object": "chat.completion", "created": 0, "model": body["model"], "choices": choices,
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})  # fmt: skip


@pytest.fixture
def fake_judge():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_judge_failures_are_counted_not_scored(fake_judge):
    records = [KV, {**KV, "id": "garbage", "answer": "GARBAGE " + KV["answer"]}]
    result = evals.evaluate_set(records, judge_base_url=fake_judge, api_key="k", timeout=60)
    assert result["judge"] == {"base_url": fake_judge, "model": "fake-judge"}
    good, garbage = (r["scores"] for r in result["per_record"])
    assert good["faithfulness"] == pytest.approx(1.0)
    assert in_unit_interval(good["answer_relevancy"]) and good["answer_relevancy"] > 0.5
    assert garbage["faithfulness"] is None and garbage["answer_relevancy"] is None
    assert result["failed"]["faithfulness"] == 1 and result["failed"]["answer_relevancy"] == 1
    assert result["failure_reasons"]["faithfulness"] == {"unparseable judge output": 1}
    assert result["metrics"]["faithfulness"] == pytest.approx(1.0)  # the mean of the scores that exist
    thresholds = evals.load_thresholds()
    judged = set(evals.JUDGE_METRICS)
    assert not {f["metric"] for f in evals.gate(result, thresholds)} & judged  # reported, not gated
    thresholds["faithfulness"] = {"min": 0.5, "required": True, "max_failed_fraction": 0.25}
    failures = [f for f in evals.gate(result, thresholds) if f["metric"] in judged]
    assert [f["metric"] for f in failures] == ["faithfulness"] and "no score on 1 of 2" in failures[0][
        "reason"
    ]


def test_unreachable_judge_is_work_failed():
    with pytest.raises(WorkFailed, match="could not reach the judge"):
        evals.evaluate_set([KV], judge_base_url="http://127.0.0.1:9/v1")
