"""One real vLLM server for the whole stage 5 suite (about 40 s to start on a 2-core CPU)."""

from __future__ import annotations

import pytest

API_KEY = "test-key"


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    from stage5_serving_ops.server import ServerConfig, VLLMServer

    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    server = VLLMServer(ServerConfig(port=0, api_key=API_KEY, log_file=str(log)))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(vllm_server):
    import openai

    return openai.OpenAI(base_url=vllm_server.base_url, api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def stage3_index(tmp_path_factory):
    """Stage 3's index over the Python reference alone (the questions the gate test asks are about it):
    about a third of the full index's build time."""
    from stage3_retrieval.index import build_index

    path = tmp_path_factory.mktemp("stage3") / "index"
    build_index(path, sources=("python-reference",))
    return path
