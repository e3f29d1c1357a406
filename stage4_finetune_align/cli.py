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


def cmd_curate(args: argparse.Namespace) -> int:
    from stage4_finetune_align.data import curate, load_pairs, write_pairs

    rows = load_pairs(Path(args.input))
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
    from stage4_finetune_align.dpo import TrainConfig, train

    config = TrainConfig(method=args.method, quant=args.quant, steps=args.steps, batch_size=args.batch_size,
                         learning_rate=args.learning_rate, beta=args.beta, model=args.model, out=args.out or "")  # fmt: skip
    with progress() as bar:
        task = bar.add_task(f"{args.method} ({args.quant})", total=config.steps)

        def on_step(log: dict[str, Any]) -> None:
            bar.update(task, completed=log["step"])
            if not args.json:
                shown = ", ".join(
                    f"{k} {log[k]:.3f}" for k in ("loss", "rewards/margins", "rewards/accuracies") if k in log
                )
                bar.console.print(f"step {log['step']}: {shown}")

        summary = train(config, resume=args.resume, pairs_path=args.pairs, on_step=on_step)
    if args.json:
        print_json({k: v for k, v in summary.items() if k != "history"})
        return 0
    console.print(f"{summary['steps']} steps in {summary['seconds']:.0f} s ({summary['seconds_per_step']:.1f} s/step); "
                  f"adapter {summary['adapter']}")  # fmt: skip
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from stage4_finetune_align.data import PAIRS_PATH, load_pairs
    from stage4_finetune_align.evaluate import preference_eval

    pairs = load_pairs(args.pairs or PAIRS_PATH, split=args.split)[: args.limit]
    with progress(transient=True) as bar:
        task = bar.add_task("scoring held-out pairs", total=len(pairs))
        result = preference_eval(pairs, args.adapter, args.model, on_pair=lambda: bar.advance(task))
    if args.json:
        print_json(result)
        return 0
    console.print(f"{'tuned' if args.adapter else 'base'} model on {result['n']} {args.split} pairs: preference accuracy "
                  f"{result['preference_accuracy']:.3f} (implicit reward), mean margin {result['mean_margin']:.3f}, "
                  f"likelihood accuracy {result['likelihood_accuracy']:.3f}")  # fmt: skip
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from stage4_finetune_align.dpo import merge

    out = merge(Path(args.adapter), Path(args.out), args.model)
    console.print(f"merged model written to {out}; serve it with vLLM or load it with from_pretrained")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import torch

    from stage4_finetune_align.evaluate import load_for_eval, style_score

    if not args.prompt.strip():
        raise BadInput("the prompt is empty")
    model, tokenizer, _ = load_for_eval(Path(args.adapter), args.model)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)  # fmt: skip

    def generate() -> str:
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=args.max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)  # fmt: skip
        return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()

    with model.disable_adapter():
        base = generate()
    tuned = generate()
    result = {"prompt": args.prompt, "base": base, "tuned": tuned, "base_style": style_score(base),
              "tuned_style": style_score(tuned)}  # fmt: skip
    if args.json:
        print_json(result)
        return 0
    show(table(args.prompt, ["model", "answer", "style"], [("base", base, f"{result['base_style']['score']:.2f}"),
                                                          ("tuned", tuned, f"{result['tuned_style']['score']:.2f}")]))  # fmt: skip
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from shared import paths
    from stage4_finetune_align.bench import capstone, measure_precision, write_report

    quants = [q.strip() for q in args.quants.split(",") if q.strip()]
    unknown = [q for q in quants if q not in ("none", "4bit", "8bit")]
    if unknown or not quants:
        raise BadInput(f"--quants takes none, 8bit and 4bit separated by commas, got {args.quants!r}")
    if args.steps < 2:
        raise BadInput(f"--steps must be at least 2 (the first step is not timed), got {args.steps}")
    report: dict[str, Any] = {"model": args.model, "precisions": []}
    with progress() as bar:
        task = bar.add_task("precisions", total=len(quants))
        for quant in quants:
            bar.update(task, description=f"{quant}: {args.steps} steps in a fresh process")
            report["precisions"].append(measure_precision(quant, args.steps, args.batch_size, args.model))
            bar.advance(task)
        if args.capstone:
            from stage4_finetune_align.data import load_pairs

            steps = bar.add_task("capstone: 30 DPO steps", total=30)
            scored = bar.add_task("held-out pairs, before and after", total=2 * len(load_pairs(split="test")))
            report["capstone"] = capstone(args.model, on_step=lambda log: bar.update(steps, completed=log["step"]),
                                          on_pair=lambda: bar.advance(scored))  # fmt: skip
    json_path, plot_path = write_report(report, Path(args.out) if args.out else paths.reports_dir())
    if args.json:
        print_json(report)
        return 0
    show(table("stage 4: cost of a DPO step", ["precision", "device", "s/step", "base weights MB", "peak MB"],
               [(r["label"], r["device"], f"{r['seconds_per_step']:.1f}", f"{r['base_footprint_mb']:.0f}",
                 f"{r['peak_memory_mb']:.0f}")
                for r in report["precisions"]]))  # fmt: skip
    if "capstone" in report:
        cap = report["capstone"]
        console.print(f"capstone: {cap['steps']} steps in {cap['wall_seconds'] / 60:.1f} min; held-out preference "
                      f"accuracy {cap['preference_accuracy_before']:.3f} -> {cap['preference_accuracy_after']:.3f} "
                      f"on {cap['held_out_pairs']} pairs")  # fmt: skip
    console.print(f"wrote {json_path} and {plot_path}")
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

    p = sub.add_parser("train", help="LoRA SFT or DPO (the capstone) with PEFT and TRL")
    p.add_argument("--method", default="dpo", help="dpo or sft")
    p.add_argument("--quant", default="none", help="none (LoRA), 4bit (QLoRA, NF4) or 8bit")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--pairs", type=Path, default=None, help="a pairs file (default: the shipped one)")
    p.add_argument("--out", default=None, help="run directory (default: artifacts/stage4/run)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--model", default=DEFAULT_CHAT_MODEL)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser(
        "eval", help="held-out preference accuracy and DPO margin (no adapter: the base model)"
    )
    p.add_argument("--adapter", type=Path, default=None)
    p.add_argument("--pairs", type=Path, default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--model", default=DEFAULT_CHAT_MODEL)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("merge", help="fold an adapter into the base: a plain model directory")
    p.add_argument("--adapter", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=DEFAULT_CHAT_MODEL)
    p.set_defaults(handler=cmd_merge)

    p = sub.add_parser("compare", help="base and tuned answers to one prompt, side by side")
    p.add_argument("prompt")
    p.add_argument("--adapter", required=True)
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--model", default=DEFAULT_CHAT_MODEL)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser(
        "bench",
        help="s/step and peak memory per precision, and the capstone run -> reports/stage4_train.json",
    )
    p.add_argument("--quants", default="none,8bit,4bit", help="precisions to time, comma-separated")
    p.add_argument("--steps", type=int, default=3, help="steps per precision (the first is not timed)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument(
        "--no-capstone",
        dest="capstone",
        action="store_false",
        help="skip the default 30-step run and its before/after evaluation",
    )
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
