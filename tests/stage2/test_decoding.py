"""decoding.py: the constrained loop matches Transformers + xgrammar token for token; jump-forward saves passes."""

from __future__ import annotations

import json

import pytest
import torch

from stage2_prompting_tools.decoding import constrained_greedy
from stage2_prompting_tools.grammar import call_format, call_token_budget, decision_tools, grounded_tools
from stage2_prompting_tools.tools import BUILTIN_TOOLS


@pytest.fixture(scope="module")
def setup(tiny_llama):
    import xgrammar

    model, tokenizer = tiny_llama
    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=model.config.vocab_size)
    messages = [{"role": "user", "content": "What is the weather in Lisbon?"}]
    tools = decision_tools(grounded_tools([BUILTIN_TOOLS["get_weather"].spec, BUILTIN_TOOLS["calculator"].spec],
                                          messages))  # fmt: skip
    compiled = xgrammar.GrammarCompiler(info).compile_structural_tag(json.dumps(call_format(tools)))
    prompt = tokenizer("<|im_start|>user\nWhat is the weather in Lisbon?<|im_end|>\n<|im_start|>assistant\n")
    return model, tokenizer, compiled, prompt["input_ids"], call_token_budget(tools)


@pytest.mark.exercise("stage2.constrained_decoding", "stage2.ground_schema", "stage2.type_to_schema")
def test_the_loop_without_jump_forward_is_generate_with_the_grammar(setup):
    from xgrammar.contrib.hf import LogitsProcessor

    model, tokenizer, compiled, prompt, budget = setup
    ours = constrained_greedy(model, tokenizer, prompt, compiled, budget, jump_forward=False)
    ids = torch.tensor([prompt])
    theirs = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget,
                            do_sample=False, logits_processor=[LogitsProcessor(compiled)],
                            pad_token_id=tokenizer.eos_token_id)[0, len(prompt) :].tolist()  # fmt: skip
    theirs = [t for t in theirs if t != tokenizer.eos_token_id]
    assert ours.tokens == theirs and ours.finish_reason == "stop"
    assert ours.forward_passes == len(ours.tokens) and ours.forced == 0


@pytest.mark.exercise("stage2.constrained_decoding", "stage2.ground_schema", "stage2.type_to_schema")
def test_jump_forward_appends_what_the_grammar_forces_without_asking_the_model(setup):
    import xgrammar

    model, tokenizer, _, prompt, _ = setup
    tools = grounded_tools([BUILTIN_TOOLS["get_weather"].spec], [{"role": "user", "content": "Lisbon"}])
    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=model.config.vocab_size)
    compiled = xgrammar.GrammarCompiler(info).compile_structural_tag(json.dumps(call_format(tools)))
    plain = constrained_greedy(
        model, tokenizer, prompt, compiled, call_token_budget(tools), jump_forward=False
    )
    fast = constrained_greedy(model, tokenizer, prompt, compiled, call_token_budget(tools), jump_forward=True)
    expected = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lisbon"}}\n</tool_call>'
    assert tokenizer.decode(fast.tokens) == tokenizer.decode(plain.tokens) == expected, "one call is possible"
    assert plain.forward_passes == len(plain.tokens) > 10
    assert fast.forward_passes == 0 and fast.forced == len(fast.tokens), "every token was forced"
