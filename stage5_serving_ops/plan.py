"""Capacity planning: how much memory a model needs, and how many users fit, from its config.json alone.

Serving memory has two parts. The **weights**: parameters x bytes per parameter (2 in bf16, 1 in
int8/fp8, about 0.5 in 4-bit), split across the devices of a tensor-parallel group. And the **KV
cache**: every token of every running sequence keeps a key and a value per layer and per K/V head,

    KV bytes per token = 2 (K and V) x layers x kv_heads x head_dim x bytes per number

which for SmolLM2-135M in bf16 is 2 x 30 x 3 x 64 x 2 = 23,040 bytes, and for Llama-3.1-70B
2 x 80 x 8 x 128 x 2 = 327,680 bytes: 320 KiB for *one* token, 2.5 GiB for one 8k-token conversation.
What memory is left after the weights (vLLM takes `gpu_memory_utilization`, 90% by default, of each
device) holds the cache, in blocks of `block_size` tokens (16 on a GPU; vLLM's CPU backend uses
128), and that number of tokens, divided by the context each user needs, is how many users run at
once. Everything past that waits in the queue.

**Tensor parallelism** (TP) splits every layer across N devices: each holds 1/N of the weights and
1/N of the K/V heads (so heads, and K/V heads, must divide by N, or K/V heads are replicated when
there are fewer of them than devices). **Pipeline parallelism** (PP) gives each of M groups a
contiguous slice of the layers; it is how a model grows past the 8 GPUs of one machine.

The planner is arithmetic on the config, checked by a test against the KV cache size vLLM itself
reports for the served model. It ignores activation memory and CUDA graphs, which vLLM's profiler
subtracts too, so on a GPU its token count is an upper bound by a few percent.

    python -m stage5_serving_ops plan --model smollm2-135m-instruct --kv-cache-gib 2 --precision bf16 --block-size 128
    python -m stage5_serving_ops plan --config stage5_serving_ops/data/configs/llama-3.1-70b.json --memory-gib 80 --context 8192
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shared.console import BadInput

GIB = 2**30
CONFIGS = Path(__file__).parent / "data" / "configs"
BYTES_PER_PARAMETER = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
    "nf4": 0.5,
}
# 4-bit weights keep their KV cache in bf16; fp8 KV caches are a separate vLLM option (--kv-cache-dtype)
KV_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 2, "int8": 2, "int4": 2, "nf4": 2}
TP_CHOICES = (1, 2, 4, 8)  # GPUs per machine: tensor parallelism stays inside one


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer's config.json that fix its memory."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    attention_bias: bool
    max_context: int

    @classmethod
    def from_config(cls, raw: dict[str, Any], name: str = "") -> ModelShape:
        needed = (
            "num_hidden_layers",
            "hidden_size",
            "num_attention_heads",
            "intermediate_size",
            "vocab_size",
        )
        missing = [k for k in needed if k not in raw]
        if missing:
            raise BadInput(
                f"{name or 'the config'} lacks {', '.join(missing)}: not a decoder config the planner reads"
            )
        if raw.get("num_local_experts") or raw.get("num_experts"):
            raise BadInput(f"{name} is a mixture of experts; the planner counts dense models only")
        heads = int(raw["num_attention_heads"])
        return cls(
            name=name or raw.get("_name_or_path", "model"), layers=int(raw["num_hidden_layers"]),
            hidden=int(raw["hidden_size"]), heads=heads, kv_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or int(raw["hidden_size"]) // heads),
            intermediate=int(raw["intermediate_size"]), vocab=int(raw["vocab_size"]),
            tied_embeddings=bool(raw.get("tie_word_embeddings", False)),
            attention_bias=bool(raw.get("attention_bias", raw.get("model_type") == "qwen2")),
            max_context=int(raw.get("max_position_embeddings", 0)),
        )  # fmt: skip

    @classmethod
    def from_file(cls, path: str | Path) -> ModelShape:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise BadInput(f"cannot read {path}: {e}") from None
        if not isinstance(raw, dict):
            raise BadInput(f"{path} is not a JSON object")
        return cls.from_config(raw, name=path.stem if path.name != "config.json" else path.parent.name)

    def parameters(self) -> int:
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = self.hidden * (q + 2 * kv) + q * self.hidden + (q + 2 * kv if self.attention_bias else 0)
        per_layer = attention + 3 * self.hidden * self.intermediate + 2 * self.hidden
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * per_layer + embeddings + self.hidden

    def kv_bytes_per_token(self, bytes_per_number: int, tensor_parallel: int = 1) -> int:
        """Per device: K/V heads split across the TP group (replicated when fewer than devices)."""
        kv_heads = max(1, self.kv_heads // tensor_parallel)
        return 2 * self.layers * kv_heads * self.head_dim * bytes_per_number


def load_shape(model: str | None, config: str | None) -> ModelShape:
    """--config PATH (any Hugging Face config.json), or --model (a registry name, a shipped config's
    name like llama-3.1-70b, or a model directory)."""
    if config:
        return ModelShape.from_file(config)
    assert model, "give a model or a config"
    shipped = CONFIGS / f"{model}.json"
    if shipped.is_file():
        return ModelShape.from_file(shipped)
    from shared.models import resolve

    return ModelShape.from_file(resolve(model, kind="chat") / "config.json")


def check_parallel(shape: ModelShape, tensor_parallel: int, pipeline_parallel: int = 1) -> None:
    if tensor_parallel < 1 or pipeline_parallel < 1:
        raise BadInput(f"parallel degrees must be >= 1, got TP {tensor_parallel}, PP {pipeline_parallel}")
    if shape.heads % tensor_parallel:
        raise BadInput(
            f"tensor parallel size {tensor_parallel} does not divide the {shape.heads} attention heads of {shape.name}"
        )
    if shape.kv_heads % tensor_parallel and tensor_parallel % shape.kv_heads:
        raise BadInput(f"tensor parallel size {tensor_parallel} and the {shape.kv_heads} K/V heads of {shape.name} "
                       "neither divide the other")  # fmt: skip
    if pipeline_parallel > shape.layers:
        raise BadInput(
            f"pipeline parallel size {pipeline_parallel} exceeds the {shape.layers} layers of {shape.name}"
        )


def plan(shape: ModelShape, precision: str = "bf16", memory_gib: float | None = None, kv_cache_gib: float | None = None,
         tensor_parallel: int = 1, pipeline_parallel: int = 1, context: int | None = None, block_size: int = 16,
         memory_utilization: float = 0.9) -> dict[str, Any]:  # fmt: skip
    """Weights per device, KV bytes per token, KV tokens that fit, and concurrent sequences at `context`.

    Give `kv_cache_gib` (the cache size itself, like VLLM_CPU_KVCACHE_SPACE) or `memory_gib` (each
    device's memory: the cache gets memory x utilization - weights)."""
    if precision not in BYTES_PER_PARAMETER:
        raise BadInput(f"--precision must be one of {', '.join(BYTES_PER_PARAMETER)}, got {precision!r}")
    if (memory_gib is None) == (kv_cache_gib is None):
        raise BadInput(
            "give exactly one of --memory-gib (each device's memory) or --kv-cache-gib (the cache itself)"
        )
    if block_size < 1 or (context is not None and context < 1):
        raise BadInput(f"--block-size and --context must be >= 1, got {block_size} and {context}")
    check_parallel(shape, tensor_parallel, pipeline_parallel)
    devices = tensor_parallel * pipeline_parallel
    params = shape.parameters()
    weight_bytes = params * BYTES_PER_PARAMETER[precision]
    weights_per_device = weight_bytes / devices
    # EXERCISE stage5.kv_capacity: bytes per token per device = kv_bytes_per_token(KV_BYTES[precision], tensor_parallel) over this device's share of the layers (divide by pipeline_parallel); cache bytes = kv_cache_gib, or memory x utilization - weights per device (an error naming both when the weights do not fit); tokens = whole blocks of block_size that fit
    per_token = shape.kv_bytes_per_token(KV_BYTES[precision], tensor_parallel) / pipeline_parallel
    if kv_cache_gib is not None:
        cache_bytes = kv_cache_gib * GIB
    else:
        cache_bytes = memory_gib * GIB * memory_utilization - weights_per_device
        if cache_bytes <= 0:
            raise BadInput(f"{shape.name} in {precision} needs {weights_per_device / GIB:.1f} GiB of weights per device, "
                           f"more than {memory_utilization:.0%} of {memory_gib} GiB; add devices or quantize")  # fmt: skip
    tokens = int(cache_bytes // per_token) // block_size * block_size
    # END EXERCISE
    result = {
        "model": shape.name, "precision": precision, "parameters": params, "weight_bytes": weight_bytes,
        "tensor_parallel_size": tensor_parallel, "pipeline_parallel_size": pipeline_parallel, "devices": devices,
        "weight_bytes_per_device": weights_per_device,
        "kv_cache_bytes_per_token": shape.kv_bytes_per_token(KV_BYTES[precision]),
        "kv_cache_bytes_per_token_per_device": per_token, "kv_cache_bytes": cache_bytes, "block_size": block_size,
        "kv_cache_tokens": tokens, "shape": asdict(shape),
    }  # fmt: skip
    if memory_gib is not None:
        result["memory_gib"] = memory_gib
    if context:
        result["context"] = context
        result["concurrent_sequences"] = tokens // context
    return result


def choose_layout(shape: ModelShape, precision: str, memory_gib: float, context: int, users: int = 1,
                  gpus_per_node: int = 8) -> dict[str, Any]:  # fmt: skip
    """The smallest layout that holds the weights and `users` sequences of `context` tokens: tensor
    parallel inside a machine first (1, 2, 4, 8 GPUs), then pipeline stages across machines."""
    for pipeline in range(1, shape.layers + 1):
        for tp in (t for t in TP_CHOICES if t <= gpus_per_node):
            try:
                check_parallel(shape, tp, pipeline)
                result = plan(shape, precision, memory_gib=memory_gib, tensor_parallel=tp, pipeline_parallel=pipeline,
                              context=context)  # fmt: skip
            except BadInput:
                continue
            if result["concurrent_sequences"] >= users:
                return {**result, "nodes": math.ceil(tp * pipeline / gpus_per_node), "users_asked": users}
    raise BadInput(
        f"no layout of up to {gpus_per_node} GPUs per machine holds {shape.name} for {users} users"
    )
