"""plan.py: the capacity planner's arithmetic, its refusals, and its KV figure against vLLM's own."""

from __future__ import annotations

import json
import re

import pytest

from shared.console import BadInput
from stage5_serving_ops.plan import ModelShape, choose_layout, load_shape, plan
from stage5_serving_ops.server import engine_dtype_for


@pytest.mark.parametrize(
    "model, parameters",
    [("smollm2-135m-instruct", 134_515_008), ("mistral-7b-v0.1", 7_241_732_096), ("llama-3.1-8b", 8_030_261_248),
     ("llama-3.1-70b", 70_553_706_496)],  # the counts each model's card and Transformers report
)  # fmt: skip
def test_parameter_counts_match_the_published_ones(model, parameters):
    assert load_shape(model, None).parameters() == parameters


@pytest.mark.exercise("stage5.kv_capacity")
def test_kv_bytes_and_tokens_for_the_served_model():
    shape = load_shape("smollm2-135m-instruct", None)
    result = plan(shape, "bf16", kv_cache_gib=2, block_size=128, context=2048)
    assert result["kv_cache_bytes_per_token"] == 2 * 30 * 3 * 64 * 2 == 23_040
    assert result["kv_cache_tokens"] == 93_184, "2 GiB / 23,040 bytes, rounded down to whole 128-token blocks"
    assert result["concurrent_sequences"] == 45


@pytest.mark.exercise("stage5.kv_capacity")
def test_a_70b_model_on_80_gib_gpus():
    shape = load_shape("llama-3.1-70b", None)
    assert shape.kv_bytes_per_token(2) == 327_680
    tp4 = plan(shape, "bf16", memory_gib=80, tensor_parallel=4, context=8192)
    assert tp4["weight_bytes_per_device"] == pytest.approx(70_553_706_496 * 2 / 4)
    assert tp4["kv_cache_bytes_per_token_per_device"] == 327_680 / 4
    assert 50 < tp4["concurrent_sequences"] < 70
    layout = choose_layout(shape, "bf16", memory_gib=80, context=8192, users=16)
    assert (layout["tensor_parallel_size"], layout["pipeline_parallel_size"], layout["nodes"]) == (4, 1, 1)
    # 16 GiB GPUs: 8 of them cannot hold 141 GB of weights, so the layers are split across machines
    across = choose_layout(shape, "bf16", memory_gib=16, context=8192, users=8)
    assert across["pipeline_parallel_size"] > 1 and across["nodes"] > 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param(
            {"memory_gib": 16},
            "needs 65.7 GiB of weights per device, more than 90% of 16 GiB",
            marks=pytest.mark.exercise("stage5.kv_capacity"),
        ),
        (
            {"memory_gib": 80, "tensor_parallel": 3},
            "tensor parallel size 3 does not divide the 64 attention heads",
        ),
        ({"memory_gib": 80, "precision": "fp64"}, "--precision must be one of"),
        ({"memory_gib": 80, "kv_cache_gib": 2}, "give exactly one of"),
    ],
)
def test_bad_plans_are_refused_with_the_numbers(kwargs, message):
    shape = load_shape("llama-3.1-70b", None)
    with pytest.raises(BadInput, match=re.escape(message)):
        plan(shape, **{"tensor_parallel": 2, **kwargs})


def test_a_config_without_the_fields_is_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "bert", "hidden_size": 768}))
    with pytest.raises(
        BadInput, match="lacks num_hidden_layers, num_attention_heads, intermediate_size, vocab_size"
    ):
        ModelShape.from_file(path)


def vllm_kv_cache_tokens(server) -> int | None:
    """The KV cache vLLM allocated, in tokens: its cache_config_info metric (blocks x block size), else its log."""
    import urllib.request

    request = urllib.request.Request(server.base_url.removesuffix("/v1") + "/metrics",
                                     headers={"Authorization": f"Bearer {server.config.api_key}"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        metrics = response.read().decode()
    info = next((line for line in metrics.splitlines() if line.startswith("vllm:cache_config_info{")), "")
    blocks, size = re.search(r'num_gpu_blocks="(\d+)"', info), re.search(r'block_size="(\d+)"', info)
    if blocks and size:
        return int(blocks.group(1)) * int(size.group(1))
    found = re.search(r"KV cache size: ([\d,]+) tokens", server.log_path.read_text(errors="replace"))
    return int(found.group(1).replace(",", "")) if found else None


@pytest.mark.server
def test_the_planner_agrees_with_vllms_reported_kv_cache(vllm_server):
    """vLLM reports the KV cache it allocated; the served model at the server's VLLM_CPU_KVCACHE_SPACE."""
    reported = vllm_kv_cache_tokens(vllm_server)
    assert reported, f"vLLM reports its KV cache size (metrics or log {vllm_server.log_path})"
    # the cache is in the dtype the server was started in: half as many tokens in float32 as in bfloat16
    precision = {"bfloat16": "bf16", "float32": "fp32"}[engine_dtype_for(vllm_server.config.dtype, gpu=False)]
    planned = plan(load_shape(vllm_server.config.model, None), precision, kv_cache_gib=vllm_server.config.kv_cache_gib,
                   block_size=128)["kv_cache_tokens"]  # fmt: skip
    assert abs(planned - reported) <= 0.05 * reported, (planned, reported)
