"""`make figures`: the headline numbers of every benchmark report, written into the top README.

The README's "Measured" section sits between two HTML comments and is generated from the JSON that
`make bench` writes under reports/, so the numbers a learner reads are the numbers a run produced.
A report that is missing leaves its stage's row saying so (run that stage's bench).

    .venv/bin/python -m shared.figures            # rewrite the section in README.md
    .venv/bin/python -m shared.figures --check    # exit 1 if README.md differs from the reports
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import BadInput, console, run_cli

START, END = "<!-- figures:start -->", "<!-- figures:end -->"


def _load(name: str, reports: Path) -> dict[str, Any] | None:
    try:
        return json.loads((reports / name).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def stage1(r: dict[str, Any]) -> str:
    rates = {(x["method"], x["new_tokens"]): x["tokens_per_second"] for x in r["results"]}
    longest = max(n for _, n in rates)
    methods = sorted({m for m, _ in rates})
    shown = ", ".join(f"{m} {rates[(m, longest)]:.1f}" for m in methods if (m, longest) in rates)
    return f"decode tok/s at {longest} new tokens ({r['device']}): {shown}"


def stage2(r: dict[str, Any]) -> str:
    c, u = r["constrained"], r["unconstrained"]
    return (f"tool calls on {r['tasks']} tasks, constrained: right tool {c['selection_accuracy']:.0%}, valid "
            f"{c['valid_call_rate']:.0%}, right arguments {c['argument_accuracy']:.0%} (free generation: valid "
            f"{u['valid_call_rate']:.0%})")  # fmt: skip


def stage3(r: dict[str, Any]) -> str:
    modes = {m["mode"]: m for m in r["modes"]}
    best = max(modes.values(), key=lambda m: m["mrr@10"])
    return (f"MRR@10 on {best['n']} test questions: bm25 {modes['bm25']['mrr@10']:.3f}, dense "
            f"{modes['dense']['mrr@10']:.3f}, best ({best['mode']}) {best['mrr@10']:.3f}; index build "
            f"{r['index']['build_seconds']:.0f} s; routing {r['routing']['accuracy']:.0%}")  # fmt: skip


def stage4(r: dict[str, Any]) -> str:
    methods = {m["method"]: m for m in r.get("methods", [])}
    parts = [f"{m['method']} {m['all_rules']:.0%} / {m['likelihood_accuracy']:.2f}"
             + (f" in {m['minutes']:.1f} min" if m["minutes"] else "") for m in methods.values()]  # fmt: skip
    text = (f"held-out replies meeting all 3 style rules / likelihood accuracy on held-out pairs: {', '.join(parts)}"
            f" (default {r['default_method']})") if parts else ""  # fmt: skip
    if r.get("served"):
        sv = r["served"]
        text += f"; served by vLLM {sv['all_rules']:.0%} ({sv['identical_replies']}/{sv['prompts']} replies as in process)"
    if r.get("precisions"):
        rows = ", ".join(f"{p['quant']} {p['seconds_per_step']:.1f} s/step" for p in r["precisions"])
        text += ("; " if text else "") + f"DPO step ({r['precisions'][0]['device']}): {rows}"
    return text


def stage5(r: dict[str, Any]) -> str:
    levels = {lv["concurrency"]: lv for lv in r["levels"]}
    top = max(levels.values(), key=lambda lv: lv["output_tokens_per_s"])
    text = (f"vLLM ({r['device']}): {levels[min(levels)]['output_tokens_per_s']:.1f} tok/s at {min(levels)} user(s), "
            f"{top['output_tokens_per_s']:.1f} at {top['concurrency']}")  # fmt: skip
    if r.get("baseline"):
        text += f"; Transformers one by one {r['baseline']['output_tokens_per_s']:.1f}"
    return text


def stage5_quant(r: dict[str, Any]) -> str:
    return "; ".join(
        f"{x['precision']} {x['footprint_mb']:.0f} MB ppl {x['perplexity']:.1f}" for x in r["rows"]
    )


SOURCES: list[tuple[str, str, Callable[[dict[str, Any]], str]]] = [
    ("1", "stage1_decode.json", stage1),
    ("2", "stage2_tools.json", stage2),
    ("3", "stage3_retrieval.json", stage3),
    ("4", "stage4_train.json", stage4),
    ("5", "stage5_serving.json", stage5),
    ("5", "stage5_quantization.json", stage5_quant),
]


def section(reports: Path | None = None) -> str:
    reports = reports or paths.reports_dir()
    rows = []
    for stage, name, summarise in SOURCES:
        report = _load(name, reports)
        try:
            text = summarise(report) if report else f"no report yet: run `make bench` (writes reports/{name})"
        except (KeyError, TypeError, ValueError) as e:
            text = f"reports/{name} has an unexpected shape ({e!r}); rerun its bench"
        rows.append(f"| {stage} | {text} |")
    return "\n".join([START, "| stage | measured by `make bench` |", "|---|---|", *rows, END])


def update(readme: Path, reports: Path | None = None) -> tuple[str, str]:
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise BadInput(f"{readme} has no {START} ... {END} section to fill")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    return text, before + section(reports) + after


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.figures", description=__doc__.split("\n")[0])
    parser.add_argument("--readme", type=Path, default=paths.REPO_ROOT / "README.md")
    parser.add_argument("--check", action="store_true", help="only say whether the README is up to date")
    args = parser.parse_args(argv)
    old, new = update(args.readme)
    if args.check:
        console.print(
            "README figures are up to date" if old == new else "README figures differ from reports/"
        )
        return 0 if old == new else 1
    if new != old:
        paths.atomic_write_text(args.readme, new)
    console.print(f"{args.readme}: figures {'updated' if new != old else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
