"""The hand-written serving engine: every request's greedy output equals its prompt decoded alone.

Checked under concurrency (requests of different lengths arriving at different steps), with prefix
caching on and off, with preemption forced by a tiny block pool, with chunked prefill and with
speculative decoding; plus the block pool's bookkeeping (no leaks, LRU eviction, reference counts)
and that prefix-cache hits really skip prefill work. Fast tests run stage 1's hand-written model on
a tiny random Llama; the slow one on SmolLM2's real weights.
"""

from __future__ import annotations

import pytest
import torch

from stage1_foundations.decode import DecodeConfig, generate
from stage1_foundations.parity import row_agreement
from stage5_serving_ops.engine.block_pool import BlockPool, NoFreeBlocks, block_hash, prefix_hashes
from stage5_serving_ops.engine.llm_engine import EngineConfig, LLMEngine, RequestError
from stage5_serving_ops.engine.scheduler import SamplingParams
from stage5_serving_ops.engine.spec_decode import propose_ngram, verify_greedy

TEXTS = ["Hello", "one two three four five six seven eight nine ten eleven twelve", "Once upon a time",
         "The quick brown fox jumps over the lazy dog and then", "a b c a b c a b c a b", "def f(x):\n    return"]  # fmt: skip
SYSTEM = "You are a careful assistant. Answer in one short sentence, and never use more words than needed. "


def run(engine: LLMEngine, prompts: list[list[int]], arrivals: list[int], max_tokens: int) -> list[list[int]]:
    """Add request i at step arrivals[i]; step until all finish; output ids in input order."""
    outputs: dict[str, list[int]] = {str(i): [] for i in range(len(prompts))}
    step = 0
    while step <= max(arrivals) or engine.has_unfinished():
        for i, at in enumerate(arrivals):
            if at == step:
                engine.add_request(str(i), prompts[i], SamplingParams(max_tokens=max_tokens, temperature=0.0))
        for out in engine.step():
            outputs[out.request_id] += out.new_token_ids
        step += 1
    return [outputs[str(i)] for i in range(len(prompts))]


def assert_each_as_alone(model, tokenizer, prompts, outputs, max_tokens):
    for prompt, out in zip(prompts, outputs, strict=True):
        alone = generate(model, tokenizer, prompt, DecodeConfig(max_new_tokens=max_tokens)).token_ids
        assert row_agreement(model, prompt, out, alone) != "different", f"{out} vs {alone} alone"


CONFIGS = {
    "plain": EngineConfig(num_blocks=64, block_size=4),
    "no-prefix-cache": EngineConfig(num_blocks=64, block_size=4, enable_prefix_caching=False),
    "tiny-pool-preempts": EngineConfig(num_blocks=12, block_size=4, enable_prefix_caching=False),
    "chunked-prefill": EngineConfig(num_blocks=64, block_size=4, max_num_batched_tokens=6),
    "speculative": EngineConfig(num_blocks=64, block_size=4, num_speculative_tokens=3),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.exercise("stage5.block_allocation", "stage5.scheduler_step", "stage5.spec_verify")
def test_concurrent_requests_equal_each_prompt_alone(tiny_scratch, name):
    model, tokenizer = tiny_scratch
    engine = LLMEngine(model, CONFIGS[name], [tokenizer.eos_token_id])
    prompts = [
        tokenizer(SYSTEM + t)["input_ids"] if i % 2 else tokenizer(t)["input_ids"]
        for i, t in enumerate(TEXTS)
    ]
    outputs = run(engine, prompts, arrivals=[0, 0, 1, 3, 3, 7], max_tokens=10)
    assert_each_as_alone(model, tokenizer, prompts, outputs, 10)
    assert engine.scheduler.pool.leaks() == [], "every block is free (or cached with count zero) at the end"
    stats = engine.stats()
    if name == "tiny-pool-preempts":
        assert stats["preemptions"] > 0, "the tiny pool must have forced a preemption"
    if name == "speculative":
        assert stats["spec_proposed"] > 0
    assert stats["running"] == stats["waiting"] == 0


@pytest.mark.exercise("stage5.block_allocation", "stage5.scheduler_step")
def test_prefix_cache_hits_skip_prefill_work(tiny_scratch):
    model, tokenizer = tiny_scratch
    prompts = [tokenizer(SYSTEM + t)["input_ids"] for t in TEXTS]  # one long shared prefix
    computed = {}
    for caching in (True, False):
        engine = LLMEngine(model, EngineConfig(num_blocks=128, block_size=4, enable_prefix_caching=caching))
        outputs = run(engine, prompts, arrivals=list(range(len(prompts))), max_tokens=4)
        computed[caching] = engine.stats()
        assert engine.scheduler.pool.leaks() == []
    hit, miss = computed[True], computed[False]
    shared = len(tokenizer(SYSTEM)["input_ids"]) // 4 * 4  # whole blocks of the shared prefix
    assert hit["prefix_cache_hits"] >= (len(prompts) - 1) * (shared - 4), hit
    assert miss["prefix_cache_hits"] == 0
    assert hit["prompt_tokens_computed"] == miss["prompt_tokens_computed"] - hit["prefix_cache_hits"]
    assert_each_as_alone(model, tokenizer, prompts, outputs, 4)


@pytest.mark.exercise("stage5.scheduler_step", "stage5.block_allocation")
def test_abort_frees_blocks_and_a_request_too_big_is_refused(tiny_scratch):
    model, tokenizer = tiny_scratch
    engine = LLMEngine(model, EngineConfig(num_blocks=16, block_size=4, max_model_len=256))
    engine.add_request("a", tokenizer(TEXTS[1])["input_ids"], SamplingParams(max_tokens=20))
    engine.step()
    assert engine.scheduler.pool.num_free < 16
    engine.abort_request("a")
    assert engine.scheduler.pool.leaks() == [] and not engine.has_unfinished()
    with pytest.raises(RequestError, match="pool holds 64"):
        engine.add_request("b", [5] * 40, SamplingParams(max_tokens=40))
    with pytest.raises(RequestError, match="exceeds the context of 256"):
        engine.add_request("c", [5] * 250, SamplingParams(max_tokens=10))


@pytest.mark.exercise("stage5.block_allocation")
def test_block_pool_reference_counts_and_lru_eviction():
    pool = BlockPool(num_blocks=3, block_size=2)
    a, b, c = pool.allocate(), pool.allocate(), pool.allocate()
    with pytest.raises(NoFreeBlocks):
        pool.allocate()
    h1 = block_hash(None, [1, 2])
    pool.register(a.id, h1)
    assert pool.match_prefix([h1]) == [a.id] and a.ref_count == 2, "a cached block is shared, not copied"
    pool.free([a.id])
    pool.free([a.id, b.id])  # last first: b is freed before a
    assert a.ref_count == 0 and pool.cached[h1] == a.id, "a freed block keeps its hash until evicted"
    assert pool.allocate().id == b.id, "least recently freed goes first"
    assert pool.match_prefix([h1]) == [a.id], "a freed cached block can still be hit"
    pool.free([a.id])
    assert pool.allocate().id == a.id and h1 not in pool.cached and pool.stats.evictions == 1
    pool.free([a.id, b.id, c.id])
    assert pool.leaks() == [] and pool.num_free == 3


def test_block_hashes_chain_the_prefix():
    same_second_block = prefix_hashes([1, 2, 3, 4], 2)[1], prefix_hashes([9, 9, 3, 4], 2)[1]
    assert same_second_block[0] != same_second_block[1], "a block's hash depends on everything before it"
    assert prefix_hashes([1, 2, 3, 4, 5], 2) == prefix_hashes([1, 2, 3, 4, 6], 2), (
        "only full blocks are hashed"
    )


@pytest.mark.exercise("stage5.spec_verify")
def test_prompt_lookup_and_greedy_verification_worked_examples():
    assert propose_ngram([5, 6, 7, 8, 5, 6], k=2) == [7, 8]
    assert propose_ngram([1, 2, 3], k=2) == []
    logits = torch.full((4, 10), -1.0)
    for row, best in enumerate([7, 8, 3, 9]):  # the model's choices after last, d1, d2, d3
        logits[row, best] = 1.0
    assert verify_greedy([7, 8, 4], logits) == (2, 3), (
        "d1, d2 agree, d3 does not: emit d1 d2 and the model's 3"
    )
    assert verify_greedy([7, 8, 3], logits) == (3, 9), "all agree: a bonus token comes free"
    assert verify_greedy([1], logits[:2]) == (0, 7)


@pytest.mark.slow
@pytest.mark.exercise("stage5.block_allocation", "stage5.scheduler_step", "stage5.spec_verify")
def test_real_model_under_concurrency(real_scratch):
    model, tokenizer = real_scratch
    questions = ["What is the capital of France?", "Write a haiku about the sea.", "hi", "Name three primary colors.",
                 "Repeat exactly: the quick brown fox jumps over the lazy dog.", "What is 12 times 7?"]  # fmt: skip
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             return_dict=False) for q in questions]  # fmt: skip
    for config in (
        EngineConfig(num_blocks=40, num_speculative_tokens=3),
        EngineConfig(num_blocks=10, enable_prefix_caching=False),
    ):
        engine = LLMEngine(model, config, [tokenizer.eos_token_id])
        outputs = run(engine, prompts, arrivals=[0, 0, 2, 5, 5, 9], max_tokens=24)
        assert_each_as_alone(model, tokenizer, prompts, outputs, 24)
        assert engine.scheduler.pool.leaks() == []
    assert engine.stats()["preemptions"] > 0
    assert "Paris" in tokenizer.decode(outputs[0])
