"""Stage 4's commands: curate, train, eval, merge, compare.

python -m stage4_finetune_align curate stage4_finetune_align/data/noisy_pairs.jsonl /tmp/clean.jsonl
python -m stage4_finetune_align train --method dpo --steps 30
python -m stage4_finetune_align eval                                   # the base model
python -m stage4_finetune_align eval --adapter artifacts/stage4/run/adapter
python -m stage4_finetune_align merge --adapter artifacts/stage4/run/adapter --out artifacts/stage4/merged
python -m stage4_finetune_align compare "My invoice is wrong" --adapter artifacts/stage4/run/adapter
python -m stage4_finetune_align bench                                  # -> reports/stage4_train.json + .png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from shared.console import BadInput, console, print_json, progress, run_cli, show, table
from shared.models import DEFAULT_CHAT_MODEL
from stage4_finetune_align.generation import MAX_NEW_TOKENS
from stage4_finetune_align.train import DEFAULT_METHOD, TrainConfig


def default(name: str) -> Any:
    """A TrainConfig default: the defaults live in one place, the config."""
    return TrainConfig.__dataclass_fields__[name].default


def cmd_curate(args: argparse.Namespace) -> int:
    from stage4_finetune_align.data import curate, load_pairs, write_pairs

    rows = load_pairs(Path(args.input), strict=False)  # re-splitting by prompt is curation's job
    kept, report = curate(rows, balance=args.balance)
    write_pairs(kept, Path(args.output))
    result = {"output": str(args.output), **report.to_dict()}
    if args.json:
        print_json(result)
        return 0
    show(table(f"curation: {report.before} pairs in, {report.after} out", ["dropped because", "pairs", "e.g."],
               [(k, v, ", ".join(report.examples.get(k, []))) for k, v in report.dropped.items()] or [("-", 0, "")]))  # fmt: skip
    console.print(f"chosen longer than rejected: {report.chosen_longer_before:.0%} before, "
                  f"{report.chosen_longer_after:.0%} after; splits {report.splits}; "
                  f"prompts in two splits: {report.prompts_in_two_splits}; wrote {args.output}")  # fmt: skip
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from stage4_finetune_align.train import TrainConfig, check_inputs, train

    config = TrainConfig(method=args.method, quant=args.quant, steps=args.steps, sft_steps=args.sft_steps,
                         batch_size=args.batch_size, learning_rate=args.learning_rate, beta=args.beta, sft_weight=args.sft_weight,
                         max_length=args.max_length, init=str(args.init or ""), model=args.model,
                         out=args.out or "")  # fmt: skip
    check_inputs(config, args.pairs, args.sft)  # before the progress bar and the heavy imports
    phases = (
        [("sft", config.sft_steps), ("dpo", config.steps)]
        if config.method == "sft-dpo"
        else [(config.method, config.steps)]
    )
    offsets = {name: sum(n for _, n in phases[:i]) for i, (name, _) in enumerate(phases)}
    with progress() as bar:
        task = bar.add_task(f"{args.method} ({args.quant})", total=sum(n for _, n in phases))

        def on_step(log: dict[str, Any]) -> None:
            bar.update(task, completed=offsets[log["phase"]] + log["step"])
            if not args.json:
                shown = ", ".join(f"{k} {log[k]:.3f}" for k in ("loss", "rewards/margins", "rewards/accuracies",
                                                               "mean_token_accuracy") if k in log)  # fmt: skip
                bar.console.print(f"{log['phase']} step {log['step']}: {shown}")

        summary = train(config, resume=args.resume, pairs_path=args.pairs, sft_path=args.sft, on_step=on_step)
    if args.json:
        print_json({k: v for k, v in summary.items() if k != "history"})
        return 0
    console.print(f"{summary['steps']} steps in {summary['wall_seconds'] / 60:.1f} min ({summary['seconds_per_step']:.1f} "
                  f"s/step, max length {summary['lengths']['max_length']}, "
                  f"{summary['lengths']['truncated_share']:.0%} of sequences cut); adapter {summary['adapter']}")  # fmt: skip
    return 0


def held_out(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[list[dict[str, str]]]]:
    from stage4_finetune_align.data import PAIRS_PATH, SFT_PATH, held_out_prompts, load_pairs

    if args.limit is not None and args.limit < 1:
        raise BadInput(f"--limit must be at least 1, got {args.limit}")
    pairs_path = args.pairs or PAIRS_PATH
    pairs = load_pairs(pairs_path, split=args.split)[: args.limit]
    prompts = held_out_prompts(pairs_path, args.sft or SFT_PATH)[: args.limit] if args.generation else []
    return pairs, prompts


def cmd_eval(args: argparse.Namespace) -> int:
    from stage4_finetune_align.evaluate import evaluate_model, evaluate_served
    from stage4_finetune_align.train import check_adapter

    if args.max_new_tokens < 1:
        raise BadInput(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.adapter is not None:
        check_adapter(args.adapter)  # before the progress bar: a wrong folder is one line, at once
    pairs, prompts = held_out(args)
    with progress(transient=True) as bar:
        if args.base_url:
            if not prompts:
                raise BadInput("--base-url measures replies only: drop --no-generation")
            task = bar.add_task(f"replies from {args.base_url}", total=len(prompts))
            result = evaluate_served(args.base_url, args.served_name, args.api_key, prompts, args.max_new_tokens,
                                     on_reply=lambda: bar.advance(task))  # fmt: skip
        else:
            scored = bar.add_task("held-out pairs (chosen and rejected)", total=2 * len(pairs))
            written = bar.add_task("replies to held-out prompts", total=len(prompts))
            result = evaluate_model(args.adapter, args.model, pairs, prompts, args.max_new_tokens,
                                    on_sequences=lambda n: bar.advance(scored, n), on_reply=lambda: bar.advance(written))  # fmt: skip
    if args.json:
        print_json(result)
        return 0
    who = f"{result['model']}" + (f" + {args.adapter}" if args.adapter else "")
    if result.get("likelihood_accuracy") is not None:
        d = result["training_diagnostic"]
        console.print(f"{who} on {result['n']} {args.split} pairs: likelihood accuracy {result['likelihood_accuracy']:.3f} "
                      f"({', '.join(f'{k} {v:.2f}' for k, v in result['likelihood_accuracy_by_fault'].items())}; median "
                      f"log p(chosen) - log p(rejected): {', '.join(f'{k} {v:+.1f}' for k, v in result['median_logprob_gap_by_fault'].items())} nats); "
                      f"{result['lengths']['truncated_share']:.0%} cut at {result['lengths']['max_length']} tokens")  # fmt: skip
        console.print(f"[dim]training diagnostic (implicit reward vs the base; the base is 0.5 by construction): "
                      f"accuracy {d['implicit_reward_accuracy']:.3f}, mean margin {d['mean_margin']:.2f}[/]")  # fmt: skip
    if "generation" in result:
        g = result["generation"]
        console.print(f"{who} on {g['prompts']} held-out prompts (greedy, {g['max_new_tokens']} new tokens): all three "
                      f"rules {g['all_rules']:.0%}, mean sentences {g['mean_sentences']:.1f}, blame rate "
                      f"{g['blame_rate']:.0%}")  # fmt: skip
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from stage4_finetune_align.train import merge

    out = merge(Path(args.adapter), Path(args.out), args.model)
    if args.json:
        print_json({"adapter": str(args.adapter), "merged": str(out), "model": args.model})
        return 0
    console.print(
        f"merged model written to {out}; serve it: python -m stage5_serving_ops serve --model {out}"
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from stage4_finetune_align.generation import generate_replies, served_replies, style_score

    prompts = [[{"role": "user", "content": p}] for p in args.prompt]
    if any(not p.strip() for p in args.prompt):
        raise BadInput("a prompt is empty")
    if args.held_out:
        from stage4_finetune_align.data import held_out_prompts

        prompts += held_out_prompts()[: args.held_out]
    if not prompts:
        raise BadInput("give a prompt, or --held-out N for the first N held-out prompts")
    if args.base_url:
        from shared.chat import OpenAIChatModel

        if not (args.base_name and args.tuned_name):
            raise BadInput("with --base-url, name both served models: --base-name and --tuned-name")
        base = served_replies(
            OpenAIChatModel(args.base_name, args.base_url, args.api_key), prompts, args.max_new_tokens
        )
        tuned = served_replies(OpenAIChatModel(args.tuned_name, args.tuned_url or args.base_url, args.api_key), prompts,
                               args.max_new_tokens)  # fmt: skip
    else:
        from stage4_finetune_align.evaluate import load_for_eval

        if args.adapter is None:
            raise BadInput("give --adapter (in this process) or --base-url (through a server)")
        model, tokenizer, _ = load_for_eval(args.adapter, args.model)
        with model.disable_adapter():
            base = generate_replies(model, tokenizer, prompts, args.max_new_tokens)
        tuned = generate_replies(model, tokenizer, prompts, args.max_new_tokens)
    rows = [{"prompt": p[-1]["content"], "base": b, "tuned": t, "base_style": style_score(b), "tuned_style": style_score(t)}
            for p, b, t in zip(prompts, base, tuned, strict=True)]  # fmt: skip
    if args.json:
        print_json(rows)
        return 0
    for row in rows:
        show(table(row["prompt"], ["model", "reply", "rules met"],
                   [("base", row["base"], f"{row['base_style']['score'] * 3:.0f}/3"),
                    ("tuned", row["tuned"], f"{row['tuned_style']['score'] * 3:.0f}/3")]))  # fmt: skip
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from shared import paths
    from stage4_finetune_align.bench import (
        METHOD_LABELS,
        carry_over,
        load_report,
        measure_method,
        measure_precision,
        measure_served,
        verdict,
        write_report,
    )

    quants = [q.strip() for q in args.quants.split(",") if q.strip()] if args.precisions else []
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if any(q not in ("none", "4bit", "8bit") for q in quants) or (args.precisions and not quants):
        raise BadInput(f"--quants takes none, 8bit and 4bit separated by commas, got {args.quants!r}")
    if any(m not in METHOD_LABELS for m in methods):
        raise BadInput(
            f"--methods takes {', '.join(METHOD_LABELS)} separated by commas, got {args.methods!r}"
        )
    if args.steps < 2:
        raise BadInput(f"--steps must be at least 2 (the first step is not timed), got {args.steps}")
    from stage4_finetune_align.data import load_pairs
    from stage4_finetune_align.generation import rules_on_the_data

    report: dict[str, Any] = {
        "model": args.model,
        "default_method": DEFAULT_METHOD,
        "rules_on_the_data": rules_on_the_data(
            load_pairs(split="test")
        ),  # the instrument, on held-out answers
        "methods": [],
        "precisions": [],
    }
    out_dir = Path(args.out) if args.out else paths.reports_dir()
    previous = load_report(out_dir)  # what this run does not re-measure is kept from it (carry_over)
    with progress() as bar:
        task = bar.add_task("methods", total=len(methods))
        for method in methods:
            row = measure_method(method, args.model, on_stage=lambda text: bar.update(task, description=text))
            report["methods"].append(row)
            report.update(held_out_pairs=row["held_out_pairs"], held_out_prompts=row["held_out_prompts"])
            bar.advance(task)
        partial = carry_over({**report, "methods": list(report["methods"])}, previous)
        if methods:  # the method rows are the long part: on disk before the served and precision runs
            write_report({**partial, "verdict": verdict(partial["methods"], DEFAULT_METHOD)}, out_dir)
        default = next((row for row in partial["methods"] if row["method"] == DEFAULT_METHOD), None)
        if args.served and default:
            task = bar.add_task("served", total=None)
            report["served"] = measure_served(
                default, args.model, on_stage=lambda t: bar.update(task, description=t)
            )
        task = bar.add_task("precisions", total=len(quants))
        for quant in quants:
            bar.update(task, description=f"{quant}: {args.steps} DPO steps in a fresh process")
            report["precisions"].append(measure_precision(quant, args.steps, args.batch_size, args.model))
            bar.advance(task)
    report = carry_over(report, previous)
    report["verdict"] = verdict(report["methods"], DEFAULT_METHOD)
    json_path, plot_path = write_report(report, out_dir)
    if args.json:
        print_json(report)
        return 0
    if report["methods"]:
        show(table(f"stage 4: {report['held_out_prompts']} held-out prompts, {report['held_out_pairs']} held-out pairs",
                   ["method", "minutes", "s/step", "likelihood acc.", "all 3 rules", "mean sentences", "blame rate"],
                   [(m["label"], f"{m['minutes']:.1f}", f"{m['seconds_per_step']:.1f}" if m["seconds_per_step"] else "-",
                     f"{m['likelihood_accuracy']:.3f}", f"{m['all_rules']:.0%}", f"{m['mean_sentences']:.1f}",
                     f"{m['blame_rate']:.0%}") for m in report["methods"]]))  # fmt: skip
    if report["precisions"]:
        show(table("stage 4: cost of a DPO step", ["precision", "device", "s/step", "base weights MB", "peak MB"],
                   [(r["label"], r["device"], f"{r['seconds_per_step']:.1f}", f"{r['base_footprint_mb']:.0f}",
                     f"{r['peak_memory_mb']:.0f}") for r in report["precisions"]]))  # fmt: skip
    if report.get("served"):
        sv = report["served"]
        console.print(f"{sv['method']} merged and served by vLLM: all 3 rules {sv['all_rules']:.0%} (in process "
                      f"{sv['in_process']['all_rules']:.0%}), mean sentences {sv['mean_sentences']:.1f}, blame rate "
                      f"{sv['blame_rate']:.0%}; {sv['identical_replies']}/{sv['prompts']} replies identical")  # fmt: skip
    if report["verdict"]:
        v = report["verdict"]
        console.print(
            f"default method {v['method']}: "
            + ", ".join(f"{k} {'met' if ok else 'NOT met'}" for k, ok in v["met"].items())
        )
    if report.get("carried_over"):
        console.print(f"kept from the earlier report (not re-measured): {', '.join(report['carried_over'])}")
    console.print(f"wrote {json_path} and {plot_path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Merge the adapter, serve base and tuned with stage 5's `serve`, and show their replies side by side."""
    from shared.chat import OpenAIChatModel
    from stage4_finetune_align.data import held_out_prompts
    from stage4_finetune_align.generation import first_served_model, served_replies, style_figures
    from stage4_finetune_align.serving import ServedModel, lora_name
    from stage4_finetune_align.train import check_adapter, merge

    check_adapter(args.adapter)
    if args.prompts < 1:
        raise BadInput(f"--prompts must be at least 1, got {args.prompts}")
    prompts = held_out_prompts()[: args.prompts]
    with progress(transient=True) as bar:
        bar.add_task("merging the adapter into the base", total=None)
        merged = merge(args.adapter, Path(args.merged), args.model)
    replies: dict[str, list[str]] = {}
    for title, model, lora in (
        ("base + adapter on vLLM", args.model, str(args.adapter)),
        ("merged", str(merged), None),
    ):
        with progress(transient=True) as bar:
            bar.add_task(f"starting vLLM: {title} (python -m stage5_serving_ops serve)", total=None)
            server = ServedModel(model, lora=lora).start()
        try:
            name = first_served_model(server.base_url)
            asked = (
                {"base": name, "tuned (adapter on vLLM)": lora_name(name)}
                if lora
                else {"tuned (merged)": name}
            )
            for shown, served in asked.items():
                replies[shown] = served_replies(
                    OpenAIChatModel(served, server.base_url), prompts, args.max_new_tokens
                )
        finally:
            server.stop()
    for i, prompt in enumerate(prompts):
        show(
            table(
                prompt[-1]["content"], ["served as", "reply"], [(name, r[i]) for name, r in replies.items()]
            )
        )
    show(table(f"style figures of the served replies ({len(prompts)} held-out prompts, greedy)",
               ["served as", "all 3 rules", "mean sentences", "blame rate"],
               [(name, f"{f['all_rules']:.0%}", f"{f['mean_sentences']:.1f}", f"{f['blame_rate']:.0%}")
                for name, f in ((n, style_figures(r)) for n, r in replies.items())]))  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stage4_finetune_align", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("curate", help="validate, clean, deduplicate and split a pairs file; report what went")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--balance", action="store_true", help="trim the majority side of the length bias to 50%%")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_curate)

    p = sub.add_parser("train", help="LoRA SFT, DPO, or SFT then DPO with PEFT and TRL (the capstone)")
    p.add_argument("--method", default=DEFAULT_METHOD, help=f"sft, dpo or sft-dpo (default {DEFAULT_METHOD})")
    p.add_argument("--quant", default="none", help="none (LoRA), 4bit (QLoRA, NF4) or 8bit")
    p.add_argument(
        "--steps", type=int, default=default("steps"), help="steps (for sft-dpo: of the DPO phase)"
    )
    p.add_argument("--sft-steps", type=int, default=default("sft_steps"), help="steps of sft-dpo's SFT phase")
    p.add_argument("--batch-size", type=int, default=default("batch_size"))
    p.add_argument("--learning-rate", type=float, default=default("learning_rate"))
    p.add_argument("--beta", type=float, default=default("beta"))
    p.add_argument(
        "--sft-weight",
        type=float,
        default=default("sft_weight"),
        help="DPO: add this times the chosen answer's NLL to the loss (RPO); 0 is plain DPO",
    )
    p.add_argument(
        "--max-length", type=int, default=0, help="tokens per sequence (default 0: fit the data, cut none)"
    )
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        help="an adapter to continue (DPO: its frozen copy is the reference)",
    )
    p.add_argument("--pairs", type=Path, default=None, help="a pairs file (default: the shipped one)")
    p.add_argument("--sft", type=Path, default=None, help="an SFT file (default: the shipped one)")
    p.add_argument("--out", default=None, help="run directory (default: artifacts/stage4/run)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--model", default=DEFAULT_CHAT_MODEL)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser(
        "eval", help="likelihood accuracy on held-out pairs, style figures of replies to held-out prompts"
    )
    p.add_argument(
        "--adapter", type=Path, default=None, help="a LoRA adapter (default: none, the base or --model)"
    )
    p.add_argument(
        "--model", default=DEFAULT_CHAT_MODEL, help="registry name or model folder (e.g. a merged model)"
    )
    p.add_argument(
        "--base-url", default=None, help="measure the replies of a served model instead (replies only)"
    )
    p.add_argument("--served-name", default=None, help="with --base-url: the model name (default: its first)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--pairs", type=Path, default=None)
    p.add_argument("--sft", type=Path, default=None, help="its test prompts join the held-out prompts")
    p.add_argument(
        "--split", default="test", help="the pairs split to score (replies are always to test prompts)"
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N pairs and N prompts")
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    p.add_argument("--no-generation", dest="generation", action="store_false", help="the pairs figures only")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser(
        "merge", help="fold an adapter into the base: a full model folder for Transformers and vLLM"
    )
    p.add_argument("--adapter", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=DEFAULT_CHAT_MODEL)
    p.add_argument("--json", action="store_true", help="print where the merged model went, as JSON")
    p.set_defaults(handler=cmd_merge)

    p = sub.add_parser(
        "compare", help="base and tuned replies side by side, in this process or through a server"
    )
    p.add_argument("prompt", nargs="*")
    p.add_argument("--held-out", type=int, default=0, help="also the first N held-out prompts")
    p.add_argument("--adapter", type=Path, default=None, help="in this process: the base with and without it")
    p.add_argument("--base-url", default=None, help="through a server: both models are served names there")
    p.add_argument("--tuned-url", default=None, help="the tuned model's server, if not the same one")
    p.add_argument("--base-name", default=None)
    p.add_argument("--tuned-name", default=None)
    p.add_argument("--api-key", default=None)
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    p.add_argument("--model", default=DEFAULT_CHAT_MODEL)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser(
        "demo", help="serve base and tuned with stage 5's vLLM server; their replies side by side"
    )
    p.add_argument("--adapter", type=Path, default=Path("artifacts/stage4/run/adapter"))
    p.add_argument("--merged", default="artifacts/stage4/merged", help="where merge writes the full model")
    p.add_argument("--prompts", type=int, default=3, help="how many held-out prompts")
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    p.add_argument("--model", default=DEFAULT_CHAT_MODEL)
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser(
        "bench", help="per method: minutes, likelihood accuracy, style figures; per precision: s/step, memory"
    )
    p.add_argument(
        "--methods", default="base,sft,dpo,sft-dpo", help="methods to train and evaluate, comma-separated"
    )
    p.add_argument("--quants", default="none,8bit,4bit", help="precisions to time, comma-separated")
    p.add_argument(
        "--no-precisions", dest="precisions", action="store_false", help="skip the precision table"
    )
    p.add_argument("--no-served", dest="served", action="store_false",
                   help="skip merging the default method and scoring it through stage 5's vLLM server")  # fmt: skip
    p.add_argument("--steps", type=int, default=3, help="DPO steps per precision (the first is not timed)")
    p.add_argument("--batch-size", type=int, default=2, help="batch size of the precision runs")
    p.add_argument("--out", default=None, help="report folder (default reports/)")
    p.add_argument("--model", default=DEFAULT_CHAT_MODEL)
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
