"""The decode benchmark: what the KV cache, the hand-written model and batching buy, on your machine.

Everything in one run, on one machine, greedy, EOS ignored so that every run makes exactly N tokens:

**Batch 1, by output length** (32, 128, 512 new tokens; best of `repeats` runs, the least disturbed
by whatever else the machine was doing; the uncached loop above 128 tokens runs once, since one run
takes minutes):

    generate        Hugging Face's `model.generate`, the reference
    loop+cache      decode.py's loop on Transformers' model, with its DynamicCache
    loop-nocache    the same loop re-running the whole sequence every step: O(n^2)
    scratch+static  decode.py's loop on the hand-written model (model.py) with its static cache

**Batches** of 1, 4 and 16 prompts of different lengths (batch.py), for both engines: aggregate
tokens per second. **bf16**: the same batch-1 run in bfloat16, where the CPU supports it.

**What bounds batch 1.** Each decode step reads every weight once (the tied head reads the whole
embedding table), so tokens/s can be no more than memory bandwidth / bytes of weights. The bench
measures this machine's read bandwidth (summing a 256 MiB tensor) and reports that ceiling beside
the measured speed. A batch reads the same weights once for all its rows: that is why batching pays.

Targets: the hand-written model at batch 1 at least 1.0x `generate`; batch 16 at least 5x batch 1 in
aggregate tokens/s; the cached loop at least 0.9x `generate`; the uncached slowdown growing with length.

    python -m stage1_foundations bench                  # lengths 32,128,512; about 12 min on 2 CPU cores
    python -m stage1_foundations bench --lengths 16,64 --repeats 1 --batch-sizes 1,4 --json
Writes reports/stage1_decode.json and reports/stage1_decode.png.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch

from shared import paths
from stage1_foundations.batch import decode_batch
from stage1_foundations.decode import DecodeConfig, generate

PROMPT = "The history of the Roman Empire begins"
BATCH_PROMPTS = [
    "The history of the Roman Empire begins", "Water boils at", "def fibonacci(n):",
    "Once upon a time, in a small village by the sea, there lived", "The three primary colors are",
    "import numpy as np", "My favourite recipe for bread is", "In 1843, Ada Lovelace",
]  # fmt: skip
METHODS = ("generate", "loop+cache", "loop-nocache", "scratch+static")
UNCACHED_REPEAT_LIMIT = 128  # the uncached loop runs once above this many tokens
TARGETS = {"scratch_vs_generate": 1.0, "batch16_vs_batch1": 5.0, "cached_vs_generate": 0.9}


def runs_for(method: str, new_tokens: int, repeats: int) -> int:
    """Timed runs of one point: the uncached loop above UNCACHED_REPEAT_LIMIT tokens runs once."""
    return 1 if method == "loop-nocache" and new_tokens > UNCACHED_REPEAT_LIMIT else repeats


def _time_best(run: Callable[[], int], repeats: int) -> tuple[float, int]:
    """Best (shortest) wall time of `repeats` runs, and the tokens the run produced."""
    best, produced = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        produced = run()
        best = min(best, time.perf_counter() - start)
    return best, produced


def _hf_generate(model: Any, tokenizer: Any, prompt_ids: list[int], n: int) -> Callable[[], int]:
    ids = torch.tensor([prompt_ids], device=model.device)

    def run() -> int:
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                 min_new_tokens=n, do_sample=False, temperature=None, top_p=None, top_k=None,
                                 pad_token_id=tokenizer.eos_token_id)  # fmt: skip
        return out.shape[1] - len(prompt_ids)

    return run


def _runner(
    method: str, model: Any, scratch: Any, tokenizer: Any, prompt_ids: list[int], n: int
) -> Callable[[], int]:
    if method == "generate":
        return _hf_generate(model, tokenizer, prompt_ids, n)
    engine = scratch if method == "scratch+static" else model
    config = DecodeConfig(max_new_tokens=n, use_cache=method != "loop-nocache", ignore_eos=True)
    return lambda: generate(engine, tokenizer, prompt_ids, config).new_tokens


def read_bandwidth_gb_s(mib: int = 256, repeats: int = 5) -> float:
    """This machine's memory read bandwidth, as torch sees it: bytes summed per second, best of runs."""
    x = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    x.sum()  # touch every page once
    seconds, _ = _time_best(lambda: int(x.sum().item() > 0), repeats)
    return x.numel() * 4 / seconds / 1e9


def weight_bytes(model: Any) -> int:
    """Bytes of every parameter (a tied head counted once: it is the embedding table)."""
    unique = {p.data_ptr(): p for p in model.parameters()}
    return sum(p.numel() * p.element_size() for p in unique.values())


def length_sweep(model: Any, scratch: Any, tokenizer: Any, lengths: Sequence[int], repeats: int,
                 step: Callable[[str], None]) -> list[dict[str, Any]]:  # fmt: skip
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    for method in METHODS:  # warm-up: first calls pay for allocation and kernel selection
        _runner(method, model, scratch, tokenizer, prompt_ids, 4)()
    rows = []
    for n in lengths:
        for method in METHODS:
            step(f"{method} x {n} tokens")
            runs = runs_for(method, n, repeats)
            seconds, produced = _time_best(_runner(method, model, scratch, tokenizer, prompt_ids, n), runs)
            assert produced == n, f"{method} produced {produced} tokens, expected {n}"
            rows.append({"method": method, "new_tokens": n, "runs": runs, "seconds": seconds,
                         "tokens_per_second": n / seconds})  # fmt: skip
    return rows


def batch_sweep(engines: dict[str, Any], tokenizer: Any, sizes: Sequence[int], new_tokens: int, repeats: int,
                step: Callable[[str], None]) -> list[dict[str, Any]]:  # fmt: skip
    config = DecodeConfig(max_new_tokens=new_tokens, ignore_eos=True)
    rows = []
    for engine, model in engines.items():
        decode_batch(
            model, tokenizer, [tokenizer(BATCH_PROMPTS[0])["input_ids"]] * 2, DecodeConfig(max_new_tokens=2)
        )
        for size in sizes:
            step(f"{engine} batch {size}")
            prompts = [tokenizer(BATCH_PROMPTS[i % len(BATCH_PROMPTS)])["input_ids"] for i in range(size)]

            def run(m: Any = model, p: list[list[int]] = prompts) -> int:
                return sum(r.new_tokens for r in decode_batch(m, tokenizer, p, config))

            seconds, _ = _time_best(run, repeats)
            rows.append({"engine": engine, "batch": size, "new_tokens": new_tokens, "seconds": seconds,
                         "tokens_per_second": size * new_tokens / seconds})  # fmt: skip
    return rows


def run_benchmark(
    model: Any,
    scratch: Any,
    tokenizer: Any,
    lengths: list[int],
    repeats: int = 2,
    batch_sizes: Sequence[int] = (1, 4, 16),
    batch_tokens: int = 64,
    bf16_model: Callable[[], tuple[Any, Any]] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """`model` is Transformers', `scratch` the hand-written one on the same weights; `bf16_model`, when
    given, loads both again in bfloat16 for the bf16 row."""
    assert lengths and all(n >= 1 for n in lengths), "lengths must be positive integers"
    assert repeats >= 1, "repeats must be at least 1"
    assert batch_sizes and min(batch_sizes) >= 1, "batch sizes must be positive integers"
    step = on_step or (lambda _: None)
    rows = length_sweep(model, scratch, tokenizer, lengths, repeats, step)
    batches = batch_sweep(
        {"hf": model, "scratch": scratch}, tokenizer, batch_sizes, batch_tokens, repeats, step
    )
    bf16_rows: list[dict[str, Any]] = []
    if bf16_model is not None:
        hf16, scratch16 = bf16_model()
        n = sorted(lengths)[len(lengths) // 2]
        bf16_rows = [{**r, "dtype": "bfloat16"} for r in length_sweep(hf16, scratch16, tokenizer, [n], repeats, step)
                     if r["method"] in ("generate", "scratch+static")]  # fmt: skip

    def tps(method: str, n: int) -> float:
        return next(r["tokens_per_second"] for r in rows if r["method"] == method and r["new_tokens"] == n)

    def batch_tps(engine: str, size: int) -> float:
        return next(r["tokens_per_second"] for r in batches if r["engine"] == engine and r["batch"] == size)

    scratch_vs_generate = {n: tps("scratch+static", n) / tps("generate", n) for n in lengths}
    cached_vs_generate = {n: tps("loop+cache", n) / tps("generate", n) for n in lengths}
    uncached_slowdown = {n: tps("loop+cache", n) / tps("loop-nocache", n) for n in lengths}
    biggest, smallest = max(batch_sizes), min(batch_sizes)
    batch_gain = {e: batch_tps(e, biggest) / batch_tps(e, smallest) for e in ("hf", "scratch")}
    bandwidth = read_bandwidth_gb_s()
    bytes_per_token = weight_bytes(scratch)
    slowdowns = [uncached_slowdown[n] for n in sorted(lengths)]
    return {
        "model": getattr(model, "name_or_path", ""),
        "device": str(model.device),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "dtype": str(model.dtype).removeprefix("torch."),
        "prompt": PROMPT,
        "prompt_tokens": len(tokenizer(PROMPT)["input_ids"]),
        "repeats": repeats,
        "results": rows,
        "batch": batches,
        "bf16": bf16_rows,
        "memory": {
            "weight_bytes_read_per_token": bytes_per_token,
            "read_bandwidth_gb_s": bandwidth,
            "batch1_ceiling_tokens_per_second": bandwidth * 1e9 / bytes_per_token,
        },
        "scratch_vs_generate": scratch_vs_generate,
        "cached_vs_generate": cached_vs_generate,
        "uncached_slowdown": uncached_slowdown,
        "batch_gain": {"from": smallest, "to": biggest, **batch_gain},
        "targets": {
            f"scratch_at_least_{TARGETS['scratch_vs_generate']}x_generate":
                min(scratch_vs_generate.values()) >= TARGETS["scratch_vs_generate"],
            f"batch{biggest}_at_least_{TARGETS['batch16_vs_batch1']}x_batch{smallest}":
                min(batch_gain.values()) >= TARGETS["batch16_vs_batch1"],
            f"cached_at_least_{TARGETS['cached_vs_generate']}x_generate":
                min(cached_vs_generate.values()) >= TARGETS["cached_vs_generate"],
            "uncached_slowdown_grows_with_length": all(b > a for a, b in pairwise(slowdowns)),
        },
    }  # fmt: skip


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.2))
    for method, style in zip(METHODS, ("-o", "-s", "--^", "-D"), strict=True):
        rows = [r for r in report["results"] if r["method"] == method]
        xs = [r["new_tokens"] for r in rows]
        left.plot(xs, [r["tokens_per_second"] for r in rows], style, label=method)
        middle.plot(xs, [r["seconds"] for r in rows], style, label=method)
    ceiling = report["memory"]["batch1_ceiling_tokens_per_second"]
    left.axhline(ceiling, color="gray", ls=":", label=f"bandwidth ceiling {ceiling:.0f}")
    left.set(xscale="log", xlabel="new tokens", ylabel="tokens / second", title="Decode speed, batch 1")
    middle.set(xscale="log", yscale="log", xlabel="new tokens", ylabel="seconds (log)",
               title="Total time: O(n) with a KV cache, O(n^2) without")  # fmt: skip
    lengths = sorted({r["new_tokens"] for r in report["results"]})
    for ax in (left, middle):
        ax.minorticks_off()
        ax.set_xticks(lengths, [str(n) for n in lengths])
    for engine, style in (("hf", "-o"), ("scratch", "-D")):
        rows = [r for r in report["batch"] if r["engine"] == engine]
        right.plot([r["batch"] for r in rows], [r["tokens_per_second"] for r in rows], style, label=engine)
    sizes = sorted({r["batch"] for r in report["batch"]})
    right.set(xscale="log", xlabel="prompts in the batch", ylabel="aggregate tokens / second",
              title=f"Batching ({report['batch'][0]['new_tokens']} new tokens per prompt)")  # fmt: skip
    right.minorticks_off()
    right.set_xticks(sizes, [str(s) for s in sizes])
    for ax in (left, middle, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{report['model'] or 'model'} on {report['device']} ({report['machine']}, {report['dtype']})",
        fontsize=9,
    )
    fig.tight_layout()
    return paths.atomic_savefig(fig, path, dpi=110)


def write_report(report: dict[str, Any], name: str = "stage1_decode") -> tuple[Path, Path]:
    reports = paths.ensure(paths.reports_dir())
    json_path = paths.atomic_write_text(reports / f"{name}.json", json.dumps(report, indent=2) + "\n")
    return json_path, plot(report, reports / f"{name}.png")
