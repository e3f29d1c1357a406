"""Rotary position embeddings (RoPE): where a token is, written into its query and key.

Attention compares every query with every key by a dot product, and a dot product knows nothing of
order: shuffle the tokens and each pair scores the same. RoPE fixes that by *rotating* each query
and key by an angle proportional to its position. Split a head's 64 dimensions into 32 pairs; pair
i of the vector at position m is turned by the angle m * theta_i, where

    theta_i = base ** (-2i / head_dim)      i = 0 .. head_dim/2 - 1,  base = config's rope_theta

so the first pairs spin fast (they see fine-grained, local order) and the last ones slowly (coarse,
long-range order). Rotations compose, so the dot product of a query rotated by m and a key rotated
by n depends only on m - n: attention sees *relative* position, with nothing learned and nothing
added to the embeddings. (So shifting every position by the same amount changes nothing; the bug
that does bite is a new token placed one position off from the cache it attends to.) SmolLM2 uses base 100,000 (Llama 2 used 10,000): slower rotations, which
stay distinguishable over its 8k context.

Two layouts of the pairs exist. The original paper pairs neighbours (x0, x1), (x2, x3), ...;
Llama's Hugging Face weights pair dimension i with i + head_dim/2 (the "rotate half" layout), and a
model must be run in the layout its weights were trained in, so that is what we write:

    rotate_half([x1, x2]) = [-x2, x1]        (each half is head_dim/2 wide)
    rope(x, m)            = x * cos(m * theta) + rotate_half(x) * sin(m * theta)

**Scaling.** To stretch a model past the context it was trained on, configs declare a
`rope_scaling` (older files) or a `rope_parameters` entry with a `rope_type`: `linear` divides every
frequency by `factor` (positions are squeezed), `llama3` (Llama 3.1+) leaves the fast, local
frequencies alone, divides the slow ones by `factor`, and blends smoothly in between. SmolLM2
declares `default`: no scaling. Any other type is refused with a clear error rather than silently
run wrong.
"""

from __future__ import annotations

import math
from typing import Any

import torch

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def inverse_frequencies(head_dim: int, base: float, scaling: dict[str, Any] | None = None) -> torch.Tensor:
    """theta_i for each of the head_dim/2 pairs, after the config's scaling: shape (head_dim/2,).

    Example: head_dim=4, base=10_000 -> [1.0, 0.01]
    """
    assert head_dim % 2 == 0, f"RoPE rotates pairs of dimensions; head_dim must be even, got {head_dim}"
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    rope_type = (scaling or {}).get("rope_type") or (scaling or {}).get("type") or "default"
    if rope_type == "default":
        return inv_freq
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"rope type {rope_type!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    factor = float(scaling["factor"])  # type: ignore[index]
    if rope_type == "linear":
        return inv_freq / factor
    # llama3: wavelengths shorter than old_context / high_freq_factor keep their frequency, longer than
    # old_context / low_freq_factor are divided by factor, and the band between is interpolated.
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])  # type: ignore[index]
    old_context = float(scaling["original_max_position_embeddings"])  # type: ignore[index]
    wavelength = 2 * math.pi / inv_freq
    scaled = torch.where(wavelength > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelength - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    in_band = (wavelength >= old_context / high) & (wavelength <= old_context / low)
    return torch.where(in_band, blended, scaled)


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of m * theta_i for every position m: (B, T) -> two (B, T, head_dim) tensors.

    Each angle is repeated for both halves, matching the rotate-half layout. Angles are computed in
    float32 whatever the model's dtype: at position 8,000 a bfloat16 angle would be off by whole radians.
    """
    angles = positions[..., None].float() * inv_freq.float()  # (B, T, head_dim/2)
    angles = torch.cat((angles, angles), dim=-1)  # (B, T, head_dim)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the last dimension (each half head_dim/2 wide)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys x (B, heads, T, head_dim) by their positions' angles (cos, sin: (B, T, head_dim))."""
    # EXERCISE stage1.rope: broadcast cos and sin over the heads dimension (unsqueeze dim 1); return x * cos + rotate_half(x) * sin
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, head_dim): the same angle for every head
    return x * cos + rotate_half(x) * sin
    # END EXERCISE
