"""tune.py: choices made on dev, the threshold's tie rule, and where the result is written."""

from __future__ import annotations

import json

import pytest

from stage3_retrieval.evaluate import load_golden
from stage3_retrieval.hybrid import TUNED_PATH
from stage3_retrieval.tune import best_threshold, fusion_grid


def test_the_tie_rule_takes_the_median_of_the_best_thresholds():
    assert best_threshold({0.3: 0.8, 0.35: 0.9, 0.4: 0.9, 0.45: 0.9, 0.5: 0.7}) == 0.4
    assert best_threshold({0.3: 0.9, 0.35: 0.9, 0.4: 0.5}) == 0.3, "an even count: the lower middle one"
    assert best_threshold({0.2: 0.5, 0.25: 0.75}) == 0.25


def test_the_fusion_grid_reaches_past_the_old_edge():
    weights = [g["weights"][0] for g in fusion_grid() if g["method"] == "rrf"]
    assert min(weights) < 1 < 4 < max(weights), "4:1, the old winner, is inside the grid now"


@pytest.mark.exercise("stage3.rank_metrics", "stage3.rrf")
def test_tuning_writes_to_artifacts_and_installs_only_on_purpose(retriever, monkeypatch, tmp_path):
    from stage3_retrieval import tune

    rows = load_golden("dev")[:6]
    monkeypatch.setattr(tune, "load_golden", lambda split: rows)
    monkeypatch.setattr(
        tune, "routed_sources", lambda index, rows: {r["question"]: r["source"] for r in rows}
    )
    monkeypatch.setattr(
        tune, "tune_router", lambda index: {"router": {"threshold": 0.4, "dev_accuracy": 1.0}}
    )
    before = TUNED_PATH.read_bytes()
    tuned = tune.tune(retriever)
    assert TUNED_PATH.read_bytes() == before, "tuning never writes the package's data/ by itself"
    written = json.loads(tune.tuned_path().read_text())
    assert written["fusion"] == tuned["fusion"] and len(written["grid"]) == len(fusion_grid())
    assert written["questions"] == 6 and isinstance(written["route_filter"]["use"], bool)
    assert isinstance(written["fusion_at_grid_edge"], bool) and "rerank" in tune.summary(written)
    target = tmp_path / "tuned.json"
    monkeypatch.setattr(tune, "TUNED_PATH", target)
    assert tune.install() == target and json.loads(target.read_text()) == written
