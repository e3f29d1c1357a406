"""Stage 1's commands: look inside the tokenizer and the model, and decode by hand.

    python -m stage1_foundations tokenize "The capital of France is Paris."
    python -m stage1_foundations tokenize --engine scratch --chat "What is the capital of France?"
    python -m stage1_foundations next-token --engine scratch "The capital of France is" --top 5
    python -m stage1_foundations perplexity "The cat sat on the mat."
    python -m stage1_foundations generate --chat --stream "Write a haiku about the sea."
    python -m stage1_foundations generate --engine scratch --chat "Name three colors." "What is 2+2?"
    python -m stage1_foundations generate --temperature 0.8 --top-p 0.9 --seed 1 "Once upon a time"
    python -m stage1_foundations train-bpe --merges 300
    python -m stage1_foundations bench --lengths 32,128,512

Every command takes --model (a registry name, hub id or local directory) and --json; tokenize,
next-token, perplexity and generate take --engine: `hf` (Transformers, the default) or `scratch`
(the hand-written model of model.py, or for tokenize the hand-written BPE of bpe.py).
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any

from shared.console import BadInput, console, print_json, run_cli, show, table
from shared.models import DEFAULT_CHAT_MODEL, resolve


@functools.cache
def load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(model))


ENGINES = ("hf", "scratch")


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise BadInput(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    return engine


@functools.cache
def load_model(model: str, engine: str = "hf") -> tuple[Any, Any]:
    """(model, tokenizer), loaded once per process: Transformers' model, or the hand-written one
    (model.py) on the same weights. Both use the Transformers tokenizer for chat templates."""
    if check_engine(engine) == "scratch":
        from stage1_foundations.model import ModelFormatError, load_scratch_model

        try:
            return load_scratch_model(model), load_tokenizer(model)
        except ModelFormatError as e:
            raise BadInput(str(e)) from None
    from shared.chat import LocalChatModel

    chat_model = LocalChatModel(model)
    return chat_model.model, chat_model.tokenizer


def prompt_ids(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    if not prompt.strip():
        raise BadInput("the prompt is empty")
    if chat:
        from stage1_foundations.tokenization import render_chat

        return render_chat(tokenizer, [{"role": "user", "content": prompt}])[1]
    return tokenizer(prompt)["input_ids"]


def check_context(model: Any, n_prompt: int, max_new_tokens: int) -> None:
    context = model.config.max_position_embeddings
    if n_prompt + max_new_tokens > context:
        raise BadInput(
            f"the prompt ({n_prompt} tokens) plus --max-new-tokens ({max_new_tokens}) exceeds the "
            f"model's context of {context} tokens"
        )


# --------------------------------------------------------------------------------------------


def cmd_tokenize(args: argparse.Namespace) -> int:
    from stage1_foundations.tokenization import TokenPiece, render_chat, tokenize

    engine = check_engine(args.engine)
    if not args.text:
        raise BadInput("the text is empty")
    tokenizer = load_tokenizer(args.model)
    rendered, ids = (
        render_chat(tokenizer, [{"role": "user", "content": args.text}]) if args.chat else (args.text, None)
    )
    if engine == "scratch":  # the hand-written byte-level BPE, read from the same tokenizer.json
        from stage1_foundations.bpe import BPETokenizer

        enc = BPETokenizer.from_model(args.model).encode_with_offsets(rendered)
        pieces = [
            TokenPiece(i, t, rendered[a:b], a, b)
            for i, t, (a, b) in zip(enc.ids, enc.tokens, enc.offsets, strict=True)
        ]
    else:
        pieces = tokenize(tokenizer, rendered)
    if ids is not None:
        assert [p.id for p in pieces] == ids, "the template's ids and the rendered string's ids differ"
    if args.json:
        print_json(
            {
                "text": rendered,
                "tokens": [p.token for p in pieces],
                "ids": [p.id for p in pieces],
                "offsets": [[p.start, p.end] for p in pieces],
            }
        )
        return 0
    if args.chat:
        console.print("[bold]The string the model sees:[/]")
        console.print(rendered, markup=False)
    show(
        table(
            f"{len(pieces)} tokens",
            ["#", "id", "token", "text"],
            [(i, p.id, p.token, repr(p.text)) for i, p in enumerate(pieces)],
        )
    )
    return 0


def cmd_next_token(args: argparse.Namespace) -> int:
    from stage1_foundations.forward import top_next_tokens

    if args.top < 1:
        raise BadInput(f"--top must be at least 1, got {args.top}")
    model, tokenizer = load_model(args.model, check_engine(args.engine))
    ids = prompt_ids(tokenizer, args.prompt, args.chat)
    check_context(model, len(ids), 1)
    tops = top_next_tokens(model, tokenizer, ids, args.top)
    if args.json:
        print_json({"prompt": args.prompt, "next_tokens": [t.__dict__ for t in tops]})
        return 0
    show(
        table(
            f"after {args.prompt!r}",
            ["token", "id", "probability"],
            [(repr(t.text), t.id, f"{t.probability:.2%}") for t in tops],
        )
    )
    return 0


def cmd_perplexity(args: argparse.Namespace) -> int:
    from stage1_foundations.forward import perplexity

    if not args.text.strip():
        raise BadInput("the text is empty")
    model, tokenizer = load_model(args.model, check_engine(args.engine))
    check_context(model, len(tokenizer(args.text)["input_ids"]) + 1, 0)
    value = perplexity(model, tokenizer, args.text)
    if args.json:
        print_json({"text": args.text, "perplexity": value})
    else:
        print(f"perplexity {value:.2f}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from stage1_foundations.decode import DecodeConfig, stream_decode
    from stage1_foundations.sampling import SamplingConfig

    engine = check_engine(args.engine)
    if not args.prompt:
        raise BadInput("give at least one prompt")
    if any(not p.strip() for p in args.prompt):
        raise BadInput("the prompt is empty")
    if args.stream and len(args.prompt) > 1:
        raise BadInput("--stream shows one prompt's text as it is made; give one prompt or drop --stream")
    try:
        sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
        config = DecodeConfig(
            max_new_tokens=args.max_new_tokens,
            sampling=sampling,
            use_cache=not args.no_cache,
            stop=args.stop,
            seed=args.seed,
        )
    except ValueError as e:
        raise BadInput(str(e)) from None
    model, tokenizer = load_model(args.model, engine)
    all_ids = [prompt_ids(tokenizer, p, args.chat) for p in args.prompt]
    for ids in all_ids:
        check_context(model, len(ids), args.max_new_tokens)
    if len(all_ids) > 1:
        return _generate_batch(args, model, tokenizer, all_ids, config)
    stream = stream_decode(model, tokenizer, all_ids[0], config)
    out = sys.stderr if args.json else sys.stdout  # --json keeps stdout for the JSON alone
    while True:
        try:
            delta = next(stream)
        except StopIteration as done:
            result = done.value
            break
        if args.stream:
            print(delta, end="", file=out, flush=True)
    if args.stream:
        print(file=out)
    elif not args.json:
        print(result.text)
    if args.json:
        print_json({"model": args.model, "engine": engine, "prompt": args.prompt[0], **result.to_dict()})
    else:
        console.print(
            f"[dim]{result.new_tokens} tokens ({result.finish_reason}) in {result.seconds:.2f} s: "
            f"{result.tokens_per_second:.1f} tok/s, first token after {result.time_to_first_token_s:.3f} s, "
            f"{'with' if config.use_cache else 'without'} KV cache, engine {engine}[/]"
        )
    return 0


def _generate_batch(
    args: argparse.Namespace, model: Any, tokenizer: Any, all_ids: list[list[int]], config: Any
) -> int:
    """Several prompts: one batch (batch.py), results printed in input order."""
    import time

    from stage1_foundations.batch import decode_batch

    start = time.perf_counter()
    results = decode_batch(model, tokenizer, all_ids, config)
    seconds = time.perf_counter() - start
    if args.json:
        print_json([{"model": args.model, "engine": args.engine, "prompt": prompt, **r.to_dict()}
                    for prompt, r in zip(args.prompt, results, strict=True)])  # fmt: skip
        return 0
    for i, (prompt, r) in enumerate(zip(args.prompt, results, strict=True)):
        console.print(f"[bold]#{i} {prompt}[/]", markup=True, highlight=False)
        print(r.text, flush=True)
    total = sum(r.new_tokens for r in results)
    console.print(f"[dim]{len(results)} prompts in one batch: {total} tokens in {seconds:.2f} s = "
                  f"{total / seconds:.1f} tok/s in aggregate, engine {args.engine}[/]")  # fmt: skip
    return 0


def cmd_train_bpe(args: argparse.Namespace) -> int:
    import json
    import time

    from shared import paths
    from stage1_foundations.bpe import (
        BPETokenizer,
        compression,
        compression_curve,
        reference_corpus,
        train_bpe,
    )

    if not 1 <= args.merges <= 5000:
        raise BadInput(f"--merges must be between 1 and 5000, got {args.merges}")
    train_text, test_text = reference_corpus()
    start = time.perf_counter()
    with console.status(f"learning {args.merges} merges from {len(train_text.encode()):,} bytes"):
        merges = train_bpe(train_text, args.merges)
    seconds = time.perf_counter() - start
    points = sorted({0, *range(0, len(merges) + 1, max(1, len(merges) // 10)), len(merges)})
    curve = compression_curve(merges, test_text, points)
    report = {
        "corpus": "pydoc_data.topics (Python Language Reference), even topics train / odd topics held out",
        "train_bytes": len(train_text.encode()), "test_bytes": len(test_text.encode()),
        "merges": len(merges), "train_seconds": seconds, "first_merges": [" ".join(m) for m in merges[:20]],
        "curve": curve, "model_tokenizer": args.model,
        "model_tokenizer_merges": len(BPETokenizer.from_model(args.model).ranks),
        "model_tokenizer_bytes_per_token": compression(BPETokenizer.from_model(args.model), test_text),
    }  # fmt: skip
    reports = paths.ensure(paths.reports_dir())
    json_path = paths.atomic_write_text(reports / "stage1_bpe.json", json.dumps(report, indent=2) + "\n")
    png_path = _plot_bpe(report, reports / "stage1_bpe.png")
    if args.json:
        print_json(report)
        return 0
    console.print(f"first merges: {', '.join(report['first_merges'][:12])}")
    show(table("held-out compression (bytes of text per token)", ["merges", "bytes/token"],
               [(p["merges"], f"{p['bytes_per_token']:.2f}") for p in curve]
               + [(f"{report['model_tokenizer_merges']:,} ({args.model})", f"{report['model_tokenizer_bytes_per_token']:.2f}")]))  # fmt: skip
    console.print(f"learned in {seconds:.1f} s; wrote {json_path} and {png_path}")
    return 0


def _plot_bpe(report: dict[str, Any], path: Any) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shared import paths

    fig, ax = plt.subplots(figsize=(6.5, 4))
    xs = [p["merges"] for p in report["curve"]]
    ax.plot(xs, [p["bytes_per_token"] for p in report["curve"]], "-o", label="trained here")
    ax.axhline(report["model_tokenizer_bytes_per_token"], ls="--", color="gray",
               label=f"{report['model_tokenizer']} ({report['model_tokenizer_merges']:,} merges)")  # fmt: skip
    ax.set(xlabel="merges learned", ylabel="held-out bytes per token", title="What BPE merges buy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return paths.atomic_savefig(fig, path, dpi=110)


def cmd_parity(args: argparse.Namespace) -> int:
    from shared.console import progress
    from shared.models import resolve
    from stage1_foundations.model import load_scratch_model
    from stage1_foundations.parity import CHAT_PROMPTS, measure, write_report

    if not 1 <= args.new_tokens <= 256:
        raise BadInput(f"--new-tokens must be between 1 and 256, got {args.new_tokens}")
    scratch, tokenizer = load_scratch_model(args.model), load_tokenizer(args.model)
    with progress(transient=True) as bar:
        task = bar.add_task("loading", total=3 + len(CHAT_PROMPTS) + 2)
        report = measure(resolve(args.model), scratch, tokenizer, args.new_tokens,
                         step=lambda what: bar.update(task, description=what, advance=1))  # fmt: skip
    path = write_report(report)
    if args.json:
        print_json(report)
        return 0
    show(table("logits: hand-written model vs Transformers (fp32)", ["prompt", "tokens", "max |diff| vs sdpa",
               "max |diff| vs eager", "same argmax"],
               [(r["prompt"], r["tokens"], f"{r['max_abs_diff_vs_sdpa']:.1e}", f"{r['max_abs_diff_vs_eager']:.1e}",
                 f"{r['argmax_agreement_vs_sdpa']:.0%}") for r in report["logits"]]))  # fmt: skip
    g = report["greedy"]
    console.print(f"greedy, {g['new_tokens']} tokens: {g['same_cached']}/{g['prompts']} prompts equal `generate` with the "
                  f"static cache, {g['same_uncached']}/{g['uncached_prompts']} without")  # fmt: skip
    for b in report["batch"]:
        console.print(f"batch of {b['rows']} ({b['engine']}): {b['same']} rows as alone, {b['near-tie']} near-ties, "
                      f"{b['different']} different")  # fmt: skip
    console.print(f"wrote {path}")
    return 0


def bf16_supported(device: str) -> bool:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from shared.console import progress
    from shared.models import resolve
    from stage1_foundations.bench import METHODS, run_benchmark, write_report
    from stage1_foundations.model import ScratchLlama

    try:
        lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
        sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    except ValueError:
        raise BadInput(f"--lengths and --batch-sizes must be comma-separated integers, got {args.lengths!r}, "
                       f"{args.batch_sizes!r}") from None  # fmt: skip
    if not lengths or min(lengths) < 1 or not sizes or min(sizes) < 1 or args.repeats < 1:
        raise BadInput("--lengths and --batch-sizes must be positive integers and --repeats at least 1")
    model, tokenizer = load_model(args.model)
    scratch = ScratchLlama.from_pretrained(resolve(args.model), device=model.device)
    device = str(model.device)

    def bf16_models() -> tuple[Any, Any]:
        from shared.chat import LocalChatModel

        return (LocalChatModel(args.model, dtype=torch.bfloat16).model,
                ScratchLlama.from_pretrained(resolve(args.model), dtype=torch.bfloat16, device=device))  # fmt: skip

    use_bf16 = bf16_supported(device) and not args.no_bf16
    steps = len(lengths) * len(METHODS) + 2 * len(sizes) + (2 if use_bf16 else 0)
    with progress(transient=True) as bar:
        task = bar.add_task("warming up", total=steps)
        report = run_benchmark(
            model, scratch, tokenizer, lengths, args.repeats, batch_sizes=sizes, batch_tokens=args.batch_tokens,
            bf16_model=bf16_models if use_bf16 else None,
            on_step=lambda what: bar.update(task, description=what, advance=1),
        )  # fmt: skip
    report["model"] = args.model
    json_path, png_path = write_report(report)
    if args.json:
        print_json(report)
        return 0
    rate = {(r["method"], r["new_tokens"]): r["tokens_per_second"] for r in report["results"]}
    show(table(f"batch 1, tokens/second (best of {args.repeats})",
               ["new tokens", *METHODS, "scratch/generate", "cache/nocache"],
               [(n, *(f"{rate[(m, n)]:.1f}" for m in METHODS), f"{report['scratch_vs_generate'][n]:.2f}x",
                 f"{report['uncached_slowdown'][n]:.1f}x") for n in lengths]))  # fmt: skip
    show(table(f"batches of {args.batch_tokens} new tokens per prompt: aggregate tokens/second",
               ["engine", *(f"batch {s}" for s in sizes)],
               [(e, *(f"{r['tokens_per_second']:.1f}" for r in report["batch"] if r["engine"] == e))
                for e in ("hf", "scratch")]))  # fmt: skip
    for r in report["bf16"]:
        console.print(f"bf16 {r['method']}: {r['tokens_per_second']:.1f} tok/s at {r['new_tokens']} tokens")
    mem = report["memory"]
    console.print(f"each step reads {mem['weight_bytes_read_per_token'] / 1e6:.0f} MB of weights; read bandwidth "
                  f"{mem['read_bandwidth_gb_s']:.1f} GB/s -> at most {mem['batch1_ceiling_tokens_per_second']:.0f} "
                  "tok/s at batch 1")  # fmt: skip
    for target, met in report["targets"].items():
        console.print(f"{'[green]met[/]' if met else '[red]missed[/]'}  {target}")
    console.print(f"wrote {json_path} and {png_path}")
    return 0


# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stage1_foundations", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--model", default=DEFAULT_CHAT_MODEL, help="registry name, hub id or local directory")
        p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        p.set_defaults(handler=handler)
        return p

    def add_engine(p: argparse.ArgumentParser, scratch_is: str) -> None:
        p.add_argument("--engine", default="hf", help=f"hf (Transformers, default) or scratch ({scratch_is})")

    p = add("tokenize", cmd_tokenize, "show the tokens and ids of a text")
    p.add_argument("text")
    add_engine(p, "the hand-written BPE of bpe.py")
    p.add_argument(
        "--chat", action="store_true", help="render TEXT as a user message through the chat template"
    )

    p = add("next-token", cmd_next_token, "the most likely next tokens after a prompt")
    p.add_argument("prompt")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--chat", action="store_true", help="format the prompt with the chat template")
    add_engine(p, "the hand-written model of model.py")

    p = add("perplexity", cmd_perplexity, "how surprised the model is by a text")
    p.add_argument("text")
    add_engine(p, "the hand-written model of model.py")

    p = add("generate", cmd_generate, "decode with the hand-written loop (several prompts: one batch)")
    p.add_argument("prompt", nargs="*", help="one prompt, or several to decode as one batch")
    add_engine(p, "the hand-written model of model.py")
    p.add_argument("--chat", action="store_true", help="format the prompt with the chat template")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--no-cache", action="store_true", help="re-run the whole sequence every step")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")

    p = add(
        "parity", cmd_parity, "measure the hand-written model against Transformers: logits, greedy, batches"
    )
    p.add_argument("--new-tokens", type=int, default=32)

    p = add("train-bpe", cmd_train_bpe, "learn BPE merges on the Python reference; held-out compression")
    p.add_argument("--merges", type=int, default=300)

    p = add("bench", cmd_bench, "tokens/second: generate, the hand loop, the hand model, batches, bf16")
    p.add_argument("--lengths", default="32,128,512", help="comma-separated output lengths")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per point (best is kept)")
    p.add_argument("--batch-sizes", default="1,4,16", help="comma-separated batch sizes")
    p.add_argument("--batch-tokens", type=int, default=64, help="new tokens per prompt in the batch sweep")
    p.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 row")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


def entry() -> int:
    return run_cli(main)
