"""Stage 1 fixtures: the real model (shared, loaded once) and the tiny random one (tests/conftest.py)."""

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
