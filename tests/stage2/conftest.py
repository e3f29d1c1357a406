"""Stage 2 fixtures: the sample APIs, the in-process tool model and router, and a tool model on the
session's one real vLLM server (`vllm_server`, tests/conftest.py, for the `server` tests). The scripted
model and fixed router are in scripted.py."""

from __future__ import annotations

import pytest

from tests.conftest import VLLM_API_KEY


@pytest.fixture
def sample_apis(monkeypatch):
    from stage2_prompting_tools.sample_apis import serve_sample_apis

    with serve_sample_apis() as env:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        yield env


@pytest.fixture(scope="session")
def tool_model(chat_model):
    from stage2_prompting_tools.tool_model import ConstrainedToolModel

    return ConstrainedToolModel(chat_model)


@pytest.fixture(scope="session")
def router():
    from stage2_prompting_tools.routing import Router

    return Router()


@pytest.fixture(scope="session")
def served_model(vllm_server):
    from stage2_prompting_tools.served import ServedToolModel

    return ServedToolModel(vllm_server.config.served_name, vllm_server.base_url, VLLM_API_KEY)
