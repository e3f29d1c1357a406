"""Stage 5's commands: serve, bench, quantize, cost, traces, eval, demo.

python -m stage5_serving_ops serve                                   # vLLM on 127.0.0.1:8000, Ctrl-C stops it
python -m stage5_serving_ops bench --base-url http://127.0.0.1:8000/v1 --concurrency 1,4,8
python -m stage5_serving_ops bench                                   # starts and stops its own server
python -m stage5_serving_ops quantize                                # fp32 / bf16 / int8 / nf4 / fp4 trade-off
python -m stage5_serving_ops cost                                    # prices and spend per route and model
python -m stage5_serving_ops traces --last 2
python -m stage5_serving_ops eval                                    # Ragas metrics + thresholds gate
python -m stage5_serving_ops demo                                    # serve, load, cost, trace, eval, stop
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from shared.console import BadInput, WorkFailed, console, print_json, progress, run_cli, show, table
from shared.models import DEFAULT_CHAT_MODEL


def server_config(args: argparse.Namespace, port: int | None = None) -> Any:
    from stage5_serving_ops.server import ServerConfig

    return ServerConfig(model=args.model, host=getattr(args, "host", "127.0.0.1"),
                        port=args.port if port is None else port, api_key=args.api_key,
                        lora=getattr(args, "lora", None), kv_cache_gib=args.kv_cache_gib)  # fmt: skip


def start_server(config: Any) -> Any:
    from stage5_serving_ops.server import VLLMServer

    server = VLLMServer(config)
    with progress(transient=True) as bar:
        task = bar.add_task(f"starting vLLM with {config.model} (log: {config.log_file})", total=None)
        server.start(on_wait=lambda elapsed: bar.update(task, description=f"starting vLLM ({elapsed:.0f} s)"))
    console.print(
        f"vLLM ready in {server.started_s:.0f} s at {server.base_url} (model {config.served_name!r})"
    )
    return server


def cmd_serve(args: argparse.Namespace) -> int:
    server = start_server(server_config(args))
    try:
        print(server.base_url, flush=True)
        console.print(f"log: {server.log_path}; Ctrl-C stops it")
        while server.running():
            time.sleep(1)
        from stage5_serving_ops.server import log_tail

        raise WorkFailed(
            f"vLLM stopped unexpectedly; last lines of {server.log_path}:\n{log_tail(server.log_path)}"
        )
    except KeyboardInterrupt:
        console.print("stopping vLLM")
        return 0
    finally:
        server.stop()


def cmd_bench(args: argparse.Namespace) -> int:
    from shared import paths
    from stage5_serving_ops.bench import (
        load_prompts,
        parse_levels,
        sweep,
        transformers_baseline,
        write_report,
    )
    from stage5_serving_ops.server import on_gpu, served_model

    levels = parse_levels(args.concurrency)
    if args.requests < 1 or args.max_tokens < 1:
        raise BadInput("--requests and --max-tokens must be at least 1")
    prompts = load_prompts(Path(args.prompts)) if args.prompts else load_prompts()
    server = None if args.base_url else start_server(server_config(args, port=0))
    try:
        base_url = args.base_url or server.base_url
        model = args.served_name or served_model(base_url, args.api_key)
        with progress() as bar:
            task = bar.add_task(
                f"{len(levels)} levels x {args.requests} requests", total=len(levels) * args.requests
            )
            levels_report = sweep(base_url, model, levels, args.requests, args.max_tokens, args.api_key, prompts,
                                  on_done=lambda: bar.advance(task))  # fmt: skip
        server_start = server.started_s if server else None
    finally:
        if server:
            server.stop()
    report: dict[str, Any] = {"model": model, "device": "cuda" if on_gpu() else "cpu", "base_url": base_url,
                              "requests": args.requests, "max_tokens": args.max_tokens, "levels": levels_report,
                              "server_start_s": server_start, "baseline": None}  # fmt: skip
    if args.baseline:
        with progress() as bar:
            task = bar.add_task("baseline: Transformers, one by one", total=args.requests)
            report["baseline"] = transformers_baseline(args.model, prompts, args.requests, args.max_tokens,
                                                       on_done=lambda: bar.advance(task))  # fmt: skip
    rates = {level["concurrency"]: level["output_tokens_per_s"] for level in levels_report}
    if 1 in rates and rates[1] > 0:
        report["speedup_over_concurrency_1"] = {str(c): r / rates[1] for c, r in rates.items()}
    if report["baseline"]:
        base = report["baseline"]["output_tokens_per_s"]
        report["speedup_over_baseline"] = {str(c): r / base for c, r in rates.items()}
    json_path, plot_path = write_report(report, Path(args.out) if args.out else paths.reports_dir())
    if args.json:
        print_json(report)
        return 0

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f}"

    show(table(f"{model}: {args.requests} requests per level, {args.max_tokens} new tokens each",
               ["users", "tok/s", "req/s", "TTFT p50/p95 ms", "ITL p50/p95 ms", "e2e p50/p95 ms", "errors"],
               [(lv["concurrency"], f"{lv['output_tokens_per_s']:.1f}", f"{lv['requests_per_s']:.2f}",
                 f"{ms(lv['ttft_p50_s'])}/{ms(lv['ttft_p95_s'])}", f"{ms(lv['itl_p50_s'])}/{ms(lv['itl_p95_s'])}",
                 f"{ms(lv['e2e_p50_s'])}/{ms(lv['e2e_p95_s'])}", lv["errors"]) for lv in levels_report]))  # fmt: skip
    if report["baseline"]:
        b = report["baseline"]
        console.print(f"baseline (Transformers, one by one): {b['output_tokens_per_s']:.1f} tok/s, "
                      f"e2e p50 {ms(b['e2e_p50_s'])} ms")  # fmt: skip
    console.print(f"wrote {json_path} and {plot_path}")
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
    with progress() as bar:
        task = bar.add_task("loading, scoring and timing each precision", total=len(precisions))
        report = run(precisions, model=args.model, on_row=lambda row: bar.advance(task))
    json_path, plot_path = write_report(report, Path(args.out) if args.out else paths.reports_dir())
    if args.json:
        print_json(report)
        return 0
    show(table(f"{report['model']} on {report['device']}", ["precision", "footprint MB", "perplexity", "tok/s", "answer"],
               table_rows(report)))  # fmt: skip
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
    from shared import paths
    from stage5_serving_ops.evals import (
        DEFAULT_DATASET,
        evaluate_set,
        gate,
        load_dataset,
        load_thresholds,
        write_report,
    )

    records = load_dataset(Path(args.dataset) if args.dataset else DEFAULT_DATASET)
    thresholds = load_thresholds(Path(args.thresholds)) if args.thresholds else load_thresholds()
    with progress(transient=True) as bar:
        judge = f", judge at {args.base_url}" if args.base_url else ""
        bar.add_task(f"Ragas on {len(records)} records{judge}", total=None)
        result = evaluate_set(
            records, judge_base_url=args.base_url, judge_model=args.served_name, api_key=args.api_key
        )
    failures = gate(result, thresholds)
    result["gate"] = {"passed": not failures, "failures": failures}
    path = write_report(result, Path(args.out) if args.out else paths.reports_dir())
    if args.json:
        print_json(result)
    else:
        show(table(f"{result['n']} records", ["metric", "mean", "threshold", "failed to score"],
                   [(name, "-" if value is None else f"{value:.3f}", thresholds.get(name, {}).get("min", "-"),
                     result.get("failed", {}).get(name, 0)) for name, value in result["metrics"].items()]))  # fmt: skip
        console.print(f"wrote {path}")
    if failures:
        worst = "; ".join(f"{f['metric']}: {f['reason']}" for f in failures)
        raise WorkFailed(f"evaluation gate failed: {worst}")
    if not args.json:
        console.print("evaluation gate passed")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from stage5_serving_ops.demo import run_demo

    return run_demo(args)


def add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_CHAT_MODEL, help="registry name, hub id or model folder")
    p.add_argument(
        "--kv-cache-gib", type=int, default=2, help="KV cache size on a CPU (VLLM_CPU_KVCACHE_SPACE)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stage5_serving_ops", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run a vLLM OpenAI-compatible server in the foreground")
    add_server_options(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (not loopback: --api-key required)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="clients must send it as a Bearer token")
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
    p.add_argument("--out", default=None, help="report folder (default reports/)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_bench)

    p = sub.add_parser("quantize", help="fp32 / bf16 / int8 / 4-bit: footprint, perplexity, speed")
    p.add_argument("--precisions", default=None, help="comma-separated subset (default: all)")
    p.add_argument("--model", default=DEFAULT_CHAT_MODEL)
    p.add_argument("--out", default=None)
    p.add_argument("--json", action="store_true")
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
        "eval", help="Ragas metrics over an eval set; exits 1 when a metric is below its threshold"
    )
    p.add_argument(
        "--dataset", default=None, help="JSONL records (default: the shipped set; stage 3's export works)"
    )
    p.add_argument("--thresholds", default=None)
    p.add_argument(
        "--base-url", default=None, help="an OpenAI-compatible server to judge faithfulness/relevancy"
    )
    p.add_argument("--api-key", default=None)
    p.add_argument("--served-name", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_eval)

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
