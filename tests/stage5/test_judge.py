"""judge.py: Ragas' schemas bounded and self-contained; a judge's bad replies counted by reason (against
a fake server that ignores the schema, as a server without structured outputs would); and the real
vLLM judge, whose replies under the schema parse every time."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.console import WorkFailed
from stage5_serving_ops import calibration, dataset, ragas_metrics
from stage5_serving_ops.judge import MAX_CHARS, MAX_ITEMS, StructuredJudge, bounded_schema, check_judge

from .conftest import API_KEY

KV = dataset.load_dataset()[0]


def test_ragas_schemas_are_bounded_and_self_contained():
    from ragas.metrics.collections.answer_relevancy.util import AnswerRelevanceOutput
    from ragas.metrics.collections.faithfulness.util import NLIStatementOutput, StatementGeneratorOutput

    statements = bounded_schema(StatementGeneratorOutput)["properties"]["statements"]
    assert statements["maxItems"] == MAX_ITEMS and statements["minItems"] == 1
    assert statements["items"]["maxLength"] == MAX_CHARS
    nli = bounded_schema(NLIStatementOutput)
    assert "$defs" not in json.dumps(nli) and "$ref" not in json.dumps(nli), "no references left to resolve"
    verdict = nli["properties"]["statements"]["items"]["properties"]["verdict"]
    assert verdict["enum"] == [0, 1] and nli["additionalProperties"] is False
    assert bounded_schema(AnswerRelevanceOutput)["properties"]["noncommittal"]["enum"] == [0, 1]


def _reply(prompt: str, schema_name: str) -> tuple[str, str]:
    """A fake judge: well-formed JSON, except prose for GARBAGE answers and a cut-off reply for LONG ones."""
    if "GARBAGE" in prompt:
        return "Sure! The answer looks fine to me.", "stop"
    if "LONG" in prompt:
        return '{"statements": ["The KV cache', "length"
    if schema_name == "StatementGeneratorOutput":
        return json.dumps({"statements": ["It stores keys and values."]}), "stop"
    if schema_name == "NLIStatementOutput":
        return json.dumps(
            {"statements": [{"statement": "It stores keys.", "reason": "stated", "verdict": 1}]}
        ), "stop"
    return json.dumps({"question": "What does a KV cache save during decoding?", "noncommittal": 0}), "stop"


class FakeJudge(BaseHTTPRequestHandler):
    formats: list = []

    def log_message(self, *args: object) -> None:
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
        FakeJudge.formats.append(body.get("response_format"))
        content, finish = _reply(
            body["messages"][-1]["content"], body["response_format"]["json_schema"]["name"]
        )
        self._send({"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": finish}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}})  # fmt: skip


@pytest.fixture
def fake_judge():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_judge_failures_are_counted_by_reason_not_scored(fake_judge):
    records = [KV, {**KV, "id": "garbage", "answer": "GARBAGE " + KV["answer"]},
               {**KV, "id": "long", "answer": "LONG " + KV["answer"]}]  # fmt: skip
    judge = StructuredJudge(fake_judge, check_judge(fake_judge, None, "k"), "k")
    result = ragas_metrics.evaluate_set(records, judge, timeout=60)
    good, garbage, long = (r["scores"] for r in result["per_record"])
    assert good["faithfulness"] == pytest.approx(1.0) and good["answer_relevancy"] > 0.5
    assert garbage["faithfulness"] is None and long["faithfulness"] is None
    assert result["failure_reasons"]["faithfulness"] == {
        "the judge's reply does not fit the schema": 1, "the judge's reply was cut off at 640 tokens": 1}  # fmt: skip
    assert result["metrics"]["faithfulness"] == pytest.approx(1.0), "the mean of the scores that exist"
    stats = result["judge"]["stats"]
    assert stats["calls"] == stats["replies"] == stats["parsed"] + sum(stats["failures"].values())
    assert stats["parse_rate"] == stats["parsed"] / stats["replies"] < 1
    assert all(f["type"] == "json_schema" and f["json_schema"]["schema"] for f in FakeJudge.formats)


def test_an_unreachable_or_wrong_judge_is_work_failed(fake_judge):
    with pytest.raises(WorkFailed, match="could not reach the judge"):
        check_judge("http://127.0.0.1:9/v1", None, None)
    with pytest.raises(WorkFailed, match="does not serve 'gpt-4'"):
        check_judge(fake_judge, "gpt-4", None)


@pytest.mark.server
def test_the_served_judge_parses_every_reply_under_the_schema(vllm_server):
    judge = StructuredJudge(vllm_server.base_url, vllm_server.config.served_name, API_KEY)
    report = calibration.calibrate(judge, records=dataset.load_dataset()[:3])
    stats = report["judge"]
    assert stats["calls"] >= 8 and stats["parse_rate"] == 1.0 and stats["failures"] == {}
    for name in ("faithfulness", "answer_relevancy"):
        assert stats["agreement"][name] is not None, "every judged record got a score"
        assert isinstance(stats["may_gate"][name], bool)
