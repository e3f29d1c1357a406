"""The decode benchmark: what the KV cache buys, measured on your machine.

Three ways to produce the same number of tokens from the same prompt, in the same run:

    generate      Hugging Face's `model.generate` (greedy), the reference
    loop+cache    our hand-written loop with past_key_values (decode.py)
    loop-nocache  our loop re-running the whole sequence every step

Each is timed at several output lengths, EOS ignored so every run produces exactly that many
tokens, best of `repeats` runs (the least disturbed by whatever else the machine was doing; the
uncached loop above 128 tokens runs once, since one run takes minutes).
What to look for: the cached loop keeps pace with `generate` (target: at least 0.9x), and the
uncached loop falls further behind the longer the output, because its step t costs O(t) and the
whole run O(n^2). The plot shows both: tokens per second, and total seconds against length.

    python -m stage1_foundations bench                  # lengths 32,128,512; about 15 min on 2 CPU cores
    python -m stage1_foundations bench --lengths 16,64 --repeats 1 --json
Writes reports/stage1_decode.json and reports/stage1_decode.png.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch

from shared import paths
from stage1_foundations.decode import DecodeConfig, generate

PROMPT = "The history of the Roman Empire begins"
METHODS = ("generate", "loop+cache", "loop-nocache")
TARGET_CACHED_VS_GENERATE = 0.9


def _time_best(run: Callable[[], int], repeats: int) -> tuple[float, int]:
    """Best (shortest) wall time of `repeats` runs, and the tokens the run produced."""
    best, produced = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        produced = run()
        best = min(best, time.perf_counter() - start)
    return best, produced


def _runner(method: str, model: Any, tokenizer: Any, prompt_ids: list[int], n: int) -> Callable[[], int]:
    if method == "generate":
        ids = torch.tensor([prompt_ids], device=model.device)
        mask = torch.ones_like(ids)

        def run_generate() -> int:
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=tokenizer.eos_token_id,
                )
            return out.shape[1] - len(prompt_ids)

        return run_generate
    config = DecodeConfig(max_new_tokens=n, use_cache=method == "loop+cache", ignore_eos=True)
    return lambda: generate(model, tokenizer, prompt_ids, config).new_tokens


def run_benchmark(
    model: Any,
    tokenizer: Any,
    lengths: list[int],
    repeats: int = 2,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    assert lengths and all(n >= 1 for n in lengths), "lengths must be positive integers"
    assert repeats >= 1, "repeats must be at least 1"
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    for method in METHODS:  # warm-up: first calls pay for allocation and kernel selection
        _runner(method, model, tokenizer, prompt_ids, 4)()
    rows = []
    for n in lengths:
        for method in METHODS:
            if on_step:
                on_step(f"{method} x {n} tokens")
            seconds, produced = _time_best(_runner(method, model, tokenizer, prompt_ids, n), repeats)
            assert produced == n, f"{method} produced {produced} tokens, expected {n}"
            rows.append(
                {"method": method, "new_tokens": n, "seconds": seconds, "tokens_per_second": n / seconds}
            )

    def tps(method: str, n: int) -> float:
        return next(r["tokens_per_second"] for r in rows if r["method"] == method and r["new_tokens"] == n)

    cached_vs_generate = {n: tps("loop+cache", n) / tps("generate", n) for n in lengths}
    uncached_slowdown = {n: tps("loop+cache", n) / tps("loop-nocache", n) for n in lengths}
    slowdowns = [uncached_slowdown[n] for n in sorted(lengths)]
    return {
        "model": getattr(model, "name_or_path", ""),
        "device": str(model.device),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "prompt": PROMPT,
        "prompt_tokens": len(prompt_ids),
        "repeats": repeats,
        "results": rows,
        "cached_vs_generate": cached_vs_generate,
        "uncached_slowdown": uncached_slowdown,
        "targets": {
            "cached_at_least_0.9x_generate": min(cached_vs_generate.values()) >= TARGET_CACHED_VS_GENERATE,
            "uncached_slowdown_grows_with_length": all(b > a for a, b in pairwise(slowdowns)),
        },
    }


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, style in zip(METHODS, ("-o", "-s", "--^"), strict=True):
        rows = [r for r in report["results"] if r["method"] == method]
        xs = [r["new_tokens"] for r in rows]
        left.plot(xs, [r["tokens_per_second"] for r in rows], style, label=method)
        right.plot(xs, [r["seconds"] for r in rows], style, label=method)
    left.set(xscale="log", xlabel="new tokens", ylabel="tokens / second", title="Decode speed")
    right.set(
        xscale="log",
        yscale="log",
        xlabel="new tokens",
        ylabel="seconds (log)",
        title="Total time: O(n) with a KV cache, O(n^2) without",
    )
    lengths = sorted({r["new_tokens"] for r in report["results"]})
    for ax in (left, right):
        ax.minorticks_off()
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{report['model'] or 'model'} on {report['device']} ({report['machine']})", fontsize=9)
    fig.tight_layout()
    return paths.atomic_savefig(fig, path, dpi=110)


def write_report(report: dict[str, Any], name: str = "stage1_decode") -> tuple[Path, Path]:
    reports = paths.ensure(paths.reports_dir())
    json_path = paths.atomic_write_text(reports / f"{name}.json", json.dumps(report, indent=2) + "\n")
    return json_path, plot(report, reports / f"{name}.png")
