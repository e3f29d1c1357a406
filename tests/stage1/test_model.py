"""model.py and its parts: the hand-written Llama must give Transformers' logits on the same weights.

Fast tests run a tiny random Llama (2 layers, width 64) saved as a real checkpoint; the slow ones
load SmolLM2-135M-Instruct's real weights. The last fast test breaks each mechanism on purpose and
shows that the comparison catches it.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from stage1_foundations import model as model_module
from stage1_foundations.attention import causal_mask, grouped_query_attention
from stage1_foundations.batch import left_pad, positions_from_mask
from stage1_foundations.kv_cache import StaticKVCache
from stage1_foundations.model import ModelConfig, ModelFormatError, RMSNorm, ScratchLlama
from stage1_foundations.rope import inverse_frequencies, rope_cos_sin

TINY_ATOL = 1e-5


def hf_logits(model, ids, **kwargs) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids, **kwargs).logits


def random_ids(batch: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def tiny_pair(tmp_path, **overrides):
    """A random Transformers Llama with these config overrides, and our model loaded from its checkpoint."""
    torch.manual_seed(0)
    settings = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
                "tie_word_embeddings": True}  # fmt: skip
    config = LlamaConfig(**{**settings, **overrides})
    reference = LlamaForCausalLM(config).eval()
    reference.save_pretrained(tmp_path)
    return reference, ScratchLlama.from_pretrained(tmp_path)


# --------------------------------------------------------------------------------------------
# Fast: the tiny random model


@pytest.mark.exercise("stage1.rmsnorm", "stage1.rope", "stage1.gqa_attention")
def test_tiny_logits_equal_transformers(tiny, tiny_scratch):
    reference, ours = tiny[0], tiny_scratch[0]
    ids = random_ids(2, 24, reference.config.vocab_size)
    torch.testing.assert_close(ours(ids).logits, hf_logits(reference, ids), atol=TINY_ATOL, rtol=0)


@pytest.mark.exercise("stage1.rmsnorm", "stage1.rope", "stage1.gqa_attention", "stage1.static_cache")
def test_tiny_cached_steps_equal_a_full_forward(tiny, tiny_scratch):
    reference, ours = tiny[0], tiny_scratch[0]
    ids = random_ids(1, 20, reference.config.vocab_size, seed=1)
    cache = ours.new_kv_cache(1, 20)
    prefill = ours(ids[:, :12], past_key_values=cache, use_cache=True).logits
    steps = [ours(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits for t in range(12, 20)]
    full = hf_logits(reference, ids)
    torch.testing.assert_close(torch.cat([prefill, *steps], dim=1), full, atol=TINY_ATOL, rtol=0)
    assert cache.length == 20


@pytest.mark.exercise("stage1.rmsnorm", "stage1.rope", "stage1.gqa_attention", "stage1.static_cache")
def test_tiny_left_padded_batch_equals_each_row_alone(tiny, tiny_scratch):
    """Rows of different lengths, left-padded, with a mask and per-row positions, prefill then steps."""
    reference, ours = tiny[0], tiny_scratch[0]
    prompts = [random_ids(1, n, reference.config.vocab_size, seed=n)[0].tolist() for n in (5, 11, 8)]
    ids, mask = left_pad(prompts, pad_id=0)
    positions = positions_from_mask(mask)
    cache = ours.new_kv_cache(3, ids.shape[1] + 1)
    batched = ours(
        ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
    ).logits
    step = torch.tensor([[7], [8], [9]])
    mask2 = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], dim=1)
    stepped = ours(step, attention_mask=mask2, position_ids=positions[:, -1:] + 1, past_key_values=cache,
                   use_cache=True).logits  # fmt: skip
    hf_batched = hf_logits(reference, ids, attention_mask=mask, position_ids=positions)
    for row, prompt in enumerate(prompts):
        alone = hf_logits(reference, torch.tensor([[*prompt, 7 + row]]))[0]
        n = len(prompt)
        torch.testing.assert_close(batched[row, -n:], alone[:n], atol=TINY_ATOL, rtol=0)
        torch.testing.assert_close(stepped[row, 0], alone[n], atol=TINY_ATOL, rtol=0)
        torch.testing.assert_close(batched[row, -n:], hf_batched[row, -n:], atol=TINY_ATOL, rtol=0)


@pytest.mark.parametrize(
    "overrides",
    [
        {"num_key_value_heads": 4},  # plain multi-head attention
        {"num_key_value_heads": 1},  # multi-query attention
        {"attention_bias": True},
        {"tie_word_embeddings": False},
        {"rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10_000.0}},
        {
            "rope_parameters": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
                "rope_theta": 500_000.0,
            }
        },  # fmt: skip
    ],
    ids=["mha", "mqa", "bias", "untied", "rope-linear", "rope-llama3"],
)
@pytest.mark.exercise("stage1.rmsnorm", "stage1.rope", "stage1.gqa_attention")
def test_config_variants_equal_transformers(tmp_path, overrides):
    reference, ours = tiny_pair(tmp_path, **overrides)
    ids = random_ids(2, 200, 300, seed=2)  # long enough for the llama3 scaling's bands to matter
    torch.testing.assert_close(ours(ids).logits, hf_logits(reference, ids), atol=TINY_ATOL, rtol=0)


@pytest.mark.parametrize("rope_type", ["default", "linear", "llama3"])
def test_rope_frequencies_equal_transformers(rope_type):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = {"rope_type": rope_type, "rope_theta": 100_000.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 2048}  # fmt: skip
    config = LlamaConfig(hidden_size=576, num_attention_heads=9, head_dim=64, rope_parameters=params)
    if rope_type == "default":
        expected = 1.0 / (100_000.0 ** (torch.arange(0, 64, 2).float() / 64))
    else:
        expected, _ = ROPE_INIT_FUNCTIONS[rope_type](config)
    scaling = None if rope_type == "default" else params
    torch.testing.assert_close(inverse_frequencies(64, 100_000.0, scaling), expected)


@pytest.mark.exercise("stage1.rmsnorm")
def test_rms_norm_equals_transformers():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x = torch.randn(3, 5, 64) * 4
    ours, theirs = RMSNorm(64, 1e-5), LlamaRMSNorm(64, 1e-5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        theirs.weight.copy_(ours.weight)
    torch.testing.assert_close(ours(x), theirs(x))
    row = ours(x)[0, 0] / ours.weight
    torch.testing.assert_close(row.pow(2).mean(), torch.tensor(1.0), atol=1e-4, rtol=0)  # unit RMS


@pytest.mark.exercise("stage1.gqa_attention")
def test_grouped_query_attention_equals_repeated_heads_sdpa():
    """9 query heads sharing 3 K/V heads = Torch's attention on K/V repeated per group, causal."""
    q, k, v = torch.randn(2, 9, 6, 16), torch.randn(2, 3, 6, 16), torch.randn(2, 3, 6, 16)
    mask = causal_mask(torch.arange(6), 6, None, torch.float32)
    ours = grouped_query_attention(q, k, v, mask)
    k9, v9 = k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1)  # head h reads K/V head h // 3
    expected = torch.nn.functional.scaled_dot_product_attention(q, k9, v9, is_causal=True)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_causal_mask_worked_example():
    big = torch.finfo(torch.float32).min
    mask = causal_mask(torch.tensor([0, 1]), 3, None, torch.float32)[0, 0]
    assert mask.tolist() == [[0, big, big], [0, 0, big]]
    padded = causal_mask(torch.tensor([2]), 3, torch.tensor([[0, 1, 1]]), torch.float32)
    assert padded[0, 0, 0].tolist() == [big, 0, 0], "a padding slot is hidden from every query"


@pytest.mark.exercise("stage1.static_cache")
def test_static_cache_writes_in_place_and_refuses_overflow():
    cache = StaticKVCache(layers=2, batch=1, kv_heads=3, head_dim=4, capacity=5)
    storage = cache.keys[0].data_ptr()
    k, v = torch.ones(1, 3, 2, 4), torch.full((1, 3, 2, 4), 2.0)
    keys, values = cache.update(0, k, v, start=0)
    assert keys.shape == (1, 3, 2, 4) and torch.equal(values, v)
    keys, _ = cache.update(0, k * 3, v, start=2)
    assert (
        keys.shape == (1, 3, 4, 4) and torch.equal(keys[:, :, 2:], k * 3) and torch.equal(keys[:, :, :2], k)
    )
    assert keys.data_ptr() == storage, "a view of the preallocated tensor, not a copy"
    assert cache.nbytes() == 2 * 2 * 3 * 5 * 4 * 4
    with pytest.raises(ValueError, match="holds 5 slots but this step needs 6"):
        cache.update(1, torch.ones(1, 3, 2, 4), torch.ones(1, 3, 2, 4), start=4)


def test_parameter_count_and_kv_bytes_match_the_real_config(real):
    reference = real[0]
    config = ModelConfig.from_dict(reference.config.to_dict())
    counts = config.parameter_count()
    assert counts["total"] == sum(p.numel() for p in reference.parameters()) == 134_515_008
    assert counts["embedding"] == 49_152 * 576 and counts["lm_head"] == 0
    assert config.kv_cache_bytes_per_token(4) == 46_080 and config.kv_cache_bytes_per_token(2) == 23_040


def test_loading_names_the_missing_or_misshapen_tensor(tiny_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(tiny_dir / "model.safetensors")
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    broken = {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"}
    broken["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(3, 3)
    save_file(broken, tmp_path / "model.safetensors")
    with pytest.raises(ModelFormatError) as e:
        ScratchLlama.from_pretrained(tmp_path)
    message = str(e.value)
    assert "model.layers.0.self_attn.k_proj.weight has shape (3, 3), expected (32, 64)" in message
    assert "missing tensor model.layers.1.mlp.up_proj.weight" in message


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "gpt2"}, "'gpt2' model"),
        ({"num_key_value_heads": 3}, "4 attention heads do not split into 3"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "rope type 'yarn' is not supported"),
        ({"hidden_act": "gelu"}, "SiLU"),
    ],
)
def test_config_refuses_what_it_cannot_run(tiny, change, message):
    raw = {**tiny[0].config.to_dict(), **change}
    with pytest.raises(ModelFormatError, match=message):
        ModelConfig.from_dict(raw)


BREAKS = {
    # each replaces one mechanism with a plausible bug; the logit comparison must notice
    "no causal mask": ("causal_mask", lambda slots, n, pad, dtype: torch.zeros(1, 1, len(slots), n, dtype=dtype)),
    # (shifting *every* position by one changes nothing: RoPE scores depend on m - n only. The real bug
    # is a decode step placed one position past the cache's end.)
    "RoPE off by one position": ("rope_cos_sin",
                                 lambda pos, inv, dtype: rope_cos_sin(pos + int(pos.shape[1] == 1), inv, dtype)),
    "K/V heads paired with the wrong query heads": (
        "grouped_query_attention",
        lambda q, k, v, mask: torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat(1, q.shape[1] // k.shape[1], 1, 1), v.repeat(1, q.shape[1] // k.shape[1], 1, 1),
            attn_mask=mask)),
}  # fmt: skip


@pytest.mark.exercise("stage1.rmsnorm", "stage1.rope", "stage1.gqa_attention")
@pytest.mark.parametrize("name", list(BREAKS))
def test_the_logit_check_catches_a_broken_mechanism(tiny, tiny_scratch, monkeypatch, name):
    attribute, broken = BREAKS[name]
    monkeypatch.setattr(model_module, attribute, broken)
    reference, ours = tiny[0], tiny_scratch[0]
    ids = random_ids(1, 16, reference.config.vocab_size, seed=4)
    cache = ours.new_kv_cache(1, 17)
    ours(ids[:, :-1], past_key_values=cache, use_cache=True)
    step = ours(ids[:, -1:], past_key_values=cache, use_cache=True).logits[:, -1]
    full, theirs = ours(ids).logits, hf_logits(reference, ids)
    gap = max((full - theirs).abs().max().item(), (step - theirs[:, -1]).abs().max().item())
    assert gap > 100 * TINY_ATOL, f"{name}: logits still within {gap:.2e}"


# --------------------------------------------------------------------------------------------
# Slow: SmolLM2-135M-Instruct's real weights


def long_prompt(tokenizer, n: int = 700) -> list[int]:
    from pydoc_data.topics import topics

    ids = tokenizer(topics["try"] + topics["with"], add_special_tokens=False)["input_ids"]
    assert len(ids) >= n
    return ids[:n]


@pytest.mark.slow
@pytest.mark.exercise("stage1.rmsnorm", "stage1.rope", "stage1.gqa_attention")
def test_real_logits_within_1e4_of_transformers(real, real_scratch):
    reference, tokenizer = real
    ours = real_scratch[0]
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         add_generation_prompt=True, return_dict=False)  # fmt: skip
    prompts = [tokenizer("The capital of France is")["input_ids"], chat, long_prompt(tokenizer)]
    for ids in prompts:
        ids = torch.tensor([ids])
        ours_logits, theirs = ours(ids).logits, hf_logits(reference, ids)
        gap = (ours_logits - theirs).abs().max().item()
        assert gap < 1e-4, f"{ids.shape[1]} tokens: max logit difference {gap:.2e}"
        assert torch.equal(ours_logits.argmax(-1), theirs.argmax(-1))
