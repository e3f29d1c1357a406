"""The KV cache manager: memory for many sequences' keys and values, in fixed-size blocks.

Stage 1's static cache gave each sequence one contiguous region sized for its longest possible
output. With many users that wastes most of the memory: a request reserved for 2,048 tokens that
stops after 40 holds 98% of its region for nothing, and a region must be found in one piece.
vLLM's PagedAttention borrows the operating system's answer, paging:

- The cache is a **pool of blocks**, each holding the keys and values of `block_size` tokens (16
  here, as in vLLM) in every layer.
- Each sequence has a **block table**: the list of its blocks, in order. Token t lives in block
  `table[t // block_size]` at offset `t % block_size`. Blocks are taken from the pool as the
  sequence grows and returned when it ends, so no memory is reserved for tokens never written and
  at most one block per sequence is partly empty.
- **Prefix caching.** A block that is full is identified by a hash of its tokens *and of every
  token before it* (the parent block's hash chained in): two requests that begin with the same
  system prompt or few-shot examples produce the same hashes for those blocks, so the second
  reuses the first's blocks instead of recomputing their keys and values (its prefill skips them).
- **Reference counts** let a block belong to several sequences at once. A block whose count falls
  to zero goes back to the free queue but keeps its hash, so a later request can still hit it;
  when the pool needs a block, it takes the *least recently freed* one, and if that one was
  cached its hash is dropped: **eviction**, in LRU order.

Where vLLM calls these `KVCacheManager`, `BlockPool`, `FreeKVCacheBlockQueue` and `BlockHash`, this
file has `BlockPool` alone: a dict from hash to block, an ordered dict as the free queue.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Block:
    id: int
    ref_count: int = 0
    hash: bytes | None = None  # set once the block is full and registered in the prefix cache


def block_hash(parent: bytes | None, tokens: Sequence[int]) -> bytes:
    """The identity of a full block: its tokens and, through the parent's hash, everything before it.

    Example: the blocks [1..16] and [17..32] of two prompts that share their first 32 tokens hash
    the same; if only the first 16 are shared, only the first block's hash is.
    """
    digest = hashlib.blake2b(parent or b"root", digest_size=16)
    digest.update(b",".join(str(t).encode() for t in tokens))
    return digest.digest()


def prefix_hashes(tokens: Sequence[int], block_size: int) -> list[bytes]:
    """The hash of every *full* block of a token sequence, in order."""
    hashes: list[bytes] = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        hashes.append(block_hash(hashes[-1] if hashes else None, tokens[start : start + block_size]))
    return hashes


@dataclass
class PoolStats:
    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_hits: int = 0  # of those, tokens found (their prefill is skipped)
    evictions: int = 0  # cached blocks dropped to make room


class NoFreeBlocks(RuntimeError):
    """The pool is exhausted; the scheduler answers by preempting a sequence."""


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        assert num_blocks >= 1 and block_size >= 1, "the pool needs at least one block of at least one token"
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_queue: OrderedDict[int, None] = OrderedDict(
            (i, None) for i in range(num_blocks)
        )  # LRU first
        self.cached: dict[bytes, int] = {}  # block hash -> block id
        self.stats = PoolStats()

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        return len(self.free_queue)

    def allocate(self) -> Block:
        """Take the least recently freed block (evicting its cached content, if any); count 1."""
        # EXERCISE stage5.block_allocation: raise NoFreeBlocks if the free queue is empty; else pop its first (least recently freed) id, drop that block's hash from self.cached if it has one (count an eviction), set its ref_count to 1 and return it
        if not self.free_queue:
            raise NoFreeBlocks(f"all {self.num_blocks} blocks are in use")
        block = self.blocks[self.free_queue.popitem(last=False)[0]]
        if block.hash is not None:
            if self.cached.get(block.hash) == block.id:
                del self.cached[block.hash]
            block.hash = None
            self.stats.evictions += 1
        block.ref_count = 1
        return block
        # END EXERCISE

    def free(self, block_ids: Sequence[int]) -> None:
        """Drop one reference to each block, last block first: freed tails are evicted before the
        shared prefixes they were appended to."""
        for block_id in reversed(block_ids):
            block = self.blocks[block_id]
            assert block.ref_count > 0, f"block {block_id} freed more often than it was taken"
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_queue[block_id] = None  # most recently freed: last to be evicted

    def match_prefix(self, hashes: Sequence[bytes]) -> list[int]:
        """The cached blocks for the longest prefix of these block hashes; each gains a reference."""
        found: list[int] = []
        if not self.enable_prefix_caching:
            return found
        for h in hashes:
            block_id = self.cached.get(h)
            if block_id is None:
                break
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free_queue[block_id]  # in use again: no longer evictable
            block.ref_count += 1
            found.append(block_id)
        return found

    def register(self, block_id: int, h: bytes) -> None:
        """A block just became full: make it findable by its hash (the first block with a given
        content wins; a duplicate stays private to its sequence)."""
        if self.enable_prefix_caching and h not in self.cached and self.blocks[block_id].hash is None:
            self.blocks[block_id].hash = h
            self.cached[h] = block_id

    def leaks(self) -> list[int]:
        """Blocks still referenced (after every sequence ended, this must be empty)."""
        return [b.id for b in self.blocks if b.ref_count != 0]


@dataclass
class BlockTable:
    """One sequence's blocks, in token order, and how many leading blocks are registered as cached."""

    block_ids: list[int] = field(default_factory=list)
    num_hashed: int = 0

    def slot(self, position: int, block_size: int) -> int:
        """The flat cache slot of token `position`: block table[position // block_size], offset."""
        return self.block_ids[position // block_size] * block_size + position % block_size
