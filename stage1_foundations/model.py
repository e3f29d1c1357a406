"""A Llama decoder in plain PyTorch, running SmolLM2-135M-Instruct's real weights.

`forward.py` called `model(...)`; this file is what happens inside. SmolLM2 is a Llama: a stack of
identical blocks between an embedding table and a projection back to the vocabulary.

    ids (B, T)
      -> embed_tokens                                     (B, T, 576)      a row of a table per id
      -> 30 x block:
           h = h + attention(rms_norm(h), positions)      grouped-query, causal, rotary (RoPE)
           h = h + swiglu_mlp(rms_norm(h))                576 -> 1536 -> 576
      -> rms_norm -> h @ embed_tokens^T                   (B, T, 49152)    logits; the head is tied

Every block *adds* to the residual stream h rather than replacing it, and normalises only what it
reads (pre-norm): that is what lets 30 blocks train stably. The mechanisms each live in their own
file: `rope.py` (positions), `attention.py` (causal grouped-query attention), `kv_cache.py` (the
static cache). This file assembles them, reads `config.json`, and loads the weights by name from
the safetensors file, refusing loudly on any missing or misshapen tensor.

**The parameters, by component** (SmolLM2-135M: hidden 576, 30 layers, 9 query heads and 3 K/V
heads of 64 dims, MLP 1536, vocabulary 49,152; `parameter_count()` computes this for any config):

    embedding (tied with the head)   49,152 x 576                    28,311,552   21%
    attention per layer              576 x (576 + 2x192 + 576)        884,736
    MLP per layer                    3 x 576 x 1536                 2,654,208
    norms per layer                  2 x 576                            1,152
    30 layers                                                     106,202,880   79%
    final norm                                                            576
    total                                                         134,515,008

Note how much of a small model is its vocabulary: the embedding alone is a fifth of it. In fp32
that is 538 MB, and a decode step reads all of it once (the tied head reads the whole table), so
memory bandwidth, not arithmetic, sets the speed of one user's tokens; `bench` measures both.

**The KV cache costs** 2 x 30 layers x 3 K/V heads x 64 dims = 11,520 numbers per token: 45 KiB
in fp32, 22.5 KiB in bf16 (what vLLM stores), 360 MiB in fp32 for a full 8k context.

No Transformers modelling class runs here; the tests check the logits against Transformers'
`LlamaForCausalLM` on the same weights (1e-5 on a tiny random config, 1e-4 on the real model).

    python -m stage1_foundations generate --engine scratch --chat "What is the capital of France?"
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stage1_foundations.attention import causal_mask, grouped_query_attention
from stage1_foundations.kv_cache import StaticKVCache
from stage1_foundations.rope import apply_rope, inverse_frequencies, rope_cos_sin


class ModelFormatError(ValueError):
    """config.json or the weights do not describe a model this file can run; the message says why."""


# --------------------------------------------------------------------------------------------
# The configuration: the numbers in config.json that fix every shape


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    eos_token_id: list[int] = field(default_factory=list)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        """Read a Hugging Face Llama config. Old files give `rope_theta` + `rope_scaling`; new ones a
        `rope_parameters` dict holding both."""
        kind = raw.get("model_type")
        if kind not in (None, "llama"):
            raise ModelFormatError(f"config.json describes a {kind!r} model; this file runs Llama models")
        needed = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
        )
        missing = [k for k in needed if k not in raw]
        if missing:
            raise ModelFormatError(f"config.json lacks {', '.join(missing)}")
        if raw.get("hidden_act", "silu") != "silu":
            raise ModelFormatError(
                f"hidden_act {raw['hidden_act']!r}: this file runs the SiLU (SwiGLU) MLP only"
            )
        if raw.get("mlp_bias"):
            raise ModelFormatError("mlp_bias=true is not a Llama layout this file runs")
        rope = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
        theta = float(rope.pop("rope_theta", raw.get("rope_theta", 10_000.0)))
        scaling = rope if (rope.get("rope_type") or rope.get("type") or "default") != "default" else None
        heads = int(raw["num_attention_heads"])
        eos = raw.get("eos_token_id")
        config = cls(
            vocab_size=int(raw["vocab_size"]), hidden_size=int(raw["hidden_size"]),
            intermediate_size=int(raw["intermediate_size"]), num_layers=int(raw["num_hidden_layers"]),
            num_heads=heads, num_kv_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or raw["hidden_size"] // heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_scaling=scaling,
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            attention_bias=bool(raw.get("attention_bias", False)),
            eos_token_id=[] if eos is None else (list(eos) if isinstance(eos, list) else [int(eos)]),
        )  # fmt: skip
        if config.num_heads % config.num_kv_heads:
            raise ModelFormatError(
                f"{config.num_heads} attention heads do not split into {config.num_kv_heads} key/value groups"
            )
        try:  # refuse an unknown RoPE scaling now, not at the first forward pass
            inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
        except (ValueError, KeyError) as e:
            raise ModelFormatError(f"config.json's RoPE: {e}") from None
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as e:
            raise ModelFormatError(f"cannot read {path}: {e}") from None

    def parameter_count(self) -> dict[str, int]:
        """Parameters by component (the table in this module's essay)."""
        q_out, kv_out = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attention = self.hidden_size * (q_out + 2 * kv_out) + q_out * self.hidden_size
        if self.attention_bias:
            attention += q_out + 2 * kv_out + self.hidden_size
        counts = {
            "embedding": self.vocab_size * self.hidden_size,
            "attention": self.num_layers * attention,
            "mlp": self.num_layers * 3 * self.hidden_size * self.intermediate_size,
            "norms": (2 * self.num_layers + 1) * self.hidden_size,
            "lm_head": 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size,
        }
        return {**counts, "total": sum(counts.values())}

    def kv_cache_bytes_per_token(self, bytes_per_number: int = 4) -> int:
        """Keys and values of one token in every layer: 2 x layers x kv_heads x head_dim numbers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_number


# --------------------------------------------------------------------------------------------
# The blocks


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: rescale each vector to unit root-mean-square, then by a
    learned per-dimension gain. Unlike LayerNorm it neither subtracts the mean nor adds a bias."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim) -> (..., dim)
        # EXERCISE stage1.rmsnorm: in float32, divide x by the root of (mean of x^2 over the last dim + eps); cast back to x's dtype and multiply by weight
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)
        # END EXERCISE


class SwiGLU(nn.Module):
    """The MLP: down(silu(gate(x)) * up(x)). The gate decides, per hidden unit, how much of `up` passes."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, 576) -> (B, T, 1536) -> (B, T, 576)
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Attention(nn.Module):
    """Project to queries, keys, values; rotate q and k by position; attend over the cache."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer, self.heads, self.kv_heads, self.head_dim = (
            layer, config.num_heads, config.num_kv_heads, config.head_dim)  # fmt: skip
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, config.num_heads * config.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, config.num_kv_heads * config.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, config.num_kv_heads * config.head_dim, bias=bias)
        self.o_proj = nn.Linear(config.num_heads * config.head_dim, config.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                cache: StaticKVCache | None, start: int) -> torch.Tensor:  # fmt: skip
        batch, length, _ = x.shape
        # (B, T, heads * 64) -> (B, heads, T, 64): one row of 64 numbers per head and position
        q = self.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # keys are cached already rotated
        if cache is not None:
            k, v = cache.update(self.layer, k, v, start)  # (B, kv_heads, start + T, 64)
        out = grouped_query_attention(q, k, v, mask)  # (B, heads, T, 64)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, self.heads * self.head_dim))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                cache: StaticKVCache | None, start: int) -> torch.Tensor:  # fmt: skip
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask, cache, start)  # pre-norm, residual
        return h + self.mlp(self.post_attention_layernorm(h))


@dataclass
class CausalLMOutput:
    logits: torch.Tensor  # (B, T or logits_to_keep, vocab)
    past_key_values: StaticKVCache | None


class ScratchLlama(nn.Module):
    """The whole decoder. Its call signature follows Transformers' (input_ids, attention_mask,
    position_ids, past_key_values, use_cache, logits_to_keep -> .logits, .past_key_values), so the
    decode loops of `decode.py` and `batch.py` drive this model and Transformers' alike."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )
        self.register_buffer(
            "inv_freq", inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling), persistent=False
        )  # fmt: skip
        self.name_or_path = ""

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def new_kv_cache(self, batch: int, capacity: int) -> StaticKVCache:
        """A static cache for `batch` rows of up to `capacity` tokens (prompt + new tokens)."""
        c = self.config
        return StaticKVCache(
            c.num_layers, batch, c.num_kv_heads, c.head_dim, capacity, self.dtype, self.device
        )

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, cache slots + T): 1 real, 0 padding
        position_ids: torch.Tensor | None = None,  # (B, T): each token's position in its own row
        past_key_values: StaticKVCache | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,  # 0: logits at every position; n: only the last n
    ) -> CausalLMOutput:
        batch, length = input_ids.shape
        cache = past_key_values
        if use_cache and cache is None:  # a prefill-only cache; decode loops allocate one with room to grow
            cache = self.new_kv_cache(batch, length)
        start = cache.length if cache is not None else 0  # the slot of this call's first token
        slots = torch.arange(start, start + length, device=input_ids.device)  # (T,)
        if position_ids is None:
            position_ids = slots[None, :].expand(batch, length)
        if attention_mask is not None and attention_mask.shape != (batch, start + length):
            raise ValueError(
                f"attention_mask must be (batch, {start + length}), got {tuple(attention_mask.shape)}"
            )
        mask = causal_mask(slots, start + length, attention_mask, self.dtype)  # (B|1, 1, T, S)
        cos, sin = rope_cos_sin(position_ids, self.inv_freq, self.dtype)  # (B, T, 64) each

        h = self.embed_tokens(input_ids)  # (B, T, 576)
        for block in self.layers:
            h = block(h, cos, sin, mask, cache, start)
        if cache is not None:
            cache.advance(length)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        h = self.norm(h)
        head = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = h @ head.T  # (B, T', vocab): tied, the embedding table read backwards
        return CausalLMOutput(logits=logits, past_key_values=cache if use_cache else None)

    # ----------------------------------------------------------------------------------------
    # Loading: every tensor by its name in the checkpoint, every shape checked

    def expected_weights(self) -> dict[str, tuple[int, ...]]:
        """The checkpoint's tensor names (Transformers' Llama layout) and the shape each must have.
        Our modules carry the same names, less the checkpoint's `model.` prefix."""
        return {
            ("" if name.startswith("lm_head") else "model.") + name: tuple(p.shape)
            for name, p in self.named_parameters()
        }

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> ScratchLlama:  # fmt: skip
        """Read `config.json`, then every weight from `model.safetensors` (or its shards) by name."""
        from safetensors import safe_open

        directory = Path(directory)
        config = ModelConfig.from_file(directory / "config.json")
        with torch.device("meta"):  # shapes only: no memory, no random initialisation to overwrite
            model = cls(config)
        files = _safetensors_files(directory)
        expected = model.expected_weights()
        found: dict[str, torch.Tensor] = {}
        problems: list[str] = []
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    if name not in expected:
                        # checkpoints may store a tied head and old rotary buffers: derived, not weights
                        if (
                            not (name == "lm_head.weight" and config.tie_word_embeddings)
                            and "rotary_emb" not in name
                        ):
                            problems.append(f"unexpected tensor {name}")
                        continue
                    tensor = f.get_tensor(name)
                    if tuple(tensor.shape) != expected[name]:
                        problems.append(f"{name} has shape {tuple(tensor.shape)}, expected {expected[name]}")
                    found[name] = tensor
        problems += [
            f"missing tensor {name} {shape}" for name, shape in expected.items() if name not in found
        ]
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise ModelFormatError(f"{directory}: {'; '.join(problems[:3])}{more}")
        state = {name.removeprefix("model."): t.to(dtype=dtype, device=device) for name, t in found.items()}
        model.load_state_dict(state, assign=True, strict=True)
        model.inv_freq = inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling).to(
            device
        )
        model.name_or_path = str(directory)
        return model.eval()


def _safetensors_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():  # a sharded checkpoint: the index names each shard
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / s for s in shards]
    single = directory / "model.safetensors"
    if not single.is_file():
        raise ModelFormatError(f"{directory} has no model.safetensors (nor a sharded index)")
    return [single]


def load_scratch_model(model: str, dtype: torch.dtype = torch.float32) -> ScratchLlama:
    """A registry name, hub id or directory (resolved like every other --model) -> the hand-written model."""
    from shared.models import resolve

    return ScratchLlama.from_pretrained(resolve(model, kind="chat"), dtype=dtype)
