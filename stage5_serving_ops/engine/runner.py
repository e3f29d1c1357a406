"""The model runner: one forward pass over everything the scheduler picked, from many sequences.

Stage 1's batched decoder padded its rows to one rectangle. A serving engine mixes work of
different shapes in one step: the first chunk of a new 300-token prompt (a *prefill*) beside one
new token for each of fifteen running sequences (*decodes*). Padding all of that to 300 x 16 would
waste most of the step, so the runner **packs** it: the tokens of every scheduled sequence are
laid end to end into one (N, hidden) matrix. Everything that treats tokens independently, the
embedding, the norms, every projection and the MLP (that is, nearly all the weights), then runs
once on the packed matrix, reading each weight once for all N tokens. Only attention needs to know
which tokens belong together, and it reads each sequence's keys and values through its block table:

    decodes (one new token each)   batched: (B, heads, 1, 64) against (B, kv_heads, L_max, 64), masked by length
    prefills and verify chunks     one at a time: (1, heads, T, 64) against (1, kv_heads, L, 64), causal

The layers are stage 1's own (`ScratchLlama`: its projections, norms, MLP, RoPE and grouped-query
attention); only the cache is new. The logits, the costly (tokens x 49,152) head, are computed
only where the engine needs a token: the last position of a sequence whose tokens are all in,
or every position of a speculative chunk that must be verified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from stage1_foundations.model import ScratchLlama
from stage1_foundations.rope import apply_rope, rope_cos_sin
from stage5_serving_ops.engine.block_pool import BlockTable
from stage5_serving_ops.engine.paged_attention import PagedKVCache, paged_attention


@dataclass
class ForwardItem:
    """One sequence's share of a step."""

    token_ids: list[int]  # the tokens to run now (a prefill chunk, one decode token, or token + drafts)
    start: int  # the position of the first of them (how many tokens of this sequence are cached)
    table: BlockTable  # where its tokens' keys and values live (blocks for these tokens included)
    logits: str = "last"  # "none" (a prefill chunk that is not the last), "last", or "all" (to verify drafts)


class ModelRunner:
    def __init__(self, model: ScratchLlama, num_blocks: int, block_size: int) -> None:
        c = model.config
        self.model, self.block_size = model, block_size
        self.cache = PagedKVCache(c.num_layers, num_blocks, block_size, c.num_kv_heads, c.head_dim,
                                  model.dtype, model.device)  # fmt: skip

    def _slot_index(self, items: Sequence[ForwardItem], lengths: Sequence[int]) -> torch.Tensor:
        """(B, L_max): the slot of each row's tokens 0..length-1, padded with slot 0 (masked later)."""
        bs, longest = self.block_size, max(lengths)
        blocks = max(len(it.table.block_ids) for it in items)
        table = torch.tensor([it.table.block_ids + [0] * (blocks - len(it.table.block_ids)) for it in items])
        positions = torch.arange(longest)
        slots = table[:, positions // bs] * bs + positions % bs  # (B, L_max)
        keep = positions[None, :] < torch.tensor(lengths)[:, None]
        return slots.masked_fill(~keep, 0).to(self.model.device)

    @torch.inference_mode()
    def forward(self, items: Sequence[ForwardItem]) -> list[torch.Tensor | None]:
        """Run every item's tokens; per item, its logits ((1 or T, vocab) float32) or None."""
        model, bs = self.model, self.block_size
        c, device = model.config, model.device
        ids = torch.tensor([t for it in items for t in it.token_ids], device=device)  # (N,)
        positions = torch.tensor(
            [it.start + i for it in items for i in range(len(it.token_ids))], device=device
        )
        slots = torch.tensor([it.table.slot(it.start + i, bs) for it in items for i in range(len(it.token_ids))],
                             device=device)  # fmt: skip
        offsets = [0]
        for it in items:
            offsets.append(offsets[-1] + len(it.token_ids))
        decodes = [i for i, it in enumerate(items) if len(it.token_ids) == 1]
        chunks = [i for i, it in enumerate(items) if len(it.token_ids) > 1]
        if decodes:  # one batched attention call for every single-token row
            decode_rows = torch.tensor([offsets[i] for i in decodes], device=device)
            decode_lens = [items[i].start + 1 for i in decodes]
            decode_slots = self._slot_index([items[i] for i in decodes], decode_lens)
            decode_lens_t = torch.tensor(decode_lens, device=device)
        chunk_slots = {
            i: self._slot_index([items[i]], [items[i].start + len(items[i].token_ids)]) for i in chunks
        }

        cos, sin = rope_cos_sin(positions[None, :], model.inv_freq, model.dtype)  # (1, N, head_dim)
        h = model.embed_tokens(ids)  # (N, hidden): every token of every sequence, end to end
        for layer, block in enumerate(model.layers):
            attn = block.self_attn
            x = block.input_layernorm(h)
            q = attn.q_proj(x).view(-1, c.num_heads, c.head_dim)  # (N, heads, D)
            k = attn.k_proj(x).view(-1, c.num_kv_heads, c.head_dim)  # (N, kv_heads, D)
            v = attn.v_proj(x).view(-1, c.num_kv_heads, c.head_dim)
            q = apply_rope(q.transpose(0, 1)[None], cos, sin)[0].transpose(0, 1)
            k = apply_rope(k.transpose(0, 1)[None], cos, sin)[0].transpose(0, 1)
            self.cache.write(layer, slots, k, v)  # this step's keys and values, into their slots
            out = torch.empty_like(q)
            if decodes:
                qd = q[decode_rows][:, :, None, :]  # (B, heads, 1, D)
                out[decode_rows] = paged_attention(
                    qd, self.cache, layer, decode_slots, context_lens=decode_lens_t
                )[:, :, 0]
            for i in chunks:
                a, b = offsets[i], offsets[i + 1]
                qc = q[a:b].transpose(0, 1)[None]  # (1, heads, T, D)
                out[a:b] = paged_attention(qc, self.cache, layer, chunk_slots[i], positions=positions[a:b])[
                    0
                ].transpose(0, 1)
            h = h + attn.o_proj(out.reshape(-1, c.num_heads * c.head_dim))
            h = h + block.mlp(block.post_attention_layernorm(h))

        wanted = [
            (i, offsets[i + 1] - 1 if it.logits == "last" else None)
            for i, it in enumerate(items)
            if it.logits != "none"
        ]
        rows = [
            r
            for i, last in wanted
            for r in ([last] if last is not None else range(offsets[i], offsets[i + 1]))
        ]
        results: list[torch.Tensor | None] = [None] * len(items)
        if rows:
            head = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
            logits = (
                model.norm(h[torch.tensor(rows, device=device)]) @ head.T
            ).float()  # only the rows needed
            at = 0
            for i, last in wanted:
                n = 1 if last is not None else offsets[i + 1] - offsets[i]
                results[i] = logits[at : at + n]
                at += n
        return results
