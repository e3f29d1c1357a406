"""Stage 2 fixtures: the sample APIs, the in-process tool model and router, and one real vLLM server
for the whole session (`server` tests). The scripted model and fixed router are in scripted.py."""

from __future__ import annotations

import pytest


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
def vllm_server(tmp_path_factory):
    """Stage 5's server, started once per session the way a user starts it (`serve --port 0`), stopped
    at the end; the teardown fails the session if any of its processes outlives it."""
    from stage2_prompting_tools.served import VLLMProcess

    server = VLLMProcess(log_path=tmp_path_factory.mktemp("vllm") / "serve.log").start()
    yield server
    server.stop()
    assert server.alive() == [], f"processes left running after the server stopped: {server.alive()}"


@pytest.fixture(scope="session")
def served_model(vllm_server):
    from stage2_prompting_tools.served import ServedToolModel

    return ServedToolModel("smollm2-135m-instruct", vllm_server.base_url)
