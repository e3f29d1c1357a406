"""Stage 2's commands: the tools, the tool-calling loop, and its benchmark.

    python -m stage2_prompting_tools tools
    python -m stage2_prompting_tools ask "What is 23 * 47?"
    python -m stage2_prompting_tools ask --tools get_weather,wiki_summary "Who was Ada Lovelace?"
    python -m stage2_prompting_tools ask --base-url http://127.0.0.1:8000/v1 "Weather in Lisbon?"
    python -m stage2_prompting_tools chat
    python -m stage2_prompting_tools prompts --split dev
    python -m stage2_prompting_tools optimize --optimizer knn
    python -m stage2_prompting_tools classify "I was charged twice this month"
    python -m stage2_prompting_tools bench

In process, the default model calls tools through constrained decoding (constrained.py); with
--base-url the server's native tools/tool_calls API is used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from shared.console import BadInput, console, print_json, run_cli, show, table
from shared.models import DEFAULT_CHAT_MODEL
from stage2_prompting_tools.agent import Agent, Step
from stage2_prompting_tools.tools import BUILTIN_TOOLS, select_tools


def build_agent(args: argparse.Namespace) -> Agent:
    if args.max_steps < 1:
        raise BadInput(f"--max-steps must be at least 1, got {args.max_steps}")
    try:
        tools = select_tools(args.tools)
    except ValueError as e:
        raise BadInput(str(e)) from None
    if args.base_url:
        from shared.chat import OpenAIChatModel

        model: Any = OpenAIChatModel(args.model, args.base_url, args.api_key)
    else:
        from stage2_prompting_tools.constrained import ConstrainedToolModel

        model = ConstrainedToolModel(args.model)
    return Agent(model, tools, max_steps=args.max_steps)


def print_step(step: Step) -> None:
    outcome = (
        f"[red]error:[/] {step.error}"
        if step.error
        else json.dumps(step.result, ensure_ascii=False, default=str)
    )
    console.print(f"[cyan]tool[/] {step.tool}({json.dumps(step.arguments, ensure_ascii=False)}) -> {outcome}")


def cmd_tools(args: argparse.Namespace) -> int:
    if args.json:
        print_json([t.spec for t in BUILTIN_TOOLS.values()])
        return 0
    show(
        table(
            "built-in tools",
            ["name", "parameters", "description"],
            [(t.name, ", ".join(t.parameters["properties"]), t.description) for t in BUILTIN_TOOLS.values()],
        )
    )
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    if not args.question.strip():
        raise BadInput("the question is empty")
    agent = build_agent(args)
    result = agent.run(args.question, on_step=None if args.json else print_step)
    if args.json:
        print_json(result.to_dict())
    else:
        print(result.answer)
    return 0 if result.finished else 1


def cmd_chat(args: argparse.Namespace) -> int:
    agent = build_agent(args)
    history: list[dict[str, Any]] = []
    console.print("Tool-calling chat. Commands: /tools, /reset, /quit")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            return 0
        if not line:
            continue
        if line == "/quit":
            return 0
        if line == "/reset":
            history.clear()
            console.print("(history cleared)")
            continue
        if line == "/tools":
            console.print(", ".join(agent.tools))
            continue
        result = agent.run(line, history=history, on_step=print_step)
        print(f"assistant> {result.answer}")
        history += [{"role": "user", "content": line}, {"role": "assistant", "content": result.answer}]


def cmd_bench(args: argparse.Namespace) -> int:
    from shared.chat import LocalChatModel
    from shared.console import progress
    from stage2_prompting_tools.bench import run_benchmark, steps_in_benchmark, write_report

    chat_model = LocalChatModel(args.model)
    with progress(transient=True) as bar:
        task = bar.add_task("tool suite and prompt designs", total=steps_in_benchmark())
        report = run_benchmark(chat_model, on_task=lambda: bar.advance(task))
    path = write_report(report)
    if args.json:
        print_json(report)
        return 0
    c, u, e = report["constrained"], report["unconstrained"], report["end_to_end"]
    show(table("tool calls on the 36-task suite", ["configuration", "right tool", "valid call", "right arguments",
                                                    "s/task"], [
        ("router + grammar (default)", f"{c['selection_accuracy']:.0%}", f"{c['valid_call_rate']:.0%}",
         f"{c['argument_accuracy']:.0%}", f"{c['seconds_per_task']:.1f}"),
        ("router, free generation", f"{u['selection_accuracy']:.0%}", f"{u['valid_call_rate']:.0%}",
         f"{u['argument_accuracy']:.0%}", f"{u['seconds_per_task']:.1f}"),
        *[(f"{mode} selection", f"{r['selection_accuracy']:.0%}", "-", "-", f"{r['seconds_per_task']:.1f}")
          for mode, r in report["selection"].items() if mode != "router"]]))  # fmt: skip
    console.print(
        f"end to end: tools ran without error on {e['tool_ran_without_error']:.0%} of tasks; answers "
        f"contained the expected figure on {e['answer_accuracy']:.0%} of the {e['answer_checked']} checkable"
    )
    designs = list(dict.fromkeys(r["design"] for r in report["prompts"]))
    score = {(r["design"], r["split"]): r["accuracy"] for r in report["prompts"]}
    show(table("prompt designs: intent accuracy (label likelihood, chance 17%)", ["design", "dev", "test"],
               [(d, f"{score[d, 'dev']:.0%}", f"{score[d, 'test']:.0%}") for d in designs]))  # fmt: skip
    show(optimization_rows_table(report["optimization"]))
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
    from stage2_prompting_tools.optimize import OPTIMIZERS, optimization_table, rows_in_table

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


def optimization_rows_table(report: dict[str, Any]) -> Any:
    splits = list(dict.fromkeys(r["split"] for r in report["rows"]))
    programs = list(dict.fromkeys(r["program"] for r in report["rows"]))
    cell = {(r["program"], r["split"]): r for r in report["rows"]}
    return table("DSPy programs: intent accuracy (unparsed replies)", ["program", *splits],
                 [(p, *(f"{cell[p, s]['accuracy']:.0%} ({cell[p, s]['unparsed']:.0%})" for s in splits))
                  for p in programs])  # fmt: skip


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stage2_prompting_tools", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tools", help="the registered tools and their JSON schemas")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_tools)

    for name, handler, help_text in (("ask", cmd_ask, "answer one question, calling tools as needed"),
                                     ("chat", cmd_chat, "an interactive tool-calling session")):  # fmt: skip
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == "ask":
            p.add_argument("question")
            p.add_argument("--json", action="store_true")
        p.add_argument(
            "--model", default=DEFAULT_CHAT_MODEL, help="registry name, hub id, directory or served name"
        )
        p.add_argument("--base-url", default=None, help="an OpenAI-compatible server (native tool calls)")
        p.add_argument("--api-key", default=None)
        p.add_argument("--tools", default=None, help="comma-separated tool names (default: all)")
        p.add_argument("--max-steps", type=int, default=4)
        p.set_defaults(handler=handler)

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

    p = sub.add_parser("bench", help="tool selection, argument and answer accuracy on the shipped suite")
    p.add_argument("--model", default=DEFAULT_CHAT_MODEL)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_bench)
    return parser


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=DEFAULT_CHAT_MODEL, help="registry name, hub id, directory or served name"
    )
    p.add_argument("--base-url", default=None, help="an OpenAI-compatible server")
    p.add_argument("--api-key", default=None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


def entry() -> int:
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(entry())
