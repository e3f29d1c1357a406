"""Stage 1 fixtures: the real model (shared, loaded once), the tiny random one (tests/conftest.py),
and each of them again as the hand-written model of model.py, loaded from the same safetensors."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def real(chat_model):
    """(model, tokenizer) of the default model."""
    return chat_model.model, chat_model.tokenizer


@pytest.fixture(scope="session")
def tokenizer(tiny_llama):
    return tiny_llama[1]


@pytest.fixture(scope="session")
def tiny(tiny_llama):
    return tiny_llama


@pytest.fixture(scope="session")
def tiny_dir(tiny_llama, tmp_path_factory):
    """The tiny random Llama saved as a checkpoint directory (config.json + model.safetensors)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama[0].save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_scratch(tiny_dir, tiny_llama):
    """(hand-written model, tokenizer) on the tiny random weights."""
    from stage1_foundations.model import ScratchLlama

    return ScratchLlama.from_pretrained(tiny_dir), tiny_llama[1]


@pytest.fixture(scope="session")
def real_scratch(chat_model):
    """(hand-written model, tokenizer) on SmolLM2-135M-Instruct's real weights."""
    from stage1_foundations.model import ScratchLlama

    return ScratchLlama.from_pretrained(chat_model.path), chat_model.tokenizer
