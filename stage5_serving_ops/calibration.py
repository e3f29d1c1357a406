"""Calibration: does each metric, and the judge, tell a good answer from a bad one?

Before a metric may fail a build it has to show that it can separate what people call good from
what they call bad. The calibration set (data/calibration_set.jsonl) holds 17 hand-checked records
with good answers and the right contexts; `dataset.bad_copy` makes the same 17 wrong (another
topic's answer, the neighbour's contexts). Labels: good = 1, bad = 0. For each metric:

    agreement   the share of (good, bad) pairs in which the good record scores higher, ties
                counting half: the area under the ROC curve. 1.0 separates perfectly; 0.5 is a
                coin (the metric says nothing about quality); below 0.5 it prefers the bad answers.

Agreement needs no threshold, so it measures the metric itself rather than one cut-off. For the
LLM-judged metrics it is the judge's agreement with the labels, and the gate lets a judged metric
gate only at JUDGE_AGREEMENT_BAR or above (gate.py). Reported beside it: the judge's *parse rate*
(replies that were valid instances of the schema; structured outputs make this 1.0 by construction)
and the tokens it spent. A judge can parse every time and still agree no better than chance: the
two numbers answer different questions.

    python -m stage5_serving_ops calibrate             # starts vLLM as the judge -> reports/stage5_calibration.json
    python -m stage5_serving_ops calibrate --no-judge  # the no-LLM metrics only (seconds)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from stage5_serving_ops.dataset import CALIBRATION_SET, bad_copy, load_dataset
from stage5_serving_ops.gate import JUDGE_AGREEMENT_BAR
from stage5_serving_ops.ragas_metrics import JUDGE_METRICS, evaluate_set, short_name

REPORT_NAME = "stage5_calibration.json"


def agreement(good: Sequence[float], bad: Sequence[float]) -> float | None:
    """P(a good record outscores a bad one), ties half (ROC AUC); None without scores on both sides.

    Example: agreement([0.9, 0.8], [0.1, 0.8]) -> (1 + 1 + 1 + 0.5) / 4 = 0.875
    """
    if not good or not bad:
        return None
    wins = sum(1.0 if g > b else 0.5 if g == b else 0.0 for g in good for b in bad)
    return wins / (len(good) * len(bad))


def _scores(result: dict[str, Any], name: str) -> list[float]:
    return [p["scores"][name] for p in result["per_record"] if p["scores"].get(name) is not None]


def separation(good: dict[str, Any], bad: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per metric: good mean and worst, bad mean and best, agreement, failures on each side."""
    rows = []
    for name in good["metrics"]:
        g, b = _scores(good, name), _scores(bad, name)
        rows.append({"metric": name, "good_mean": good["metrics"][name], "good_worst": min(g, default=None),
                     "bad_mean": bad["metrics"][name], "bad_best": max(b, default=None),
                     "agreement": agreement(g, b), "scored": len(g) + len(b),
                     "failed": good["failed"][name] + bad["failed"][name]})  # fmt: skip
    return rows


def calibrate(judge: Any = None, records: Sequence[dict[str, Any]] | None = None, *, encoder: Any = None,
              on_done: Callable[[], None] | None = None, bar: float = JUDGE_AGREEMENT_BAR) -> dict[str, Any]:  # fmt: skip
    """Score the calibration set and its bad copy; the separation table and, with a judge, its agreement."""
    good_records = list(records) if records is not None else load_dataset(CALIBRATION_SET)
    good = evaluate_set(good_records, judge, encoder=encoder, on_done=on_done)
    bad = evaluate_set(bad_copy(good_records), judge, encoder=encoder, on_done=on_done)
    rows = separation(good, bad)
    report: dict[str, Any] = {"n_good": good["n"], "n_bad": bad["n"], "rows": rows, "judge": None,
                              "good": good, "bad": bad}  # fmt: skip
    if judge is not None:
        stats = judge.stats.to_dict()
        by_metric = {r["metric"]: r for r in rows}
        report["judge"] = {
            "base_url": judge.base_url, "model": judge.model, **stats, "bar": bar,
            "agreement": {name: by_metric[name]["agreement"] for name in JUDGE_METRICS},
            "may_gate": {name: (by_metric[name]["agreement"] or 0.0) >= bar for name in JUDGE_METRICS},
        }  # fmt: skip
    return report


def plot(report: dict[str, Any], path: Any) -> Any:
    """Good against bad means per metric, with each metric's agreement written above its pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shared import paths

    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(rows)), 4))
    xs = range(len(rows))
    good = [r["good_mean"] or 0 for r in rows]
    bad = [r["bad_mean"] or 0 for r in rows]
    ax.bar([x - 0.2 for x in xs], good, 0.4, label=f"good ({report['n_good']} records)", color="#55a868")
    ax.bar([x + 0.2 for x in xs], bad, 0.4, label=f"bad copy ({report['n_bad']})", color="#c44e52")
    for x, r in zip(xs, rows, strict=True):
        text = "-" if r["agreement"] is None else f"AUC {r['agreement']:.2f}"
        ax.text(x, max(good[x], bad[x]) + 0.03, text, ha="center", fontsize=8)
    ax.set_xticks(list(xs), [short_name(r["metric"]) for r in rows],
                  rotation=15, fontsize=8)  # fmt: skip
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("mean score")
    ax.legend(fontsize=8, loc="upper right")
    title = "calibration: does each metric separate good answers from bad ones?"
    if report.get("judge"):
        judge = report["judge"]
        source = judge.get("provenance", {}).get("source", "")
        title += f"\njudge {judge['model']} ({source}): parse rate {judge['parse_rate']:.0%}"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    paths.atomic_savefig(fig, path, dpi=110)
    return path
