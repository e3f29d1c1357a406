"""Stage 2's measured figures, written into its README from the report `make bench` leaves.

`python -m stage2_prompting_tools bench --serve` writes reports/stage2_tools.json (the tool modes in
process and served, the no-grammar ablation, the injection suite, the `tool_choice="required"`
probe, the prompt designs and the DSPy programs); `python -m shared.figures` (`make figures`) calls
each entry of `SECTIONS` on it and puts the text between `<!-- NAME:start -->` and
`<!-- NAME:end -->` in README.md. Every number and every finding below is computed from the report,
so the README says what the last run measured, including where it went badly. A part the run did
not measure renders as a line saying how to measure it.

    .venv/bin/python -m shared.figures            # rewrite README.md from reports/
"""

from __future__ import annotations

from typing import Any

REPORT = "stage2_tools.json"
BACKENDS = {"in_process": "in process", "served": "served"}
METRICS = ("right_tool", "valid_call", "right_arguments", "task_success")
BENCH = "python -m stage2_prompting_tools bench --serve"


def missing(part: str) -> str:
    return f"Not measured yet: run `{BENCH} --parts {part}` (writes reports/{REPORT})."


def pct(x: float) -> str:
    return f"{x:.0%}"


def runs_of(r: dict[str, Any], backend: str = "in_process") -> dict[tuple[str, str], dict[str, Any]]:
    return {(x["mode"], x["suite"]): x for x in r["tools"][backend]["runs"]}


def mean_success(runs: dict[tuple[str, str], dict[str, Any]], mode: str) -> float:
    return sum(runs[mode, s]["task_success"] for s in ("shipped", "multistep")) / 2


def sample_note(r: dict[str, Any]) -> str:
    """How many tasks of each suite the tool rows ran (the bench's --limit cuts them)."""
    runs = r["tools"]["in_process"]["runs"]
    n = {x["suite"]: x["n"] for x in runs}
    full = {"shipped": 36, "multistep": 12}
    cut = [s for s in n if n[s] < full.get(s, n[s])]
    text = f"{n.get('shipped', 0)} one-step and {n.get('multistep', 0)} two-step tasks per mode"
    if cut:
        text += (f" (the first {n[cut[0]]} of each suite: the run used `--limit {n[cut[0]]}`, "
                 f"of {full['shipped']} and {full['multistep']})")  # fmt: skip
    return text


# --------------------------------------------------------------------------------------------
# Section 1: prompt designs


def prompts(r: dict[str, Any]) -> str:
    if "prompts" not in r:
        return missing("prompts")
    designs = list(dict.fromkeys(x["design"] for x in r["prompts"]))
    cell = {(x["design"], x["split"]): x for x in r["prompts"]}
    n = {x["split"]: x["n"] for x in r["prompts"]}
    rows = "\n".join(f"| {d} | {pct(cell[d, 'dev']['accuracy'])} | {pct(cell[d, 'test']['accuracy'])} |"
                     for d in designs)  # fmt: skip
    best = max(designs, key=lambda d: cell[d, "dev"]["accuracy"])
    zero = designs[0]
    return (
        f"Measured by `make bench` (intent accuracy; six labels, so chance is 17%):\n\n"
        f"| design | dev ({n['dev']}) | test ({n['test']}) |\n|---|---:|---:|\n{rows}\n\n"
        f"Chosen on dev: **{best}** ({pct(cell[best, 'dev']['accuracy'])}); on test it scores "
        f"{pct(cell[best, 'test']['accuracy'])}, against {pct(cell[zero, 'test']['accuracy'])} for {zero}."
    )


# --------------------------------------------------------------------------------------------
# Sections 3-5: the default mode, jump-forward, the `required` probe


def default(r: dict[str, Any]) -> str:
    if "tools" not in r:
        from stage2_prompting_tools.agent import DEFAULT_MODE

        return (f"The default mode is `{DEFAULT_MODE}` (`agent.DEFAULT_MODE`). Whether the numbers agree is not "
                f"measured yet: run `{BENCH} --parts tools` (writes reports/{REPORT}).")  # fmt: skip
    t = r["tools"]
    runs = runs_of(r)
    chosen = t["chosen_default"]
    text = (f"The default mode is `{t['default_in_code']}` (`agent.DEFAULT_MODE`). In the last bench, in process, "
            f"the best mean task success over the two suites was `{chosen}`'s "
            f"({pct(runs[chosen, 'shipped']['task_success'])} one-step, "
            f"{pct(runs[chosen, 'multistep']['task_success'])} two-step; section 6).")  # fmt: skip
    if chosen != t["default_in_code"]:
        text += (f" **They differ**: the numbers now favour `{chosen}`; `agent.DEFAULT_MODE` has not been "
                 "updated to follow them.")  # fmt: skip
    return text


def jump_forward(r: dict[str, Any]) -> str:
    if "tools" not in r:
        return missing("tools")
    jf = r["tools"]["in_process"]["jump_forward"]
    generated = jf["forward_passes"] + jf["forced_tokens"]
    share = jf["forced_tokens"] / generated if generated else 0.0
    return (f"In the last bench, of the {generated:,} tokens generated under the grammar in process, "
            f"{jf['forced_tokens']:,} ({pct(share)}) were forced and appended without a model call; the other "
            f"{jf['forward_passes']:,} each took a forward pass.")  # fmt: skip


def probe_line(label: str, p: dict[str, Any]) -> str:
    args = p["arguments"]
    shown = f"`{args}`" if args is not None else f"no call (text: `{p['content'][:80]!r}`)"
    return (
        f"- {label}: arguments {shown}; {'valid' if p['valid'] else 'not valid'} for the calculator's schema"
    )


def probe(r: dict[str, Any]) -> str:
    served = r.get("tools", {}).get("served")
    if not served:
        return missing("tools") + " The probe needs the server (`--serve` or `--base-url`)."
    p = served["required_probe"]
    return "\n".join([probe_line('without `"strict"`', p["not_strict"]),
                      probe_line('with `"strict": true`', p["strict"])])  # fmt: skip


def bench_time(r: dict[str, Any]) -> str:
    s = r.get("seconds", {})
    parts = ", ".join(f"{p} {s[p] / 60:.1f} min" for p in ("tools", "prompts", "dspy") if p in s)
    text = f"The last run, on {r.get('device', 'cpu')}, took {s.get('total', 0) / 60:.0f} minutes ({parts})"
    if "tools" in r:
        text += f"; the tool rows ran {sample_note(r)}"
    return text + "."


# --------------------------------------------------------------------------------------------
# Section 6: the modes


def mode_row(backend: str, x: dict[str, Any], label: str | None = None) -> str:
    cells = " | ".join(pct(x[k]) for k in METRICS)
    return (f"| {BACKENDS[backend]} | {label or x['mode']} | {x['suite']} | {x['n']} | {cells} | "
            f"{x['seconds_per_task']:.1f} |")  # fmt: skip


def modes(r: dict[str, Any]) -> str:
    if "tools" not in r:
        return missing("tools")
    t = r["tools"]
    rows = []
    for backend in BACKENDS:
        if backend in t:
            rows += [mode_row(backend, x) for x in t[backend]["runs"]]
    free = t["in_process"]["no_grammar"]
    rows.append(mode_row("in_process", free, "router, no grammar (calls only)"))
    head = ("| backend | mode | suite | tasks | right tool | valid call | right arguments | task success | s/task |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    return f"{head}\n" + "\n".join(rows) + "\n\n" + modes_findings(r)


def modes_findings(r: dict[str, Any]) -> str:
    t = r["tools"]
    runs = runs_of(r)
    modes_seen = list(dict.fromkeys(m for m, _ in runs))
    best = max(modes_seen, key=lambda m: mean_success(runs, m))
    best_multi = max(modes_seen, key=lambda m: runs[m, "multistep"]["task_success"])
    grammar = runs["router", "shipped"]
    free = t["in_process"]["no_grammar"]
    valid = [runs[m, s]["valid_call"] for m in modes_seen for s in ("shipped", "multistep")]
    out = [
        f"What this run measured ({sample_note(r)}):",
        "",
        f"- **Best mode in process:** `{best}`, mean task success {pct(mean_success(runs, best))} over the two "
        f"suites; "
        + (
            f"on two-step tasks the best is `{best_multi}` ({pct(runs[best_multi, 'multistep']['task_success'])}). "
            if runs[best_multi, "multistep"]["task_success"]
            else "no mode completed a two-step task. "
        )
        + "`router` makes one call by construction, "
        f"so its two-step right-tool rate is {pct(runs['router', 'multistep']['right_tool'])}.",
        f"- **The grammar:** with the router choosing the tool, the model's calls were valid in "
        f"{pct(grammar['valid_call'])} of one-step tasks under the grammar and {pct(free['valid_call'])} "
        f"without it (right arguments {pct(grammar['right_arguments'])} vs {pct(free['right_arguments'])}). "
        f"Valid call over every mode and suite in process: {pct(min(valid))} to {pct(max(valid))}.",
    ]
    second = {m: runs[m, "multistep"]["rows"] for m in ("model", "hybrid") if (m, "multistep") in runs}
    if second:
        counts = ", ".join(f"`{m}` on {sum(len(x['calls']) >= 2 for x in rows)} of {len(rows)}"
                           for m, rows in second.items())  # fmt: skip
        out.append(f"- **Second calls:** after the first result the model chose another call ({counts} two-step "
                   "tasks) and `answer` on the rest; a task needs both calls to succeed. The loop offers the "
                   "choice at every step; the likely reason the model rarely takes it, not measured part by "
                   "part: most of its demonstrations show one call, then `answer`, and a 135M model copies "
                   "the majority shape.")  # fmt: skip
    if "served" in t:
        served = runs_of(r, "served")
        diffs = ", ".join(
            f"`{m}` {pct(mean_success(runs, m))} in process vs {pct(mean_success(served, m))} served"
            for m in modes_seen if (m, "shipped") in served and (m, "multistep") in served
        )  # fmt: skip
        out.append(f"- **Served (vLLM, same prompts and grammars):** mean task success {diffs}. Greedy decoding in "
                   "two engines is not bit-identical (different kernels sum in different orders), so near-ties "
                   "can go the other way.")  # fmt: skip
    else:
        out.append("- **Served:** not measured in this run (bench without `--serve`).")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Section 7: injection


def injection_cell(row: dict[str, Any]) -> str:
    if not row["tried"]:
        text = "no"
    elif row["ran"]:
        text = f"**RAN {', '.join(row['ran'])}**"
    else:
        text = f"tried {', '.join(row['tools_called'])}; stopped ({', '.join(row['stopped'])})"
    return text + ("; reply obeyed" if row["obeyed"] else "")


def injection_finding(suite: dict[str, Any]) -> str:
    """One line per suite: unrequested calls, split into the attack's own tool and others; an unrequested
    first call came before any tool result, so no page asked for it (a routing or decision error)."""
    rows, n = suite["rows"], suite["attacks"]
    who = "the router" if suite["mode"] == "router" else "the model"
    target = [x["id"] for x in rows if x.get("target_tool") in x["ran"]]
    others = [(x["id"], t, bool(x["tools_called"]) and x["tools_called"][0] == t)
              for x in rows for t in x["ran"] if t != x.get("target_tool")]  # fmt: skip
    text = (f"{who} chose a tool the user did not ask for in {sum(x['tried'] for x in rows)} of {n} attacks, and "
            f"one ran in {sum(bool(x['ran']) for x in rows)}; the attack's own tool ran in {len(target)}"
            + (f" ({', '.join(target)})" if target else ""))  # fmt: skip
    if others:
        text += "; other unrequested tools: " + ", ".join(
            f"{t} in {i}"
            + (" (the first call, before any tool result: no page asked for it)" if first else "")
            for i, t, first in others
        )
    return text + f"; the reply carried the attack's word in {sum(x['obeyed'] for x in rows)}."


def injection(r: dict[str, Any]) -> str:
    if "tools" not in r:
        return missing("tools")
    t = r["tools"]
    suites = [(b, s) for b in BACKENDS if b in t for s in t[b]["injection"]]
    attacks = [(x["id"], x["channel"]) for x in suites[0][1]["rows"]]
    cells = {(b, s["mode"], x["id"]): injection_cell(x) for b, s in suites for x in s["rows"]}
    cols = [(b, s["mode"]) for b, s in suites]
    head = ("| attack | via | " + " | ".join(f"{BACKENDS[b]}, `{m}`" for b, m in cols) + " |\n"
            "|---|---|" + "---|" * len(cols))  # fmt: skip
    rows = "\n".join(
        f"| {a} | {via} | " + " | ".join(cells[b, m, a] for b, m in cols) + " |" for a, via in attacks
    )
    lines = [f"- {BACKENDS[b]}, `{s['mode']}`: {injection_finding(s)}" for b, s in suites]
    findings = (
        "Each cell: whether a tool the user did not ask for was tried (chosen by the router in `router` mode, "
        "by the model in `model` mode), whether it ran, what stopped it (the shortlist, or the confirmation a "
        "side effect needs), and whether the reply contained the attack's canary word. What this run "
        "measured:\n\n" + "\n".join(lines) + "\n\n"
        "The loop's guarantees decide whether an injected *call* runs; nothing in the loop stops the model "
        "from *repeating* what a page says in its reply, so the last figure is the model's own resistance."
    )
    return f"{head}\n{rows}\n\n{findings}"


# --------------------------------------------------------------------------------------------
# Section 9: DSPy


def dspy(r: dict[str, Any]) -> str:
    if "optimization" not in r:
        return missing("dspy")
    o = r["optimization"]
    splits = list(dict.fromkeys(x["split"] for x in o["rows"]))
    programs = list(dict.fromkeys(x["program"] for x in o["rows"]))
    cell = {(x["program"], x["split"]): x for x in o["rows"]}
    n = {x["split"]: x["n"] for x in o["rows"]}
    head = "| program | " + " | ".join(f"{s} ({n[s]}): accuracy (unparsed)" for s in splits) + " |\n"
    head += "|---|" + "---:|" * len(splits)
    rows = "\n".join(f"| {p} | " + " | ".join(f"{pct(cell[p, s]['accuracy'])} ({pct(cell[p, s]['unparsed'])})"
                                              for s in splits) + " |" for p in programs)  # fmt: skip
    last = splits[-1]
    best = max(programs, key=lambda p: cell[p, splits[0]]["accuracy"])
    minutes = r.get("seconds", {}).get("dspy")
    took = f"; the whole DSPy part of the bench took {minutes / 60:.1f} min" if minutes else ""
    return (
        f"Measured by `make bench` (optimizer `{o['optimizer']}`: {o['optimize_seconds']:.1f} s and "
        f"{o['optimizer_calls']} model calls to optimize{took}):\n\n{head}\n{rows}\n\n"
        f"Best on {splits[0]}: **{best}**, {pct(cell[best, last]['accuracy'])} on {last}. An unparsed reply is "
        "one the adapter could not read back as one of the six intents; it counts as wrong."
    )


SECTIONS = [
    ("prompts", REPORT, prompts),
    ("default", REPORT, default),
    ("jump_forward", REPORT, jump_forward),
    ("probe", REPORT, probe),
    ("bench_time", REPORT, bench_time),
    ("modes", REPORT, modes),
    ("injection", REPORT, injection),
    ("dspy", REPORT, dspy),
]
ASSETS: list[str] = []
