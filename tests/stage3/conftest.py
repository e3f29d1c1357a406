"""Stage 3 fixtures: one real index over all three sources, built once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def corpus_index(tmp_path_factory):
    from stage3_retrieval.index import build_index

    return build_index(tmp_path_factory.mktemp("stage3") / "index")


@pytest.fixture(scope="session")
def retriever(corpus_index):
    from stage3_retrieval.hybrid import Retriever

    return Retriever(corpus_index)
