"""dataset.py: records read strictly (each problem named by file and line), stage 3's export loads as
it is, and the bad copy is wrong on every record."""

from __future__ import annotations

import json
import re

import pytest

from shared.console import BadInput
from stage5_serving_ops import dataset

KV = dataset.load_dataset()[0]  # the KV-cache record of the calibration set


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "q", "contexts": ["c"], "answer": "a"', "line 2: not valid JSON"),
        ('{"question": "q", "contexts": ["c"], "answer": "a"}', "line 2: missing field 'reference'"),
        ('{"question": "q", "contexts": "c", "answer": "a", "reference": "r"}', "line 2: 'contexts' must be a list"),
        ('["q", "c"]', "line 2: expected a JSON object"),
        ('{"id": "kv-cache", "question": "q", "contexts": [], "answer": "a", "reference": "r"}', "already used on line 1"),
    ],
)  # fmt: skip
def test_a_malformed_line_is_named(tmp_path, line, message):
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps(KV) + "\n" + line + "\n")
    with pytest.raises(BadInput, match=re.escape(message)):
        dataset.load_dataset(path)


def test_missing_or_empty_dataset_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="no eval dataset"):
        dataset.load_dataset(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(BadInput, match="no records"):
        dataset.load_dataset(tmp_path / "empty.jsonl")


def test_stage3_export_records_load_with_their_extras_under_meta(tmp_path):
    # the contract of `python -m stage3_retrieval export-eval`
    rows = [{"id": "g002", "question": "How can an inner function rebind an outer variable?",
             "contexts": ["nonlocal ..."], "answer": "Use nonlocal.", "reference": "Declare it nonlocal.",
             "reference_contexts": ["The nonlocal statement ..."], "relevant": ["nonlocal"],
             "citations": ["python-reference:nonlocal#0"]},
            {"question": "How do I bake bread?", "contexts": [], "answer": "I can only answer about Python.",
             "reference": "", "relevant": [], "citations": []}]  # fmt: skip
    path = dataset.write_dataset(rows, tmp_path / "records.jsonl")
    first, second = dataset.load_dataset(path)
    assert (first["id"], second["id"]) == ("g002", "record-2")
    assert (
        first["reference_contexts"] == ["The nonlocal statement ..."] and second["reference_contexts"] is None
    )
    assert first["meta"] == {"relevant": ["nonlocal"], "citations": ["python-reference:nonlocal#0"]}
    ragas_names = {"user_input": "q", "retrieved_contexts": ["c"], "response": "a", "ground_truth": "r"}
    assert dataset.normalize_record(ragas_names, "x", 0)["answer"] == "a"


def test_the_bad_copy_is_wrong_everywhere():
    good = dataset.load_dataset()
    bad = dataset.bad_copy(good)
    assert len(bad) == len(good) >= 12
    for g, b in zip(good, bad, strict=True):
        assert b["question"] == g["question"] and b["reference"] == g["reference"]
        assert b["answer"] != g["answer"] and b["contexts"] != g["contexts"]
    with pytest.raises(BadInput):
        dataset.bad_copy(good[:2])
