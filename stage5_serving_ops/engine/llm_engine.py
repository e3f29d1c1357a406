"""The engine: requests in, `step()` after `step()`, tokens out.

    engine = LLMEngine.from_model("smollm2-135m-instruct", EngineConfig(kv_cache_gib=1))
    engine.add_request("a", prompt_ids, SamplingParams(max_tokens=32))
    while engine.has_unfinished():
        for out in engine.step():            # RequestOutput(request_id, new_token_ids, finished, ...)
            ...

One step: the scheduler picks the work (scheduler.py), the runner runs it in one forward pass
(runner.py), and the engine turns logits into tokens: a sample for each sequence whose tokens are
all in, or a verification of its speculative draft (spec_decode.py). Then it registers every block
that just became full in the prefix cache, and retires finished sequences, freeing their blocks.

`AsyncEngine` runs the same loop on a background thread for the HTTP server: requests arrive from
the event loop at any time and join the running batch at the next step.

The counters (`stats()`) are vLLM's own metrics: running and waiting requests, KV cache usage,
prefix cache hit rate, preemptions, and the speculative acceptance rate.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

import torch

from stage1_foundations.model import ScratchLlama
from stage1_foundations.sampling import SamplingConfig, sample_next_token
from stage5_serving_ops.engine.block_pool import prefix_hashes
from stage5_serving_ops.engine.paged_attention import bytes_per_block
from stage5_serving_ops.engine.runner import ForwardItem, ModelRunner
from stage5_serving_ops.engine.scheduler import SamplingParams, Scheduler, SchedulerConfig, Sequence, Status
from stage5_serving_ops.engine.spec_decode import propose_ngram, verify_greedy


@dataclass
class EngineConfig:
    kv_cache_gib: float = 1.0  # memory for keys and values, like VLLM_CPU_KVCACHE_SPACE
    num_blocks: int | None = None  # overrides kv_cache_gib (the tests force preemption with a tiny pool)
    block_size: int = 16
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 512
    enable_prefix_caching: bool = True
    num_speculative_tokens: int = 0
    max_model_len: int = 2048


@dataclass
class RequestOutput:
    request_id: str
    new_token_ids: list[int]
    finished: bool
    finish_reason: str | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0


@dataclass
class EngineStats:
    computed_tokens: int = 0  # tokens run through the model (prefill + decode + drafts)
    prompt_tokens_computed: int = 0  # of those, prompt tokens (prefix cache hits are not among them)
    spec_proposed: int = 0
    spec_accepted: int = 0
    finished: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class RequestError(ValueError):
    """A request the engine cannot take (too long for the context or the cache); a 400 to clients."""


class LLMEngine:
    def __init__(self, model: ScratchLlama, config: EngineConfig, eos_token_ids: Seq[int] = ()) -> None:
        c = model.config
        self.model, self.config = model, config
        block_bytes = bytes_per_block(c.num_layers, c.num_kv_heads, c.head_dim, config.block_size,
                                      model.embed_tokens.weight.element_size())  # fmt: skip
        num_blocks = config.num_blocks or max(1, int(config.kv_cache_gib * 2**30) // block_bytes)
        self.scheduler = Scheduler(
            SchedulerConfig(num_blocks=num_blocks, block_size=config.block_size, max_num_seqs=config.max_num_seqs,
                            max_num_batched_tokens=config.max_num_batched_tokens,
                            enable_prefix_caching=config.enable_prefix_caching,
                            num_speculative_tokens=config.num_speculative_tokens),
            propose=self._propose if config.num_speculative_tokens else None,
        )  # fmt: skip
        self.runner = ModelRunner(model, num_blocks, config.block_size)
        self.eos_token_ids = set(eos_token_ids) | set(c.eos_token_id)
        self.requests: dict[str, Sequence] = {}
        self.stats_ = EngineStats()

    @classmethod
    def from_model(cls, model: str, config: EngineConfig | None = None) -> LLMEngine:
        from stage1_foundations.model import load_scratch_model

        return cls(load_scratch_model(model), config or EngineConfig())

    # ----------------------------------------------------------------------------------------

    def add_request(
        self, request_id: str, prompt_ids: Seq[int], params: SamplingParams | None = None
    ) -> None:
        params = params or SamplingParams()
        if request_id in self.requests:
            raise RequestError(f"request id {request_id!r} is already running")
        if not prompt_ids:
            raise RequestError("the prompt is empty")
        total = len(prompt_ids) + params.max_tokens
        if total > self.config.max_model_len:
            raise RequestError(f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({params.max_tokens}) exceeds "
                               f"the context of {self.config.max_model_len} tokens")  # fmt: skip
        capacity = self.scheduler.pool.num_blocks * self.config.block_size
        if total > capacity:
            raise RequestError(
                f"the request needs up to {total} tokens of KV cache; the pool holds {capacity}"
            )
        generator = None
        if params.temperature > 0 and params.seed is not None:
            generator = torch.Generator(device=self.model.device).manual_seed(params.seed)
        seq = Sequence(request_id, list(prompt_ids), params, arrival=time.perf_counter(), generator=generator)
        self.requests[request_id] = seq
        self.scheduler.add(seq)

    def abort_request(self, request_id: str) -> None:
        """Stop a request (its client went away): its blocks go back to the pool now."""
        seq = self.requests.pop(request_id, None)
        if seq is not None and seq.status is not Status.FINISHED:
            self.scheduler.finish(seq, "abort")

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    def _propose(self, seq: Sequence) -> list[int]:
        if seq.params.temperature > 0:
            return []  # greedy verification only
        room = min(
            seq.params.max_tokens - len(seq.output_ids) - 1, self.config.max_model_len - seq.num_tokens - 1
        )
        k = min(self.config.num_speculative_tokens, room)
        return propose_ngram(seq.all_ids, k) if k > 0 else []

    def _sample(self, seq: Sequence, logits: torch.Tensor) -> int:
        p = seq.params
        config = SamplingConfig(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k)
        return int(sample_next_token(logits, config, seq.generator).item())

    def step(self) -> list[RequestOutput]:
        scheduled = self.scheduler.schedule()
        if not scheduled:
            return []
        items = []
        for s in scheduled:
            seq = s.seq
            tokens = seq.all_ids[seq.num_computed : seq.num_computed + s.num_tokens] + s.draft_ids
            reaches_end = seq.num_computed + s.num_tokens == seq.num_tokens
            logits = "all" if s.draft_ids else ("last" if reaches_end else "none")
            items.append(ForwardItem(tokens, seq.num_computed, seq.table, logits))
        all_logits = self.runner.forward(items)

        outputs = []
        for s, logits in zip(scheduled, all_logits, strict=True):
            seq = s.seq
            self.stats_.computed_tokens += s.num_tokens + len(s.draft_ids)
            self.stats_.prompt_tokens_computed += max(
                0, min(len(seq.prompt_ids) - seq.num_computed, s.num_tokens)
            )
            if logits is None:  # a prefill chunk with more to come
                seq.num_computed += s.num_tokens
                self._register_full_blocks(seq)
                continue
            if s.draft_ids:
                accepted, bonus = verify_greedy(s.draft_ids, logits)
                new = s.draft_ids[:accepted] + [bonus]
                self.stats_.spec_proposed += len(s.draft_ids)
                self.stats_.spec_accepted += accepted
                seq.num_computed += (
                    s.num_tokens + accepted
                )  # the rejected drafts' slots get overwritten later
            else:
                new = [self._sample(seq, logits[-1])]
                seq.num_computed += s.num_tokens
            emitted = []
            for token in new:
                if token in self.eos_token_ids and not seq.params.ignore_eos:
                    seq.finish_reason = "stop"
                    break
                seq.output_ids.append(token)
                emitted.append(token)
                if len(seq.output_ids) >= seq.params.max_tokens:
                    seq.finish_reason = "length"
                    break
            seq.num_computed = min(seq.num_computed, seq.num_tokens - (0 if seq.finish_reason else 1))
            self._register_full_blocks(seq)
            if seq.finish_reason:
                self.scheduler.finish(seq, seq.finish_reason)
                self.requests.pop(seq.request_id, None)
                self.stats_.finished += 1
            outputs.append(RequestOutput(seq.request_id, emitted, seq.finish_reason is not None, seq.finish_reason,
                                         len(seq.prompt_ids), len(seq.output_ids)))  # fmt: skip
        return outputs

    def _register_full_blocks(self, seq: Sequence) -> None:
        """Blocks whose tokens are all computed become findable in the prefix cache."""
        full = seq.num_computed // self.config.block_size
        if full <= seq.table.num_hashed or not self.config.enable_prefix_caching:
            return
        hashes = prefix_hashes(seq.all_ids[: full * self.config.block_size], self.config.block_size)
        for j in range(seq.table.num_hashed, full):
            self.scheduler.pool.register(seq.table.block_ids[j], hashes[j])
        seq.table.num_hashed = full

    def generate(self, prompts: Seq[Seq[int]], params: SamplingParams | None = None) -> list[list[int]]:
        """Every prompt to the end, all in the same continuous batch; output ids in input order."""
        ids = [f"gen-{i}-{time.perf_counter_ns()}" for i in range(len(prompts))]
        outputs: dict[str, list[int]] = {i: [] for i in ids}
        for request_id, prompt in zip(ids, prompts, strict=True):
            self.add_request(request_id, prompt, params)
        while self.has_unfinished():
            for out in self.step():
                outputs[out.request_id] += out.new_token_ids
        return [outputs[i] for i in ids]

    def stats(self) -> dict[str, Any]:
        pool, s = self.scheduler.pool, self.stats_
        return {
            "running": len(self.scheduler.running), "waiting": len(self.scheduler.waiting),
            "num_blocks": pool.num_blocks, "block_size": pool.block_size,
            "kv_cache_usage": 1 - pool.num_free / pool.num_blocks,
            "prefix_cache_queries": pool.stats.prefix_queries, "prefix_cache_hits": pool.stats.prefix_hits,
            "prefix_cache_hit_rate": pool.stats.prefix_hits / pool.stats.prefix_queries if pool.stats.prefix_queries else 0.0,
            "evictions": pool.stats.evictions, "preemptions": self.scheduler.stats.preemptions,
            "steps": self.scheduler.stats.steps, "computed_tokens": s.computed_tokens,
            "prompt_tokens_computed": s.prompt_tokens_computed, "finished": s.finished,
            "spec_proposed": s.spec_proposed, "spec_accepted": s.spec_accepted,
            "spec_acceptance_rate": s.spec_accepted / s.spec_proposed if s.spec_proposed else 0.0,
        }  # fmt: skip


# --------------------------------------------------------------------------------------------
# The engine on a thread, for a server


class AsyncEngine:
    """Runs `LLMEngine.step()` on its own thread; `submit` streams a request's outputs to asyncio."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self.lock = threading.Lock()  # guards stats reads against the step thread
        self.thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self.stopped = threading.Event()
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopped.is_set():
            try:  # block while idle; otherwise only drain what has arrived
                command = (
                    self.commands.get(timeout=0.5)
                    if not self.engine.has_unfinished()
                    else self.commands.get_nowait()
                )
            except queue.Empty:
                command = None
            while command is not None:
                self._apply(*command)
                try:
                    command = self.commands.get_nowait()
                except queue.Empty:
                    command = None
            if not self.engine.has_unfinished():
                continue
            with self.lock:
                outputs = self.engine.step()
            for out in outputs:
                target = self.streams.get(out.request_id)
                if target:
                    loop, stream = target
                    loop.call_soon_threadsafe(stream.put_nowait, out)
                    if out.finished:
                        self.streams.pop(out.request_id, None)

    def _apply(self, kind: str, payload: Any) -> None:
        if kind == "add":
            request_id, prompt_ids, params = payload
            try:
                self.engine.add_request(request_id, prompt_ids, params)
            except RequestError as e:  # checked before submit; a race only
                loop, stream = self.streams.pop(request_id)
                loop.call_soon_threadsafe(stream.put_nowait, e)
        elif kind == "abort":
            self.streams.pop(payload, None)
            with self.lock:
                self.engine.abort_request(payload)

    def submit(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> asyncio.Queue:
        stream: asyncio.Queue = asyncio.Queue()
        self.streams[request_id] = (asyncio.get_running_loop(), stream)
        self.commands.put(("add", (request_id, prompt_ids, params)))
        return stream

    def abort(self, request_id: str) -> None:
        self.commands.put(("abort", request_id))

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return self.engine.stats()

    def shutdown(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
