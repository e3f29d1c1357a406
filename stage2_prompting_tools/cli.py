"""Stage 2's commands: the tools, the tool-calling loop, MCP, the injection suite, and the benchmarks.

    python -m stage2_prompting_tools tools
    python -m stage2_prompting_tools ask "What is 23 * 47?"
    python -m stage2_prompting_tools ask --mode model "Convert 5 miles to km, then multiply that by 3."
    python -m stage2_prompting_tools ask --yes "Save a note called groceries: milk and eggs"
    python -m stage2_prompting_tools ask --base-url http://127.0.0.1:8000/v1 "Weather in Lisbon?"
    python -m stage2_prompting_tools ask --mcp "python -m stage2_prompting_tools mcp" "What is 2 + 2?"
    python -m stage2_prompting_tools chat
    python -m stage2_prompting_tools mcp                      # serve the tools over MCP (stdio)
    python -m stage2_prompting_tools mcp --http 8765          # ... or streamable HTTP on 127.0.0.1
    python -m stage2_prompting_tools injection
    python -m stage2_prompting_tools prompts --split dev
    python -m stage2_prompting_tools optimize --optimizer knn
    python -m stage2_prompting_tools classify "I was charged twice this month"
    python -m stage2_prompting_tools bench --serve

In process, SmolLM2 calls tools under a grammar (tool_model.py); with --base-url an OpenAI-compatible
server answers the same calls (served.py). --mode says who decides (agent.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.console import BadInput, WorkFailed, console, print_json, run_cli, show, table
from shared.models import DEFAULT_CHAT_MODEL
from stage2_prompting_tools.agent import DEFAULT_MODE, MODES, Agent, Confirm, Step, never_confirm
from stage2_prompting_tools.tools import BUILTIN_TOOLS, Tool, select_tools


def build_model(args: argparse.Namespace) -> Any:
    if args.base_url:
        from stage2_prompting_tools.served import ServedToolModel

        return ServedToolModel(args.model, args.base_url, args.api_key)
    from stage2_prompting_tools.tool_model import ConstrainedToolModel

    return ConstrainedToolModel(args.model)


@contextlib.contextmanager
def chosen_tools(args: argparse.Namespace) -> Iterator[list[Tool]]:
    """The built-in tools, or an MCP server's (--mcp), filtered by --tools."""
    if not args.mcp:
        try:
            yield select_tools(args.tools)
        except ValueError as e:
            raise BadInput(str(e)) from None
        return
    from stage2_prompting_tools.mcp_client import open_mcp_tools, parse_target

    target = parse_target(args.mcp)
    with open_mcp_tools(target) as tools:
        try:
            yield select_tools(args.tools, {t.name: t for t in tools})
        except ValueError as e:
            raise BadInput(str(e)) from None


def build_agent(args: argparse.Namespace, tools: list[Tool], confirm: Confirm) -> Agent:
    if args.max_steps < 1:
        raise BadInput(f"--max-steps must be at least 1, got {args.max_steps}")
    if args.shortlist < 1:
        raise BadInput(f"--shortlist must be at least 1, got {args.shortlist}")
    return Agent(build_model(args), tools, mode=args.mode, max_steps=args.max_steps, shortlist_size=args.shortlist,
                 confirm=confirm)  # fmt: skip


def ask_on_terminal(tool: Tool, arguments: dict[str, Any]) -> bool:
    """Ask the person at the keyboard before a tool with side effects runs."""
    try:
        reply = input(f"run {tool.name}({json.dumps(arguments, ensure_ascii=False)})? [y/N] ")
    except EOFError:
        return False
    return reply.strip().lower() in ("y", "yes")


def confirmation(args: argparse.Namespace, interactive: bool) -> Confirm:
    if args.yes:
        return lambda tool, arguments: True
    return ask_on_terminal if interactive else never_confirm


def print_step(step: Step) -> None:
    outcome = (f"[red]{'refused' if step.refused else 'error'}:[/] {step.error}" if step.error
               else json.dumps(step.result, ensure_ascii=False, default=str))  # fmt: skip
    console.print(f"[cyan]tool[/] {step.tool}({json.dumps(step.arguments, ensure_ascii=False)}) -> {outcome}")


def cmd_tools(args: argparse.Namespace) -> int:
    if args.json:
        print_json([t.spec for t in BUILTIN_TOOLS.values()])
        return 0
    show(table("built-in tools", ["name", "parameters", "side effects", "description"],
               [(t.name, ", ".join(t.parameters["properties"]), "yes" if t.side_effects else "", t.description)
                for t in BUILTIN_TOOLS.values()]))  # fmt: skip
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    if not args.question.strip():
        raise BadInput("the question is empty")
    with chosen_tools(args) as tools:
        agent = build_agent(args, tools, confirmation(args, interactive=sys.stdin.isatty()))
        result = agent.run(args.question, on_step=None if args.json else print_step)
    if args.json:
        print_json(result.to_dict())
    elif not result.declined:
        print(result.answer)
    if result.declined:
        raise WorkFailed(f"{result.declined} was not confirmed (it has side effects; --yes allows it); "
                         "nothing was written")  # fmt: skip
    return 0 if result.finished else 1


def read_line(prompt: str) -> str:
    """input() at a terminal (prompt, line editing); piped, no prompt, so stdout holds only the
    answers and stderr only the tool calls, a line each."""
    if sys.stdin.isatty():
        return input(prompt)
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line


def cmd_chat(args: argparse.Namespace) -> int:
    turns: list[
        list[dict[str, Any]]
    ] = []  # each turn's messages: the user, the calls, the results, the answer
    with chosen_tools(args) as tools:
        agent = build_agent(args, tools, confirmation(args, interactive=True))
        console.print(f"Tool-calling chat (mode {args.mode}). Commands: /tools, /reset, /quit")
        while True:
            try:
                line = read_line("you> ").strip()
            except EOFError:
                return 0
            if not line:
                continue
            if line == "/quit":
                return 0
            if line == "/reset":
                turns.clear()
                console.print("(history cleared)")
                continue
            if line == "/tools":
                console.print(", ".join(agent.tools))
                continue
            history = [m for turn in turns[-args.history :] for m in turn]  # the whole recent conversation
            result = agent.run(line, history=history, on_step=print_step)
            print(f"assistant> {result.answer}", flush=True)
            turns.append(result.messages)


def cmd_mcp(args: argparse.Namespace) -> int:
    from stage2_prompting_tools.mcp_server import build_server, serve_http, serve_stdio

    try:
        server = build_server(select_tools(args.tools))
    except ValueError as e:
        raise BadInput(str(e)) from None
    if args.http is None:
        serve_stdio(server)
        return 0
    if not 0 < args.http < 65536:
        raise BadInput(f"--http takes a port in 1..65535, got {args.http}")
    console.print(f"MCP over streamable HTTP at http://127.0.0.1:{args.http}/mcp (Ctrl-C stops it)")
    serve_http(server, args.http)
    return 0


def cmd_injection(args: argparse.Namespace) -> int:
    from shared.console import progress
    from stage2_prompting_tools.injection import ATTACKS, injection_table, run_injection_suite

    model = build_model(args)
    with progress(transient=True) as bar:
        task = bar.add_task(f"{len(ATTACKS)} attacks ({args.mode})", total=len(ATTACKS))
        report = run_injection_suite(model, mode=args.mode, on_attack=lambda: bar.advance(task))
    if args.json:
        print_json(report)
    else:
        show(injection_table(report, f"indirect prompt injection: {model.name}, mode {args.mode}"))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from stage2_prompting_tools.bench import PARTS, run_benchmark, show_report, write_report

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or any(p not in PARTS for p in parts):
        raise BadInput(f"--parts takes {', '.join(PARTS)} separated by commas, got {args.parts!r}")
    if args.limit is not None and args.limit < 1:
        raise BadInput(f"--limit must be at least 1, got {args.limit}")
    report = run_benchmark(args.model, parts, base_url=args.base_url, serve=args.serve, limit=args.limit)
    path = write_report(report)
    if args.json:
        print_json(report)
    else:
        show_report(report)
        console.print(f"wrote {path}")
    return 0


def cmd_prompts(args: argparse.Namespace) -> int:
    from shared.chat import LocalChatModel
    from shared.console import progress
    from stage2_prompting_tools.prompts import DESIGNS, compare_designs, load_intents

    chat_model = LocalChatModel(args.model)
    with progress(transient=True) as bar:
        task = bar.add_task(
            f"prompt designs on {args.split}", total=len(DESIGNS) * len(load_intents(args.split))
        )
        rows = compare_designs(chat_model, args.split, on_row=lambda: bar.advance(task))
    if args.json:
        print_json(rows)
    else:
        show(table(f"intent accuracy on {args.split} (n={rows[0]['n']}, chance 17%)", ["prompt design", "accuracy"],
                   [(r["design"], f"{r['accuracy']:.0%}") for r in rows]))  # fmt: skip
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    from shared.chat import open_chat_model
    from shared.console import progress
    from stage2_prompting_tools.optimize import (
        OPTIMIZERS,
        optimization_rows_table,
        optimization_table,
        rows_in_table,
    )

    if args.optimizer not in OPTIMIZERS:
        raise BadInput(f"unknown optimizer {args.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if args.limit is not None and args.limit < 1:
        raise BadInput(f"--limit must be at least 1, got {args.limit}")
    chat_model = open_chat_model(args.model, args.base_url, args.api_key)
    with progress(transient=True) as bar:
        task = bar.add_task(f"optimizing ({args.optimizer}), then scoring", total=None)
        report = optimization_table(chat_model, args.optimizer, limit=args.limit, out=args.out,
                                    on_row=lambda: bar.update(task, total=rows_in_table(limit=args.limit),
                                                              advance=1))  # fmt: skip
    if args.json:
        print_json(report)
        return 0
    console.print(f"optimized in {report['optimize_seconds']:.0f} s ({report['optimizer_calls']} model calls); "
                  f"demos it chose: " + "; ".join(d["intent"] for d in report["demos"]))  # fmt: skip
    show(optimization_rows_table(report))
    console.print(f"saved the optimized program to {report['program_path']}")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from shared.chat import open_chat_model
    from stage2_prompting_tools.optimize import chat_lm, default_program_path, load_program, predict

    if not args.text.strip():
        raise BadInput("the text is empty")
    path = args.program or default_program_path()
    program = load_program(path)
    intent = predict(program, chat_lm(open_chat_model(args.model, args.base_url, args.api_key)), args.text)
    if args.json:
        print_json({"text": args.text, "intent": intent, "program": str(path)})
    else:
        print(intent if intent is not None else "(the reply did not parse into an intent)")
    return 0 if intent is not None else 1


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=DEFAULT_CHAT_MODEL, help="registry name, hub id, directory or served name"
    )
    p.add_argument(
        "--base-url", default=None, help="an OpenAI-compatible server instead of the in-process model"
    )
    p.add_argument("--api-key", default=None)


def add_loop_flags(p: argparse.ArgumentParser) -> None:
    add_model_flags(p)
    p.add_argument("--mode", choices=MODES, default=DEFAULT_MODE,
                   help="who decides: router, model (under the grammar), hybrid (router first), native")  # fmt: skip
    p.add_argument("--tools", default=None, help="comma-separated tool names (default: all)")
    p.add_argument(
        "--mcp", default=None, help="use an MCP server's tools: a command (stdio) or an http(s) URL"
    )
    p.add_argument("--max-steps", type=int, default=4)
    p.add_argument("--shortlist", type=int, default=3, help="how many tools the router shortlists")
    p.add_argument(
        "--yes", action="store_true", help="allow tools with side effects (save_note) without asking"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stage2_prompting_tools", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tools", help="the registered tools and their JSON schemas")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_tools)

    p = sub.add_parser("ask", help="answer one question, calling tools as needed")
    p.add_argument("question")
    add_loop_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_ask)

    p = sub.add_parser("chat", help="an interactive tool-calling session that remembers the conversation")
    add_loop_flags(p)
    p.add_argument("--history", type=int, default=4, help="how many earlier turns the model sees")
    p.set_defaults(handler=cmd_chat)

    p = sub.add_parser("mcp", help="serve the built-in tools over the Model Context Protocol")
    p.add_argument("--http", type=int, default=None, metavar="PORT", help="streamable HTTP on 127.0.0.1:PORT")
    p.add_argument("--tools", default=None, help="comma-separated tool names (default: all)")
    p.set_defaults(handler=cmd_mcp)

    p = sub.add_parser("injection", help="indirect prompt injection through tool results, attack by attack")
    add_model_flags(p)
    p.add_argument("--mode", choices=MODES, default=DEFAULT_MODE)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_injection)

    p = sub.add_parser(
        "prompts", help="compare prompt designs (zero/few-shot, placement, selection) on the intent set"
    )
    p.add_argument("--split", choices=("dev", "test"), default="dev")
    p.add_argument("--model", default=DEFAULT_CHAT_MODEL)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_prompts)

    p = sub.add_parser(
        "optimize", help="DSPy: optimize the intent program's demos; compare with hand-written"
    )
    p.add_argument(
        "--optimizer", default="knn", help="knn (KNNFewShot), bootstrap (BootstrapFewShot) or labeled"
    )
    p.add_argument("--out", type=Path, default=None, help="where to save the program (default: artifacts)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N of each split")
    add_model_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_optimize)

    p = sub.add_parser("classify", help="the intent of one message, by a saved DSPy program")
    p.add_argument("text")
    p.add_argument("--program", type=Path, default=None, help="a file written by `optimize`")
    add_model_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_classify)

    p = sub.add_parser("bench", help="tool modes (in process and served), injection, prompt designs, DSPy")
    p.add_argument("--model", default=DEFAULT_CHAT_MODEL)
    p.add_argument("--base-url", default=None, help="also measure a running OpenAI-compatible server")
    p.add_argument("--serve", action="store_true", help="start stage 5's vLLM server for the served rows")
    p.add_argument("--parts", default="tools,prompts,dspy", help="which benchmarks: tools, prompts, dspy")
    p.add_argument("--limit", type=int, default=None, help="only the first N tasks of each tool suite")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


def entry() -> int:
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(entry())
