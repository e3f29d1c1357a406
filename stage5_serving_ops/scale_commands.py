"""The commands about engines and scale: `race` (the hand-written engine against vLLM), `plan` (how much
memory a model needs and how many users fit), and what `serve` does past one device (`--dry-run`).

    python -m stage5_serving_ops race                                  # both engines, 1/4/16 users -> reports/
    python -m stage5_serving_ops plan --model smollm2-135m-instruct --kv-cache-gib 2 --block-size 128
    python -m stage5_serving_ops plan --config stage5_serving_ops/data/configs/llama-3.1-70b.json \\
        --memory-gib 80 --context 8192 --users 16                      # the smallest layout that holds them
    python -m stage5_serving_ops serve --model meta-llama/Llama-3.1-70B-Instruct \\
        --tensor-parallel-size 8 --pipeline-parallel-size 2 --distributed-executor-backend ray --dry-run
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import BadInput, console, print_json, progress, show, table

GIB = 1024**3


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """`--engine` and the hand-written engine's switches (vLLM's names for the same ideas)."""
    p.add_argument("--engine", choices=("vllm", "scratch"), default="vllm",
                   help="vllm, or scratch: the serving engine written by hand in engine/ (same API)")  # fmt: skip
    p.add_argument("--no-prefix-caching", dest="prefix_caching", action="store_false",
                   help="scratch: recompute every prompt from its first token")  # fmt: skip
    p.add_argument("--num-speculative-tokens", dest="speculative_tokens", type=int, default=0,
                   help="scratch: prompt-lookup draft tokens verified per step (0: off)")  # fmt: skip
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                   help="the dtype the engine computes in (auto: bfloat16 on a GPU or a CPU with bfloat16 "
                        "instructions, else float32); float32 to match an in-process float32 run token for token")  # fmt: skip


def add_parallel_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs each layer is split across")
    p.add_argument("--pipeline-parallel-size", type=int, default=1, help="groups of layers (usually nodes)")
    p.add_argument("--distributed-executor-backend", choices=("mp", "ray"), default="mp",
                   help="mp: one node; ray: a Ray cluster, needed past one node")  # fmt: skip
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument(
        "--dry-run", action="store_true", help="print the commands that would serve it, run nothing"
    )


def parallel_serving(args: argparse.Namespace, gpu_count: int) -> list[str] | None:
    """The lines `serve --dry-run` prints, or None to serve here; refuses a layout this machine lacks."""
    from stage5_serving_ops.deploy import Deployment, commands

    tp, pp = args.tensor_parallel_size, args.pipeline_parallel_size
    if not args.dry_run and tp * pp == 1:
        return None
    if args.engine != "vllm" and tp * pp > 1:
        raise BadInput("--tensor-parallel-size and --pipeline-parallel-size need --engine vllm")
    deployment = Deployment(model=args.model, served_name=getattr(args, "served_name", None) or Path(args.model).name,
                            tensor_parallel_size=tp, pipeline_parallel_size=pp,
                            distributed_executor_backend=args.distributed_executor_backend,
                            gpus_per_node=args.gpus_per_node, host=args.host, port=args.port)  # fmt: skip
    if args.dry_run:
        return commands(deployment)
    if deployment.devices > gpu_count:
        raise BadInput(f"TP {tp} x PP {pp} needs {deployment.devices} GPUs and this machine has {gpu_count}; "
                       "add --dry-run to print the commands for a cluster")  # fmt: skip
    return None


def cmd_race(args: argparse.Namespace) -> int:
    from stage5_serving_ops.bench import parse_levels
    from stage5_serving_ops.launch import running_server, server_config
    from stage5_serving_ops.race import race, write_report
    from stage5_serving_ops.server import on_gpu

    levels = parse_levels(args.concurrency)
    if args.requests < 1 or args.max_tokens < 1:
        raise BadInput("--requests and --max-tokens must be at least 1")
    base = server_config(args, port=0)

    def start(engine: str, options: dict[str, Any]):
        return running_server(replace(base, engine=engine, port=0, log_file="", **options))

    with progress() as bar:
        task = bar.add_task("race", total=None)
        report = race(start, levels, args.requests, args.max_tokens, base.api_key,
                      step=lambda what: bar.update(task, description=what))  # fmt: skip
    report.update(model=args.model, device="cuda" if on_gpu() else "cpu")
    json_path, plot_path = write_report(report, Path(args.out) if args.out else paths.reports_dir())
    if args.json:
        print_json(report)
        return 0
    rows = []
    for engine, levels_report in report["levels"].items():
        rows += [(engine, lv["concurrency"], f"{lv['output_tokens_per_s']:.1f}", f"{lv['ttft_p50_s'] * 1000:.0f}",
                  lv["errors"]) for lv in levels_report]  # fmt: skip
    show(table(f"the race: {args.requests} requests per level, {args.max_tokens} new tokens each",
               ["engine", "users", "tok/s", "TTFT p50 ms", "errors"], rows))  # fmt: skip
    show(
        table(
            "targets",
            ["target", "met"],
            [(name, "yes" if met else "no") for name, met in report["targets"].items()],
        )
    )
    console.print(f"wrote {json_path} and {plot_path}")
    return 0


# What `plan --shipped` plans (reports/stage5_plans.json, the README's table): the served model on
# this CPU, then the shipped configs on common GPUs. (name, config, precision, memory GiB, context, users)
SHIPPED_PLANS = [
    ("mistral-7b-v0.1", "bf16", 24, 8192, 1),
    ("llama-3.1-8b", "bf16", 80, 8192, 16),
    ("llama-3.1-8b", "nf4", 24, 8192, 4),
    ("llama-3.1-70b", "bf16", 80, 8192, 16),
    ("llama-3.1-70b", "bf16", 16, 8192, 8),
    ("llama-3.1-70b", "nf4", 80, 32768, 8),
]


def shipped_plans() -> dict[str, Any]:
    from stage5_serving_ops.plan import CONFIGS, choose_layout, load_shape, plan

    served = plan(
        load_shape("smollm2-135m-instruct", None), "bf16", kv_cache_gib=2, block_size=128, context=2048
    )
    layouts = [{**choose_layout(load_shape(None, str(CONFIGS / f"{name}.json")), precision, memory, context, users),
                "memory_gib": memory} for name, precision, memory, context, users in SHIPPED_PLANS]  # fmt: skip
    return {"served": served, "layouts": layouts}


def cmd_plan(args: argparse.Namespace) -> int:
    from stage5_serving_ops.plan import choose_layout, load_shape, plan

    if args.shipped:
        report = shipped_plans()
        out = paths.ensure(Path(args.out) if args.out else paths.reports_dir()) / "stage5_plans.json"
        paths.atomic_write_text(out, json.dumps(report, indent=2) + "\n")
        if args.json:
            print_json(report)
        else:
            show(table("layouts for the shipped configs", ["model", "precision", "GiB per GPU", "context x users",
                                                            "TP x PP", "nodes", "sequences that fit"],
                       [(r["model"], r["precision"], r["memory_gib"], f"{r['context']:,} x {r['users_asked']}",
                         f"{r['tensor_parallel_size']} x {r['pipeline_parallel_size']}", r["nodes"],
                         r["concurrent_sequences"]) for r in report["layouts"]]))  # fmt: skip
            console.print(f"wrote {out}")
        return 0
    shape = load_shape(None if args.config else args.model, args.config)
    if args.users is not None:
        if args.memory_gib is None or args.context is None:
            raise BadInput(
                "--users needs --memory-gib and --context (the layout must hold users x context tokens)"
            )
        result = choose_layout(
            shape, args.precision, args.memory_gib, args.context, args.users, args.gpus_per_node
        )
    else:
        result = plan(shape, args.precision, memory_gib=args.memory_gib, kv_cache_gib=args.kv_cache_gib,
                      tensor_parallel=args.tensor_parallel_size, pipeline_parallel=args.pipeline_parallel_size,
                      context=args.context, block_size=args.block_size)  # fmt: skip
    if args.json:
        print_json(result)
        return 0
    rows = [("parameters", f"{result['parameters']:,}"),
            ("weights", f"{result['weight_bytes'] / GIB:.2f} GiB ({result['precision']})"),
            ("layout", f"TP {result['tensor_parallel_size']} x PP {result['pipeline_parallel_size']} = "
                       f"{result['devices']} device(s)" + (f" on {result['nodes']} node(s)" if "nodes" in result else "")),
            ("weights per device", f"{result['weight_bytes_per_device'] / GIB:.2f} GiB"),
            ("KV cache per token", f"{result['kv_cache_bytes_per_token']:,} bytes "
                                   f"({result['kv_cache_bytes_per_token_per_device']:,.0f} per device)"),
            ("KV cache per device", f"{result['kv_cache_bytes'] / GIB:.2f} GiB"),
            ("KV cache tokens", f"{result['kv_cache_tokens']:,} (blocks of {result['block_size']})")]  # fmt: skip
    if "concurrent_sequences" in result:
        rows.append(
            (f"sequences of {result['context']:,} tokens at once", f"{result['concurrent_sequences']:,}")
        )
    show(table(f"capacity plan: {result['model']}", ["", ""], rows))
    return 0


def add_plan_parser(sub: Any) -> None:
    from shared.models import DEFAULT_CHAT_MODEL
    from stage5_serving_ops.plan import BYTES_PER_PARAMETER

    p = sub.add_parser(
        "plan", help="memory for weights and KV cache, users that fit, the layout a model needs"
    )
    p.add_argument(
        "--model", default=DEFAULT_CHAT_MODEL, help="registry name or model folder (its config.json)"
    )
    p.add_argument(
        "--config", default=None, help="a config.json instead of --model (data/configs/ has three)"
    )
    p.add_argument("--precision", choices=tuple(BYTES_PER_PARAMETER), default="bf16")
    p.add_argument("--memory-gib", type=float, default=None, help="each device's memory")
    p.add_argument(
        "--kv-cache-gib",
        type=float,
        default=None,
        help="the KV cache itself (a CPU's VLLM_CPU_KVCACHE_SPACE)",
    )
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--pipeline-parallel-size", type=int, default=1)
    p.add_argument("--context", type=int, default=None, help="tokens each user's sequence needs")
    p.add_argument("--users", type=int, default=None, help="find the smallest layout holding this many users")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument(
        "--block-size", type=int, default=16, help="tokens per KV block (vLLM: 16 on a GPU, 128 on a CPU)"
    )
    p.add_argument("--shipped", action="store_true",
                   help="plan the shipped configs on common GPUs -> reports/stage5_plans.json (the README's table)")  # fmt: skip
    p.add_argument("--out", default=None, help="report folder for --shipped (default reports/)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_plan)
