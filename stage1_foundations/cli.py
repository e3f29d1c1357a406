"""Stage 1's commands: look inside the tokenizer and the model, and decode by hand.

    python -m stage1_foundations tokenize "The capital of France is Paris."
    python -m stage1_foundations tokenize --chat "What is the capital of France?"
    python -m stage1_foundations next-token "The capital of France is" --top 5
    python -m stage1_foundations perplexity "The cat sat on the mat."
    python -m stage1_foundations generate --chat --stream "Write a haiku about the sea."
    python -m stage1_foundations generate --temperature 0.8 --top-p 0.9 --seed 1 "Once upon a time"
    python -m stage1_foundations bench --lengths 32,128,512

Every command takes --model (a registry name, hub id or local directory) and --json.
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


@functools.cache
def load_model(model: str) -> tuple[Any, Any]:
    """(model, tokenizer), loaded once per process."""
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
    from stage1_foundations.tokenization import render_chat, tokenize

    tokenizer = load_tokenizer(args.model)
    if not args.text:
        raise BadInput("the text is empty")
    if args.chat:
        rendered, ids = render_chat(tokenizer, [{"role": "user", "content": args.text}])
        pieces = tokenize(tokenizer, rendered)
        assert [p.id for p in pieces] == ids, "the template's ids and the rendered string's ids differ"
    else:
        rendered, pieces = args.text, tokenize(tokenizer, args.text)
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
    model, tokenizer = load_model(args.model)
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
    model, tokenizer = load_model(args.model)
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

    if not args.prompt.strip():
        raise BadInput("the prompt is empty")
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
    model, tokenizer = load_model(args.model)
    ids = prompt_ids(tokenizer, args.prompt, args.chat)
    check_context(model, len(ids), args.max_new_tokens)
    stream = stream_decode(model, tokenizer, ids, config)
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
        print_json({"model": args.model, "prompt": args.prompt, **result.to_dict()})
    else:
        console.print(
            f"[dim]{result.new_tokens} tokens ({result.finish_reason}) in {result.seconds:.2f} s: "
            f"{result.tokens_per_second:.1f} tok/s, first token after {result.time_to_first_token_s:.3f} s, "
            f"{'with' if config.use_cache else 'without'} KV cache[/]"
        )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from shared.console import progress
    from stage1_foundations.bench import METHODS, run_benchmark, write_report

    try:
        lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    except ValueError:
        raise BadInput(f"--lengths must be comma-separated integers, got {args.lengths!r}") from None
    if not lengths or min(lengths) < 1 or args.repeats < 1:
        raise BadInput("--lengths must be positive integers and --repeats at least 1")
    model, tokenizer = load_model(args.model)
    with progress(transient=True) as bar:
        task = bar.add_task("warming up", total=3 * len(lengths))
        report = run_benchmark(
            model,
            tokenizer,
            lengths,
            args.repeats,
            on_step=lambda what: bar.update(task, description=what, advance=1),
        )
    report["model"] = args.model
    json_path, png_path = write_report(report)
    if args.json:
        print_json(report)
        return 0
    show(
        table(
            f"decode speed (tokens/second, best of {args.repeats})",
            ["new tokens", *METHODS, "cache/generate", "cache/nocache"],
            [
                (
                    n,
                    *(f"{r['tokens_per_second']:.1f}" for r in report["results"] if r["new_tokens"] == n),
                    f"{report['cached_vs_generate'][n]:.2f}x",
                    f"{report['uncached_slowdown'][n]:.1f}x",
                )
                for n in lengths
            ],
        )
    )
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

    p = add("tokenize", cmd_tokenize, "show the tokens and ids of a text")
    p.add_argument("text")
    p.add_argument(
        "--chat", action="store_true", help="render TEXT as a user message through the chat template"
    )

    p = add("next-token", cmd_next_token, "the most likely next tokens after a prompt")
    p.add_argument("prompt")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--chat", action="store_true", help="format the prompt with the chat template")

    p = add("perplexity", cmd_perplexity, "how surprised the model is by a text")
    p.add_argument("text")

    p = add("generate", cmd_generate, "decode with the hand-written loop")
    p.add_argument("prompt")
    p.add_argument("--chat", action="store_true", help="format the prompt with the chat template")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--no-cache", action="store_true", help="re-run the whole sequence every step")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")

    p = add("bench", cmd_bench, "tokens/second: generate vs the loop with and without a KV cache")
    p.add_argument("--lengths", default="32,128,512", help="comma-separated output lengths")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per point (best is kept)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


def entry() -> int:
    return run_cli(main)
