"""Stage 1 fixtures: the real model (shared, loaded once), the tiny random one and its hand-written
twin, and the real one as the hand-written model of model.py (`real_scratch`), all in tests/conftest.py."""

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
