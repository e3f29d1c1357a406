"""Continuous batching: the scheduler decides, before every step, which tokens of which requests run.

Stage 1's batch ran its rows in lock-step: a request arriving mid-batch waited for the whole batch
to end, and a finished row kept its seat computing nothing useful. A serving engine reschedules
*every step* (an "iteration-level" schedule, from the Orca paper, vLLM's default):

1. **Running sequences first**, oldest first: each gets its next token (a decode), or the rest of
   its prompt if a long prefill is being done in chunks. Before a sequence can write new keys and
   values it needs room in its blocks; if the pool is empty, the scheduler **preempts** the
   youngest running sequence: it frees all that sequence's blocks and puts it back at the head of
   the queue, to be *recomputed* later (its prompt and the tokens it already produced are prefilled
   again; vLLM's "preemption by recompute").
2. **Then waiting requests**, first come first served, while there is a token budget left this
   step (`max_num_batched_tokens`), a free seat (`max_num_seqs`), and blocks for them. On admission
   a request first looks its prompt up in the **prefix cache**: blocks that other requests already
   computed for the same leading tokens are shared, and its prefill starts after them.

A sequence that finishes (end-of-turn token, its token budget, or an abort because the client went
away) frees its blocks at once, and its seat goes to the next request in the queue: that is the
"continuous" in continuous batching.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import torch

from stage5_serving_ops.engine.block_pool import BlockPool, BlockTable, prefix_hashes


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival: float = 0.0
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    table: BlockTable = field(default_factory=BlockTable)
    num_computed: int = 0  # tokens whose keys and values are in the cache
    finish_reason: str | None = None
    generator: torch.Generator | None = None

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)


@dataclass
class SchedulerConfig:
    num_blocks: int
    block_size: int = 16
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 512
    enable_prefix_caching: bool = True
    num_speculative_tokens: int = 0  # 0: off; k: prompt-lookup drafts of up to k tokens (greedy requests)

    def __post_init__(self) -> None:
        for name in ("num_blocks", "block_size", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_speculative_tokens < 0:
            raise ValueError(f"num_speculative_tokens must be >= 0, got {self.num_speculative_tokens}")


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # tokens of seq.all_ids to run, from seq.num_computed on
    draft_ids: list[int] = field(default_factory=list)  # speculative tokens appended after them


@dataclass
class SchedulerStats:
    preemptions: int = 0
    steps: int = 0


class Scheduler:
    def __init__(
        self, config: SchedulerConfig, propose: Callable[[Sequence], list[int]] | None = None
    ) -> None:
        self.config = config
        self.pool = BlockPool(config.num_blocks, config.block_size, config.enable_prefix_caching)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.propose = propose  # the speculative draft, or None
        self.stats = SchedulerStats()

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ----------------------------------------------------------------------------------------
    # Blocks

    def reserve(self, seq: Sequence, n: int) -> bool:
        """Make room for n more tokens of seq (new blocks from the pool); False if the pool is short."""
        needed = math.ceil((seq.num_computed + n) / self.config.block_size) - len(seq.table.block_ids)
        if needed > self.pool.num_free:
            return False
        seq.table.block_ids += [self.pool.allocate().id for _ in range(max(0, needed))]
        return True

    def release(self, seq: Sequence) -> None:
        self.pool.free(seq.table.block_ids)
        seq.table = BlockTable()
        seq.num_computed = 0

    def match_prefix(self, seq: Sequence) -> None:
        """Share the cached blocks of seq's leading tokens; at least its last token is left to compute
        (its logits give the first new token)."""
        hashes = prefix_hashes(seq.all_ids, self.config.block_size)[
            : (seq.num_tokens - 1) // self.config.block_size
        ]
        self.pool.stats.prefix_queries += seq.num_tokens
        found = self.pool.match_prefix(hashes)
        seq.table = BlockTable(block_ids=found, num_hashed=len(found))
        seq.num_computed = len(found) * self.config.block_size
        self.pool.stats.prefix_hits += seq.num_computed

    def preempt(self, seq: Sequence) -> None:
        """Free all of seq's blocks and queue it first, to be recomputed (prompt + outputs so far)."""
        self.release(seq)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.stats.preemptions += 1

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status, seq.finish_reason = Status.FINISHED, reason
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.release(seq)

    # ----------------------------------------------------------------------------------------
    # One step's schedule

    def schedule(self) -> list[ScheduledSeq]:
        self.stats.steps += 1
        budget, scheduled = self.config.max_num_batched_tokens, []
        # EXERCISE stage5.scheduler_step: (1) for each running seq, oldest first, while budget lasts: n = min(tokens not yet computed, budget), plus drafts from self.propose when n == 1; reserve blocks for them, preempting the youngest running seq (self.running.pop(), self.preempt) until it fits (stop if seq itself was preempted); schedule it. (2) while budget, seats and nothing was preempted: take the first waiting seq, match_prefix if nothing of it is computed, reserve its tokens (on failure release it and stop), move it to running, schedule it
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed, budget)
            drafts = self.propose(seq)[: budget - n] if self.propose and n == 1 else []
            while not self.reserve(seq, n + len(drafts)):
                victim = self.running.pop()  # the youngest goes back to the queue
                self.preempt(victim)
                preempted = True
                if victim is seq:
                    break
            if seq.status is Status.WAITING:  # seq itself was preempted: nothing younger is left to run
                break
            scheduled.append(ScheduledSeq(seq, n, drafts))
            budget -= n + len(drafts)
            i += 1
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs and not preempted:
            seq = self.waiting[0]
            if seq.num_computed == 0:
                self.match_prefix(seq)
            n = min(seq.num_tokens - seq.num_computed, budget)
            if not self.reserve(seq, n):
                self.release(seq)  # its shared prefix blocks go back; they stay cached for next time
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            scheduled.append(ScheduledSeq(seq, n))
            budget -= n
        return scheduled
        # END EXERCISE
