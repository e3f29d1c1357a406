"""The evaluation commands: `eval` (gate the system), `calibrate` (check the metrics and the judge),
`regressions` (check the gate). Each prints a table for eyes, writes a report under reports/, and
keeps stdout for `--json`.

    python -m stage5_serving_ops eval                          # serve, run stage 3 through it, score, gate
    python -m stage5_serving_ops eval --regression bm25-only   # the same with a regression: it must fail
    python -m stage5_serving_ops eval --dataset FILE           # score records you already have
    python -m stage5_serving_ops calibrate                     # good vs bad set, judge agreement
    python -m stage5_serving_ops regressions                   # the gate table
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import BadInput, WorkFailed, console, print_json, progress, show, table
from stage5_serving_ops.ragas_metrics import short_name


def _thresholds(args: argparse.Namespace) -> dict[str, Any]:
    from stage5_serving_ops.gate import DEFAULT_THRESHOLDS, load_thresholds

    return load_thresholds(Path(args.thresholds) if args.thresholds else DEFAULT_THRESHOLDS)


def _judge(args: argparse.Namespace, base_url: str, served: str) -> Any:
    from stage5_serving_ops.judge import StructuredJudge, check_judge

    return StructuredJudge(base_url, check_judge(base_url, served, args.api_key), args.api_key)


def _show_result(result: dict[str, Any], thresholds: dict[str, Any], title: str) -> None:
    from stage5_serving_ops.gate import not_gated

    unjudged = not_gated(thresholds)
    rows = []
    for name, value in result["metrics"].items():
        spec = thresholds["metrics"].get(name, {})
        gate_cell = "not gated" if name in unjudged else str(spec.get("min", "-"))
        rows.append((short_name(name), "-" if value is None else f"{value:.3f}", gate_cell,
                     result["failed"].get(name, 0), result["skipped"].get(name, 0)))  # fmt: skip
    show(table(title, ["metric", "mean", "gate: at least", "failed to score", "skipped"], rows))
    for name, why in unjudged.items():
        if name in result["metrics"]:
            console.print(f"[dim]{name}: {why}[/dim]")


def _score_pipeline(
    args: argparse.Namespace, split: str, limit: int | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run stage 3 through a server (ours, or the one at --base-url), score its records; (result, source)."""
    from stage5_serving_ops.dataset import load_dataset
    from stage5_serving_ops.launch import running_server, server_config
    from stage5_serving_ops.pipeline import DEFAULT, SERVED_DTYPE, VARIANTS, export, prepare, records_path
    from stage5_serving_ops.provenance import served_provenance
    from stage5_serving_ops.ragas_metrics import evaluate_set
    from stage5_serving_ops.server import served_model

    variant = VARIANTS[args.regression] if args.regression else DEFAULT
    index = Path(args.index) if args.index else None
    model = args.model if args.base_url else prepare(variant, args.model, index)
    if args.base_url:
        context = nullcontext(None)
    else:  # served as the baseline was measured (regressions)
        context = running_server(replace(server_config(args, port=0, model=model), dtype=SERVED_DTYPE))
    with context as server:
        base_url = args.base_url or server.base_url
        served = args.served_name or (served_model(base_url, args.api_key) if args.base_url
                                      else server.config.served_name)  # fmt: skip
        out = Path(args.records) if args.records else records_path(variant)
        with progress(transient=True) as bar:
            bar.add_task(f"stage 3 answering {limit or 'all'} {split} questions through {base_url} ({variant.name})",
                         total=None)  # fmt: skip
            export(variant, out, base_url, served, args.api_key, split, limit, index)
        records = load_dataset(out)
        judge = _judge(args, base_url, served) if args.judge else None
        with progress(transient=True) as bar:
            bar.add_task(
                f"Ragas on {len(records)} records" + (" with the judge" if judge else ""), total=None
            )
            result = evaluate_set(records, judge)
        served_as = server.engine_dtype() if server else None
    return result, {"records": str(out), "variant": variant.name, "what": variant.what,
                    "model": served_provenance(model, args.base_url), "served_as": served_as}  # fmt: skip


def cmd_eval(args: argparse.Namespace) -> int:
    from stage5_serving_ops.dataset import load_dataset
    from stage5_serving_ops.gate import gate, load_baseline, write_report
    from stage5_serving_ops.ragas_metrics import evaluate_set

    thresholds = _thresholds(args)
    baseline = thresholds.get("baseline", {})
    split = args.split or baseline.get("split") or "test"
    limit = args.limit if args.limit is not None else (baseline.get("limit") or None)
    if limit is not None and limit < 1:
        raise BadInput(f"--limit must be at least 1, got {limit}")
    if args.dataset:
        if args.regression:
            raise BadInput("--regression runs the pipeline; it cannot be combined with --dataset")
        if args.judge and not args.base_url:
            raise BadInput("--judge with --dataset needs --base-url (the judge's server)")
        records = load_dataset(Path(args.dataset))
        judge = _judge(args, args.base_url, args.served_name) if args.judge else None
        with progress(transient=True) as bar:
            bar.add_task(f"Ragas on {len(records)} records", total=None)
            result = evaluate_set(records, judge)
        where: dict[str, Any] = {"records": args.dataset, "model": None}
    else:
        result, where = _score_pipeline(args, split, limit)
    failures = gate(
        result, thresholds, load_baseline(Path(args.baseline)) if args.baseline else load_baseline()
    )
    result["gate"] = {"passed": not failures, "failures": failures}
    result["source"] = where
    path = write_report(result, Path(args.out) if args.out else paths.reports_dir())
    if args.json:
        print_json(result)
    else:
        label = where["model"]["label"] if where.get("model") else where["records"]
        _show_result(result, thresholds, f"{result['n']} records: {label}")
        console.print(f"wrote {path}")
    if failures:
        worst = "; ".join(f"{f['metric']}: {f['reason']}" for f in failures)
        raise WorkFailed(f"evaluation gate failed: {worst}")
    if not args.json:
        console.print("evaluation gate passed")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from stage5_serving_ops.calibration import REPORT_NAME, calibrate, plot
    from stage5_serving_ops.gate import write_report
    from stage5_serving_ops.launch import running_server, server_config
    from stage5_serving_ops.provenance import served_provenance
    from stage5_serving_ops.server import served_model

    need_server = args.judge and not args.base_url
    context = running_server(server_config(args, port=0)) if need_server else nullcontext(None)
    with context as server:
        judge = None
        if args.judge:
            base_url = args.base_url or server.base_url
            served = args.served_name or (
                server.config.served_name if server else served_model(base_url, args.api_key)
            )
            judge = _judge(args, base_url, served)
        with progress(transient=True) as bar:
            bar.add_task("scoring the calibration set and its bad copy" + (" with the judge" if judge else ""),
                         total=None)  # fmt: skip
            report = calibrate(judge)
    if judge:
        report["judge"]["provenance"] = served_provenance(args.model, args.base_url)
    out = Path(args.out) if args.out else paths.reports_dir()
    path = write_report(report, out, REPORT_NAME)
    png = plot(report, out / REPORT_NAME.replace(".json", ".png"))
    if args.json:
        print_json({k: v for k, v in report.items() if k not in ("good", "bad")})
        return 0

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    show(table(f"calibration: {report['n_good']} good records against their bad copy",
               ["metric", "good mean (worst)", "bad mean (best)", "agreement", "failed to score"],
               [(short_name(r["metric"]), f"{cell(r['good_mean'])} ({cell(r['good_worst'])})",
                 f"{cell(r['bad_mean'])} ({cell(r['bad_best'])})", cell(r["agreement"]), r["failed"])
                for r in report["rows"]]))  # fmt: skip
    if judge:
        j = report["judge"]
        verdicts = ", ".join(f"{name} {cell(value)} ({'may gate' if j['may_gate'][name] else 'below the bar'})"
                             for name, value in j["agreement"].items())  # fmt: skip
        console.print(f"judge {j['provenance']['label']}: {j['calls']} calls, parse rate {j['parse_rate']:.0%}; "
                      f"agreement with the labels (bar {j['bar']:.2f}): {verdicts}")  # fmt: skip
    console.print(f"wrote {path} and {png}")
    return 0


def cmd_regressions(args: argparse.Namespace) -> int:
    from stage5_serving_ops.gate import DEFAULT_BASELINE, DEFAULT_THRESHOLDS, write_report
    from stage5_serving_ops.pipeline import VARIANTS, plot, summary_rows
    from stage5_serving_ops.regressions import REPORT_NAME, plan_for, run

    names = [n.strip() for n in args.variants.split(",") if n.strip()] if args.variants else None
    unknown = [n for n in names or [] if n not in VARIANTS]
    if unknown:
        raise BadInput(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    if args.limit is not None and args.limit < 1:
        raise BadInput(f"--limit must be at least 1, got {args.limit}")
    plan = plan_for(names, model=args.model, split=args.split, limit=args.limit, api_key=args.api_key,
                    kv_cache_gib=args.kv_cache_gib, judge=args.judge,
                    index=Path(args.index) if args.index else None)  # fmt: skip
    with progress(transient=True) as bar:
        task = bar.add_task("regressions", total=None)
        report = run(plan, Path(args.thresholds) if args.thresholds else DEFAULT_THRESHOLDS, args.write_thresholds,
                     on_step=lambda message: bar.update(task, description=message),
                     baseline_path=Path(args.baseline) if args.baseline else DEFAULT_BASELINE)  # fmt: skip
    out = Path(args.out) if args.out else paths.reports_dir()
    path = write_report(report, out, REPORT_NAME)
    png = plot(report, out / REPORT_NAME.replace(".json", ".png"))
    if args.json:
        print_json(report)
    else:
        metrics = report["metrics"]
        show(table(f"the gate on {report['n']} {report['split']} questions, {report['model']['label']} (x: below its threshold)",
                   ["variant", *(short_name(m) for m in metrics), "gate"], summary_rows(report["runs"], metrics)))  # fmt: skip
        for name, why in report["not_gated"].items():
            console.print(f"[dim]{name}: {why}[/dim]")
        console.print(f"wrote {path} and {png}")
    runs = report["runs"]
    wrong = [n for n, r in runs.items() if r["gate"]["passed"] != (r["expected"] == "pass")]
    if wrong and not args.json:
        console.print("[yellow]not as expected:[/] " + ", ".join(
            f"{n} {'passed' if runs[n]['gate']['passed'] else 'failed'}" for n in wrong))  # fmt: skip
    if wrong and args.check:
        raise WorkFailed(f"the gate did not separate the pipeline from its regressions ({', '.join(wrong)})")
    return 0
