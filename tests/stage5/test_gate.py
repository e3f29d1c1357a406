"""gate.py and calibration.py offline: the gate's rules, thresholds from a baseline (and back through
the TOML file), judged metrics gated only by a judge that earned it, and every no-LLM metric separating
the calibration set from its bad copy."""

from __future__ import annotations

import json
import math

import pytest

from shared.console import BadInput
from stage5_serving_ops import calibration, gate
from stage5_serving_ops.ragas_metrics import JUDGE_METRICS, NO_LLM_METRICS


def thresholds(metrics: dict, bar: float = 0.8) -> dict:
    return {"judge_agreement_bar": bar, "metrics": metrics, "baseline": {}}


def test_gate_rules():
    result = {"n": 4, "metrics": {"semantic_similarity": 0.9, "faithfulness": 0.95, "non_llm_context_recall": None},
              "failed": {"faithfulness": 3, "non_llm_context_recall": 0},
              "skipped": {"faithfulness": 0, "non_llm_context_recall": 4}}  # fmt: skip
    rules = {
        "semantic_similarity": {"min": 0.8, "required": True},
        "non_llm_context_recall": {"min": 0.8, "required": True},
        "faithfulness": {"min": 0.5, "required": False, "max_failed_fraction": 0.5, "judge_agreement": 0.9},
        "answer_relevancy": {"min": 0.5, "required": False, "judge_agreement": 0.9},  # not run: no failure
    }
    failures = {f["metric"]: f for f in gate.gate(result, thresholds(rules))}
    assert set(failures) == {"non_llm_context_recall", "faithfulness"}
    assert "4 skipped" in failures["non_llm_context_recall"]["reason"]
    assert "3 of 4" in failures["faithfulness"]["reason"]
    result["metrics"]["semantic_similarity"] = 0.7
    assert "semantic_similarity" in {f["metric"] for f in gate.gate(result, thresholds(rules))}


def test_a_judged_metric_gates_only_above_the_agreement_bar():
    result = {"n": 2, "metrics": {"faithfulness": 0.1}, "failed": {}, "skipped": {}}
    rules = {"faithfulness": {"min": 0.5, "required": True, "judge_agreement": 0.55}}
    assert gate.gate(result, thresholds(rules)) == [], "a coin-flip judge fails nobody"
    assert "0.55 is below the bar 0.80" in gate.not_gated(thresholds(rules))["faithfulness"]
    assert "not measured" in gate.not_gated(thresholds({}))["faithfulness"]
    rules["faithfulness"]["judge_agreement"] = 0.85
    assert [f["metric"] for f in gate.gate(result, thresholds(rules))] == ["faithfulness"]
    assert "faithfulness" not in gate.not_gated(thresholds(rules))


def test_a_consistent_drop_fails_the_paired_test_while_the_mean_clears_its_floor(tmp_path):
    """20 questions, half hard (0.2) and half easy (0.8): each loses 0.05. The mean (0.45) stays above a
    floor two standard errors below the baseline's, but on the same questions the drop is certain."""
    base = {f"q{i}": 0.2 if i % 2 else 0.8 for i in range(20)}

    def run(scores: dict) -> dict:
        return {"n": len(scores), "metrics": {"semantic_similarity": sum(scores.values()) / len(scores)},
                "per_record": [{"id": q, "scores": {"semantic_similarity": v}} for q, v in scores.items()],
                "failed": {}, "skipped": {}}  # fmt: skip

    entries = gate.thresholds_from_baseline(run(base))
    rules = thresholds(
        {"semantic_similarity": {"min": entries["semantic_similarity"]["min"], "required": True}}
    )
    path = gate.write_baseline(run(base), {"split": "test"}, tmp_path / "baseline.json")
    baseline = gate.load_baseline(path)
    worse = run({q: v - 0.05 for q, v in base.items()})
    assert gate.gate(worse, rules) == [], "the floor alone lets it through"
    (failure,) = gate.gate(worse, rules, baseline)
    assert "fell by 0.050" in failure["reason"] and failure["paired"]["n"] == 20
    noisy = run({q: v + (0.05 if i % 4 < 2 else -0.05) for i, (q, v) in enumerate(base.items())})
    assert gate.gate(noisy, rules, baseline) == [], "ups and downs that cancel are no regression"
    tiny = run({q: v - 0.01 for q, v in base.items()})
    assert gate.gate(tiny, rules, baseline) == [], (
        f"a drop under MIN_DROP ({gate.MIN_DROP}) is not a regression"
    )
    few = run({q: v - 0.05 for q, v in list(base.items())[: gate.MIN_PAIRS - 1]})
    assert gate.gate(few, rules, baseline) == [], "too few questions in common for a paired test"
    assert gate.load_baseline(tmp_path / "none.json") is None


def test_thresholds_from_a_baseline_sit_two_standard_errors_below_it(tmp_path):
    values = [0.2, 0.4, 0.6, 0.8]  # mean 0.5, sample sd 0.258, se 0.129
    result = {"per_record": [{"scores": {"semantic_similarity": v, "faithfulness": None}} for v in values]}
    entries = gate.thresholds_from_baseline(result, {"faithfulness": 0.6})
    se = math.sqrt(sum((v - 0.5) ** 2 for v in values) / 3 / 4)
    assert entries["semantic_similarity"]["standard_error"] == pytest.approx(se, abs=1e-4)
    assert entries["semantic_similarity"]["min"] == math.floor((0.5 - 2 * se) * 100) / 100 == 0.24
    assert entries["semantic_similarity"]["required"] and "min" not in entries["faithfulness"]
    path = gate.write_thresholds(entries, {"split": "test", "limit": 4, "records": 4}, tmp_path / "t.toml")
    loaded = gate.load_thresholds(path)
    assert loaded["metrics"]["semantic_similarity"]["min"] == 0.24 and loaded["baseline"]["records"] == 4
    assert (
        loaded["metrics"]["faithfulness"]["judge_agreement"] == 0.6 and loaded["judge_agreement_bar"] == 0.8
    )


def test_the_shipped_thresholds_are_valid_and_bad_ones_are_named(tmp_path):
    shipped = gate.load_thresholds()
    assert {n for n, t in shipped["metrics"].items() if t["required"]} == set(NO_LLM_METRICS)
    assert all(shipped["metrics"][n]["min"] is not None for n in NO_LLM_METRICS), "every no-LLM metric gates"
    assert shipped["baseline"]["records"] >= 50, "thresholds measured on the pipeline's own answers"
    baseline = gate.load_baseline()
    assert len(baseline["scores"]) == shipped["baseline"]["records"], "per-question scores of the same run"
    bad = tmp_path / "t.toml"
    bad.write_text("[metrics.semantic_similarity]\nmin = 1.5\n")
    with pytest.raises(BadInput, match="semantic_similarity.min"):
        gate.load_thresholds(bad)
    bad.write_text("[metrics.bleu]\nmin = 0.5\n")
    with pytest.raises(BadInput, match="unknown metric 'bleu'"):
        gate.load_thresholds(bad)
    with pytest.raises(BadInput, match="no thresholds file"):
        gate.load_thresholds(tmp_path / "none.toml")


def test_report_is_written_as_json_with_nan_as_null(tmp_path):
    path = gate.write_report({"n": 1, "metrics": {"semantic_similarity": float("nan")}}, tmp_path)
    assert path == tmp_path / "stage5_eval.json"
    assert json.loads(path.read_text())["metrics"]["semantic_similarity"] is None


def test_agreement_is_the_share_of_good_bad_pairs_in_order():
    assert calibration.agreement([0.9, 0.8], [0.1, 0.8]) == pytest.approx(0.875)
    assert calibration.agreement([0.5], [0.5]) == 0.5 and calibration.agreement([0.1], [0.9]) == 0.0
    assert calibration.agreement([], [0.2]) is None


def test_every_no_llm_metric_separates_the_calibration_set_from_its_bad_copy(tmp_path):
    report = calibration.calibrate()
    rows = {r["metric"]: r for r in report["rows"]}
    assert set(rows) == set(NO_LLM_METRICS) and report["judge"] is None
    for name, row in rows.items():
        assert row["agreement"] >= 0.9, name
        assert row["good_mean"] > row["bad_mean"] + 0.4, name
        assert row["failed"] == 0
    assert not set(JUDGE_METRICS) & set(rows)
    png = calibration.plot(report, tmp_path / "c.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
