"""Stage 1 fixtures: the real model (shared, loaded once) and a tiny random one for fast tests.

The tiny model has SmolLM2's architecture and tokenizer but 2 layers of width 64, as
LLMs-from-scratch shrinks its configs: every mechanism runs in milliseconds, and anything that
holds for it must hold for the real one, which the `slow` tests then check.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def real(chat_model):
    """(model, tokenizer) of the default model."""
    return chat_model.model, chat_model.tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    from stage1_foundations.cli import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny(tokenizer):
    """(model, tokenizer): a randomly initialised 2-layer Llama with the real vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, bos_token_id=1,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer
