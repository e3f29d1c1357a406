"""Phoenix, running: a real traced RAG request (retrieval, LLM, tool) read back through Phoenix's API.

Runs where Phoenix's own venv exists (`make phoenix-venv`; `make test` installs it, so CI runs this).
"""

from __future__ import annotations

import json

import pytest

from stage5_serving_ops.phoenix import PhoenixServer, phoenix_executable, traced_rag_request
from stage5_serving_ops.tracing import Tracing

pytestmark = [
    pytest.mark.server,
    pytest.mark.slow,
    pytest.mark.skipif(
        phoenix_executable() is None, reason="Phoenix's venv is missing: run `make phoenix-venv`"
    ),
]


def test_a_traced_rag_request_lands_in_phoenix_with_its_attributes(chat_model, tmp_path):
    with PhoenixServer() as phoenix:
        tracing = Tracing(
            path=tmp_path / "traces.jsonl", otlp_endpoint=phoenix.otlp_endpoint, service="phoenix-test"
        )
        answer = traced_rag_request(tracing, chat_model)
        tracing.shutdown()  # flushes the OTLP batch
        spans = {s["name"]: s for s in phoenix.spans("phoenix-test", at_least=4)}
        assert phoenix.project_id("phoenix-test") is not None, "the spans' resource named the project"
    assert set(spans) == {"rag", "retrieve", "chat", "calculator"}
    assert {n: s["span_kind"] for n, s in spans.items()} == {"rag": "CHAIN", "retrieve": "RETRIEVER", "chat": "LLM",
                                                             "calculator": "TOOL"}  # fmt: skip
    root = spans["rag"]["context"]["span_id"]
    assert all(spans[n]["parent_id"] == root for n in ("retrieve", "chat", "calculator")), "one tree"
    assert len({s["context"]["trace_id"] for s in spans.values()}) == 1
    chat, retrieve, tool = (
        spans["chat"]["attributes"],
        spans["retrieve"]["attributes"],
        spans["calculator"]["attributes"],
    )
    flat = json.dumps([chat, retrieve, tool])
    assert chat["llm.model_name"] == chat_model.name and chat["llm.token_count.completion"] > 0, flat
    assert answer.startswith(chat["output.value"]) and chat["llm.token_count.prompt"] > 20
    assert retrieve["retrieval.documents.0.document.id"] == "block-size", flat
    assert tool["tool.name"] == "calculator" and tool["output.value"] == "2048", flat
