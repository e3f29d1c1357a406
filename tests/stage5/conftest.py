"""Stage 5 fixtures: a client of the session's one real vLLM server (`vllm_server`, tests/conftest.py), and
a small stage 3 index."""

from __future__ import annotations

import pytest

from tests.conftest import VLLM_API_KEY as API_KEY


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
