"""A static KV cache: every layer's keys and values, in memory allocated once, written by position.

Decoding one token at a time, attention at step t needs the keys and values of every earlier
position, and those never change (the causal mask guarantees it). So we keep them. Transformers'
default `DynamicCache` appends with `torch.cat`, which allocates a new, longer tensor and copies
the whole cache at every step of every layer. A **static cache** allocates, per layer,

    keys, values: (batch, kv_heads, capacity, head_dim)      capacity = prompt + max new tokens

once, up front, and each step writes its new rows into slots [length, length + T): no allocation
and no copy in the loop, and the memory bill is visible before the first token. It is the layout
`torch.compile`d and CUDA-graph decoders need, and the first step towards the paged cache of
stage 5, which cuts the capacity into fixed-size blocks so that requests share one pool.

Slots are not positions. In a batch, short prompts are padded on the left, so slot j holds a
padding token in one row and a real one in another; the *rotary* position of each token is counted
per row from its first real token and passed in separately (`position_ids`), while the attention
mask says which slots of each row are real. The cache only needs to know where to write.

What it costs, per token: 2 (K and V) x layers x kv_heads x head_dim x bytes. For SmolLM2 in fp32:
2 x 30 x 3 x 64 x 4 = 46,080 bytes (45 KiB), so a full 8,192-token context is 360 MiB per sequence;
grouped-query attention (3 K/V heads instead of 9) already made that 3x smaller.
"""

from __future__ import annotations

import torch


class StaticKVCache:
    """Preallocated keys and values for `layers` layers; `length` slots are filled, in every row."""

    def __init__(self, layers: int, batch: int, kv_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:  # fmt: skip
        assert min(layers, batch, kv_heads, head_dim, capacity) >= 1, "every cache dimension must be >= 1"
        shape = (batch, kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.capacity = capacity
        self.length = 0  # slots written so far (the same for every layer once a forward pass ends)

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, kv_heads, T, D) into slots [start, start+T) of `layer`; return that layer's
        keys and values for slots [0, start+T) (views, no copy)."""
        end = start + k.shape[2]
        if end > self.capacity:
            raise ValueError(
                f"the static KV cache holds {self.capacity} slots but this step needs {end}; "
                "allocate it with the prompt length plus the new tokens"
            )
        # EXERCISE stage1.static_cache: copy k and v into slots [start, end) of this layer's preallocated tensors (dim 2), then return views of slots [0, end)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]
        # END EXERCISE

    def advance(self, n: int) -> None:
        """Mark n more slots as filled (called once per forward pass, after every layer wrote them)."""
        assert self.length + n <= self.capacity, "advanced past the cache's capacity"
        self.length += n
