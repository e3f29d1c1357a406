"""pipeline.py and `eval`: the gate grades the system's own answers. Stage 3's RAG answers real golden
questions through the session's vLLM server, its export is scored, and the gate gives a verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.console import WorkFailed
from stage5_serving_ops import pipeline
from stage5_serving_ops.ragas_metrics import NO_LLM_METRICS

from .conftest import API_KEY


def test_each_regression_is_a_flag_and_no_command_line_holds_a_key(tmp_path):
    out = tmp_path / "r.jsonl"
    url = "http://127.0.0.1:8000/v1"
    default = pipeline.export_command(pipeline.DEFAULT, out, url, "m", limit=3)
    assert default[1:3] == ["-m", "stage3_retrieval"] and "--index" not in default
    assert default[default.index("export-eval") :][:4] == ["export-eval", str(out), "--split", "test"]
    bm25 = pipeline.export_command(pipeline.VARIANTS["bm25-only"], out, url, "m")
    assert bm25[-2:] == ["--mode", "bm25"] and "--limit" not in bm25, "the whole split by default"
    assert pipeline.export_command(pipeline.VARIANTS["reflection-off"], out, url, "m")[-2:] == [
        "--max-rounds",
        "1",
    ]
    fixed = pipeline.export_command(pipeline.VARIANTS["fixed-chunks"], out, url, "m", index=tmp_path)
    assert Path(fixed[fixed.index("--index") + 1]).name == "stage3-index-fixed"
    assert (
        pipeline.rounded_model_dir("smollm2-135m-instruct", "nf4").name == "smollm2-135m-instruct-nf4-rounded"
    )
    assert all("--api-key" not in c for c in (default, bm25, fixed))


@pytest.mark.server
def test_the_gate_runs_on_records_stage3_exported_through_the_server(vllm_server, stage3_index, tmp_path):
    from stage5_serving_ops.cli import main

    records = tmp_path / "records.jsonl"
    argv = ["eval", "--base-url", vllm_server.base_url, "--api-key", API_KEY, "--limit", "3",
            "--index", str(stage3_index), "--records", str(records), "--out", str(tmp_path), "--json"]  # fmt: skip
    try:
        code = main(argv)
    except WorkFailed as e:  # three questions may fall below thresholds measured on thirty
        assert "evaluation gate failed" in str(e)
        code = 1
    exported = [json.loads(line) for line in records.read_text().splitlines()]
    assert [r["id"] for r in exported] == ["g002", "g004", "g005"], "the test split's first questions"
    for record in exported:  # stage 3's contract
        assert record["question"] and record["answer"] and record["contexts"] and record["reference_contexts"]
    report = json.loads((tmp_path / "stage5_eval.json").read_text())
    assert report["n"] == 3 and report["source"]["variant"] == "default"
    for per_record in report["per_record"]:
        assert all(per_record["scores"][m] is not None for m in NO_LLM_METRICS), per_record
    assert sum(report["failed"].values()) == 0 and sum(report["skipped"].values()) == 0
    assert report["gate"]["passed"] == (code == 0) == (not report["gate"]["failures"])
