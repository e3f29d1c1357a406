"""Paged attention in plain PyTorch: keys and values stored by slot, read through block tables.

The pool of blocks (block_pool.py) is bookkeeping; this is the memory. Per layer, one tensor for
keys and one for values, each with a row per *slot*:

    keys[layer]: (num_blocks * block_size, kv_heads, head_dim)     slot = block_id * block_size + offset

Writing is scattering: the new tokens of every sequence in the batch go to their slots in one
indexed assignment. Reading is gathering: for each sequence, the slots of its tokens 0..L-1 (found
through its block table) select its keys and values, padded to the longest sequence in the group,
and a mask hides the padding. Then attention is stage 1's grouped-query attention, unchanged.

The gather copies each sequence's keys and values once per layer per step. vLLM's PagedAttention
kernel avoids that copy by reading the blocks in place from inside the attention kernel; in plain
PyTorch the copy is the price of paging, and the bench shows what it costs (it grows with the
context, while reading the weights does not).
"""

from __future__ import annotations

import torch

from stage1_foundations.attention import causal_mask, grouped_query_attention


def bytes_per_block(layers: int, kv_heads: int, head_dim: int, block_size: int, element_size: int) -> int:
    """Keys and values of block_size tokens in every layer."""
    return 2 * layers * kv_heads * head_dim * block_size * element_size


class PagedKVCache:
    def __init__(self, layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:  # fmt: skip
        shape = (num_blocks * block_size, kv_heads, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.block_size = block_size

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Scatter k, v (N, kv_heads, D) of N new tokens into their slots (N,)."""
        self.keys[layer][slots] = k
        self.values[layer][slots] = v

    def gather(self, layer: int, slot_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's keys and values in token order: slot_index (B, L) -> two (B, kv_heads, L, D)."""
        k = self.keys[layer][slot_index]  # (B, L, kv_heads, D)
        v = self.values[layer][slot_index]
        return k.transpose(1, 2), v.transpose(1, 2)


def length_mask(context_lens: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """For one new token per row (decode): row b may read slots 0..context_lens[b]-1.
    (B,) -> (B, 1, 1, length), 0 where allowed, a huge negative number elsewhere."""
    allowed = torch.arange(length, device=context_lens.device)[None, :] < context_lens[:, None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=context_lens.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None, None, :]


def paged_attention(q: torch.Tensor, cache: PagedKVCache, layer: int, slot_index: torch.Tensor,
                    positions: torch.Tensor | None = None, context_lens: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Attention of q (B, H, T, D) over each row's cached keys and values.

    Either one sequence with T new tokens at `positions` (T,), causal over its slot_index (1, L);
    or B sequences with one new token each, row b reading context_lens[b] slots of slot_index (B, L).
    """
    k, v = cache.gather(layer, slot_index)
    if positions is not None:
        mask = causal_mask(positions, slot_index.shape[1], None, q.dtype)  # (1, 1, T, L)
    else:
        assert context_lens is not None, "give positions (one sequence) or context_lens (one token per row)"
        mask = length_mask(context_lens, slot_index.shape[1], q.dtype)  # (B, 1, 1, L)
    return grouped_query_attention(q, k, v, mask)
