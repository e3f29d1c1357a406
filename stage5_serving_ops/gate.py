"""The gate: an evaluation's averages turned into a yes or no, the way a failing test fails a build.

A unit test asks "is this output exactly right?". A language model's answer is rarely exactly
anything, so an evaluation asks "how close is it, on average, over a fixed set of questions?", and
a gate compares each average with a threshold: below it, the build fails.

Thresholds come from a measured baseline
----------------------------------------
A threshold picked from thin air ("0.8 sounds good") either never fires or always does. So: run the
system as shipped over the questions (pipeline.py: stage 3's RAG answering through this stage's
vLLM server), take each metric's mean as the baseline, and set the threshold below it by a margin:

    min = baseline - margin,   margin = MARGIN_SE standard errors of the baseline's mean

The standard error (the spread of per-record scores / sqrt(n)) is how much the mean would move if
the questions were drawn again, so a drop of more than two of them is a change of the system, not
of luck. Then check the gate on purpose-made regressions (a worse retrieval, a worse chunker, a
worse model, each made by a flag): a gate that passes them gates nothing, and the table of
baseline against regressions (`python -m stage5_serving_ops regressions`) is the gate's own test.
When the pipeline, the questions or a metric change, re-measure and move the thresholds in the same
commit (`regressions --write-thresholds` writes data/eval_thresholds.toml with the numbers).

A mean against a floor is a blunt test: the spread of scores across questions (some are hard for
every system) makes the standard error large, so only a big drop crosses it. The same questions
asked of two versions of the system allow a sharper one: the **paired difference**, per question,
new score - baseline score. Question difficulty cancels out, and the spread of the differences is
much smaller than the spread of the scores. So the baseline's per-question scores are kept too
(data/eval_baseline.json), and a metric also fails when, over the questions both runs scored, the
mean difference is below -PAIRED_Z standard errors of the differences and below -MIN_DROP (a drop
too small to matter is not a regression, however consistent). The README's gate table shows both
rules on the same runs.

An LLM-judged metric gates only when its judge has earned it: `calibrate` measures how often the
judge ranks a known-good answer above a known-bad one (calibration.py), and the metric is gated only
when that agreement is at least `judge_agreement_bar`. Below the bar it is reported, not gated,
and the report says why.

    thresholds = load_thresholds()                      # data/eval_thresholds.toml
    failures = gate(result, thresholds)                 # [] means the gate passes
"""

from __future__ import annotations

import json
import math
import os
import time
import tomllib
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import BadInput, one_line
from stage5_serving_ops.dataset import DATA_DIR
from stage5_serving_ops.ragas_metrics import ALL_METRICS, JUDGE_METRICS, NO_LLM_METRICS

DEFAULT_THRESHOLDS = DATA_DIR / "eval_thresholds.toml"
REPORT_NAME = "stage5_eval.json"
DEFAULT_BASELINE = DATA_DIR / "eval_baseline.json"
MARGIN_SE = 2.0  # the threshold sits this many standard errors below the baseline mean
PAIRED_Z = 2.0  # a paired drop fails beyond this many standard errors of the differences...
MIN_DROP = 0.02  # ...and when it is at least this large
MIN_PAIRS = 10  # fewer questions in common: no paired test (its standard error means little)
JUDGE_AGREEMENT_BAR = 0.8  # a judged metric gates only if the judge agrees with the labels this often


def _fraction(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise BadInput(f"{where} must be a number in [0, 1], got {value!r}")
    return float(value)


def load_thresholds(path: str | os.PathLike[str] = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """{"judge_agreement_bar": float, "metrics": {name: {"min", "required", "max_failed_fraction",
    "baseline", "judge_agreement"}}} from a TOML file of [metrics.<name>] tables (or the same as JSON)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except FileNotFoundError:
        raise BadInput(f"no thresholds file at {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:  # TOMLDecodeError and JSONDecodeError too
        raise BadInput(f"cannot read thresholds from {path}: {one_line(e)}") from None
    table = raw.get("metrics") if isinstance(raw, dict) else None
    if not isinstance(table, dict) or not table:
        raise BadInput(f"{path}: expected [metrics.<name>] tables")
    metrics = {}
    for name, spec in table.items():
        if name not in ALL_METRICS:
            raise BadInput(f"{path}: unknown metric {name!r} (known: {', '.join(ALL_METRICS)})")
        if not isinstance(spec, dict):
            raise BadInput(f"{path}: metrics.{name} must be a table")
        entry = {key: _fraction(spec.get(key), f"{path}: metrics.{name}.{key}")
                 for key in ("min", "max_failed_fraction", "baseline", "judge_agreement")}  # fmt: skip
        entry["required"] = spec.get("required", False)
        if not isinstance(entry["required"], bool):
            raise BadInput(f"{path}: metrics.{name}.required must be true or false")
        metrics[name] = entry
    bar = _fraction(raw.get("judge_agreement_bar", JUDGE_AGREEMENT_BAR), f"{path}: judge_agreement_bar")
    return {"judge_agreement_bar": bar, "metrics": metrics, "baseline": raw.get("baseline", {})}


def judge_may_gate(spec: dict[str, Any], bar: float) -> bool:
    agreement = spec.get("judge_agreement")
    return agreement is not None and agreement >= bar


def paired_difference(result: dict[str, Any], baseline: dict[str, Any], name: str) -> dict[str, Any] | None:
    """{"n", "mean", "standard_error"} of (score - baseline score) over the questions both scored, or None."""
    before = baseline.get("scores", {})
    diffs = [p["scores"][name] - before[p["id"]][name] for p in result.get("per_record", [])
             if p["scores"].get(name) is not None and before.get(p["id"], {}).get(name) is not None]  # fmt: skip
    if not diffs:
        return None
    return {"n": len(diffs), "mean": sum(diffs) / len(diffs), "standard_error": standard_error(diffs)}


def gate(
    result: dict[str, Any], thresholds: dict[str, Any], baseline: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The failures of the gate: [{"metric", "value", "threshold", "reason"}]; empty means it passes.

    A metric fails when its mean is below its `min`; when it is `required` and has no mean (not
    run, skipped on every record, or failed on every record); when more than `max_failed_fraction`
    of the records it applied to gave no score; or, given the `baseline`'s per-question scores,
    when its paired difference from them is a significant drop (see the module's essay). A judged
    metric whose judge agreement is below the bar is never a failure (see `not_gated`), nor is an
    optional metric that was not run.
    """
    failures = []
    bar = thresholds.get("judge_agreement_bar", JUDGE_AGREEMENT_BAR)
    for name, spec in thresholds["metrics"].items():
        if name in JUDGE_METRICS and not judge_may_gate(spec, bar):
            continue
        value = result["metrics"].get(name)
        if value is not None and not math.isfinite(value):
            value = None
        failed = result.get("failed", {}).get(name, 0)
        skipped = result.get("skipped", {}).get(name, 0)
        if value is None:
            if spec.get("required"):
                if name not in result["metrics"]:
                    why = "required but not run" + (" (needs a judge)" if name in JUDGE_METRICS else "")
                else:
                    why = f"required but no record got a score ({failed} failed, {skipped} skipped)"
                failures.append({"metric": name, "value": None, "threshold": spec.get("min"), "reason": why})
            continue
        if spec.get("min") is not None and value < spec["min"]:
            failures.append({"metric": name, "value": value, "threshold": spec["min"],
                             "reason": f"{value:.3f} is below the threshold {spec['min']}"})  # fmt: skip
        limit = spec.get("max_failed_fraction")
        applied = result["n"] - skipped
        if limit is not None and applied and failed / applied > limit:
            failures.append({"metric": name, "value": value, "threshold": spec.get("min"),
                             "reason": f"no score on {failed} of {applied} records (allowed: {limit:.0%})"})  # fmt: skip
        paired = paired_difference(result, baseline, name) if baseline else None
        if paired and paired["n"] >= MIN_PAIRS:
            drop, se = paired["mean"], paired["standard_error"]
            if drop < -PAIRED_Z * se and drop < -MIN_DROP:
                failures.append({"metric": name, "value": value, "threshold": spec.get("min"), "paired": paired,
                                 "reason": f"fell by {-drop:.3f} (paired standard error {se:.3f}) on the "
                                           f"{paired['n']} questions the baseline also scored"})  # fmt: skip
    return failures


def load_baseline(path: str | os.PathLike[str] = DEFAULT_BASELINE) -> dict[str, Any] | None:
    """The baseline's per-question scores ({"scores": {id: {metric: score}}, ...}); None if there are none."""
    try:
        baseline = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read the baseline scores {path}: {one_line(e)}") from None
    if not isinstance(baseline, dict) or not isinstance(baseline.get("scores"), dict):
        raise BadInput(f'{path}: expected {{"scores": {{id: {{metric: score}}}}}}')
    return baseline


def write_baseline(result: dict[str, Any], info: dict[str, Any], path: Path = DEFAULT_BASELINE) -> Path:
    scores = {
        p["id"]: {m: round(v, 6) for m, v in p["scores"].items() if v is not None}
        for p in result["per_record"]
    }
    return paths.atomic_write_text(
        path, json.dumps({**info, "scores": scores}, indent=1, sort_keys=True) + "\n"
    )


def not_gated(thresholds: dict[str, Any]) -> dict[str, str]:
    """Metric -> why it is reported but not gated (judged metrics whose judge is below the bar)."""
    bar = thresholds.get("judge_agreement_bar", JUDGE_AGREEMENT_BAR)
    reasons = {}
    for name in JUDGE_METRICS:
        spec = thresholds["metrics"].get(name, {})
        agreement = spec.get("judge_agreement")
        if not judge_may_gate(spec, bar):
            measured = "not measured" if agreement is None else f"{agreement:.2f}"
            reasons[name] = f"judge agreement {measured} is below the bar {bar:.2f} (`calibrate` measures it)"
    return reasons


# ------------------------------------------------------------------------------------------------
# Thresholds from a baseline


def standard_error(values: list[float]) -> float:
    """The standard error of the mean: sample standard deviation / sqrt(n) (0 for fewer than 2 values)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(variance / n)


def thresholds_from_baseline(result: dict[str, Any], agreement: dict[str, float | None] | None = None,
                             margin_se: float = MARGIN_SE) -> dict[str, dict[str, Any]]:  # fmt: skip
    """[metrics.<name>] entries from a baseline evaluation: min = mean - margin_se standard errors,
    rounded down to 0.01. Judged metrics also carry the judge's measured agreement."""
    entries = {}
    for name in (*NO_LLM_METRICS, *JUDGE_METRICS):
        values = [p["scores"][name] for p in result["per_record"] if p["scores"].get(name) is not None]
        entry: dict[str, Any] = {"required": name in NO_LLM_METRICS}
        if values:
            mean, se = sum(values) / len(values), standard_error(values)
            entry.update(baseline=round(mean, 4), standard_error=round(se, 4), n=len(values),
                         min=max(0.0, math.floor((mean - margin_se * se) * 100) / 100))  # fmt: skip
        if name in JUDGE_METRICS:
            entry["max_failed_fraction"] = 0.1
            entry["judge_agreement"] = (agreement or {}).get(name)
        entries[name] = entry
    return entries


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string


def write_thresholds(entries: dict[str, dict[str, Any]], baseline: dict[str, Any], path: Path = DEFAULT_THRESHOLDS,
                     bar: float = JUDGE_AGREEMENT_BAR) -> Path:  # fmt: skip
    """data/eval_thresholds.toml, with what was measured, when and on what, in the file itself."""
    lines = [
        "# The evaluation gate of `python -m stage5_serving_ops eval` (see stage5_serving_ops/gate.py).",
        f"# Written by `python -m stage5_serving_ops regressions --write-thresholds` on {time.strftime('%Y-%m-%d')}:",
        f"# min = the baseline mean - {MARGIN_SE:g} standard errors, rounded down to 0.01; a judged metric",
        "# gates only when its judge_agreement (measured by `calibrate`) is at least judge_agreement_bar.",
        "# Re-measure and commit this file whenever the pipeline, the questions or a metric change.",
        "",
        f"judge_agreement_bar = {bar!r}",
        "",
        "[baseline]",
        *(f"{key} = {_toml_value(value)}" for key, value in baseline.items()),
    ]
    for name, entry in entries.items():
        lines += ["", f"[metrics.{name}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in entry.items() if value is not None]
    return paths.atomic_write_text(path, "\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------
# Reports


def finite(value: Any) -> Any:
    """NaN and infinities (not valid JSON) become null, at any depth."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def write_report(result: dict[str, Any], out_dir: str | os.PathLike[str] | None = None,
                 name: str = REPORT_NAME) -> Path:  # fmt: skip
    """Write `result` to <out_dir or reports/>/<name> atomically, NaN as null."""
    out = Path(out_dir) if out_dir is not None else paths.reports_dir()
    text = json.dumps(finite(result), indent=2, ensure_ascii=False, allow_nan=False, default=str) + "\n"
    return paths.atomic_write_text(out / name, text)
