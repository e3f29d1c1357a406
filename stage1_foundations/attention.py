"""Causal grouped-query attention: how each token reads the tokens before it.

Every token's hidden state is projected three ways: a *query* (what am I looking for?), a *key*
(what do I offer?) and a *value* (what do I pass on if chosen). A head scores its query against
every key by a scaled dot product, turns the scores into weights with softmax, and returns the
weighted sum of the values:

    attention(Q, K, V) = softmax(Q K^T / sqrt(head_dim) + mask) V

The **causal mask** adds -inf to every score of a key that lies in the query's future, so position
t reads positions 0..t only: that is what lets one forward pass train on every position at once,
and what makes the KV cache valid (a past key never needs recomputing, because nothing after it
can change it). In a batch, the same mask also hides *padding* slots, so a short prompt padded on
the left sees only its own tokens.

**Grouped-query attention (GQA).** SmolLM2 has 9 query heads but only 3 key/value heads: each K/V
head is shared by a group of 3 query heads. The quality cost is small and the KV cache (the memory
that limits how many users a server can hold) is 3x smaller. Hugging Face implements it by
repeating each K/V head 3 times (`repeat_kv`); we get the same result without copying by viewing
the 9 query heads as 3 groups of 3 and letting the matmul broadcast one K/V head over its group:

    q: (B, 9, T, 64) -> (B, 3, 3, T, 64)     k, v: (B, 3, S, 64) -> (B, 3, 1, S, 64)

Query head h reads K/V head h // 3, exactly as `repeat_kv` pairs them.

A masked score is the most negative finite float, not -inf: a padding query whose every key is
masked then gets uniform weights instead of 0/0 = NaN, and its output is ignored anyway.
"""

from __future__ import annotations

import torch


def causal_mask(
    query_slots: torch.Tensor, key_length: int, key_padding: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """The additive mask: 0 where query slot i may read key slot j, a huge negative number elsewhere.

    query_slots (T,): the cache slot of each query; key slots run 0..key_length-1.
    key_padding (B, key_length): 1 for a real token, 0 for padding (None: no padding).
    Returns (B or 1, 1, T, key_length), broadcast over heads.

    Example: query_slots [2], key_length 3 -> [[[[0, 0, 0]]]]; query_slots [0, 1] -> [[0, -big, -big], [0, 0, -big]]
    """
    keys = torch.arange(key_length, device=query_slots.device)
    allowed = keys[None, :] <= query_slots[:, None]  # (T, S): the causal part
    allowed = allowed[None, None]  # (1, 1, T, S)
    if key_padding is not None:
        allowed = allowed & key_padding[:, None, None, :].bool()  # (B, 1, T, S)
    return torch.zeros(allowed.shape, dtype=dtype, device=query_slots.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def grouped_query_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v, with each K/V head shared by a group of query heads.

    q (B, H, T, D), k and v (B, H_kv, S, D), mask (B or 1, 1, T, S) -> (B, H, T, D).
    """
    batch, heads, length, head_dim = q.shape
    kv_heads = k.shape[1]
    assert heads % kv_heads == 0, f"{heads} query heads cannot share {kv_heads} key/value heads evenly"
    group = heads // kv_heads
    # EXERCISE stage1.gqa_attention: view q as (B, H_kv, group, T, D) and k, v as (B, H_kv, 1, S, D); scores = q @ k^T / sqrt(D) + mask (unsqueezed to broadcast over the group); softmax in float32; weights @ v, back to (B, H, T, D)
    q = q.view(batch, kv_heads, group, length, head_dim)  # query head h = kv_head * group + g
    k, v = k.unsqueeze(2), v.unsqueeze(2)  # (B, H_kv, 1, S, D): one K/V head for the whole group
    scores = (q @ k.transpose(-1, -2)) * head_dim**-0.5  # (B, H_kv, group, T, S)
    scores = scores + mask.unsqueeze(2)  # (B|1, 1, 1, T, S)
    weights = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
    return (weights @ v).reshape(batch, heads, length, head_dim)
    # END EXERCISE
