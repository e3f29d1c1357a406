"""routing.py: the shortlist, with a toy encoder (exact) and with the bundled MiniLM on the suite."""

from __future__ import annotations

import numpy as np
import pytest

from stage2_prompting_tools.routing import DIRECT_ANSWER, Router
from stage2_prompting_tools.tool_eval import load_suite
from stage2_prompting_tools.tools import BUILTIN_TOOLS


class WordEncoder:
    """A bag-of-words "embedding": enough to make similarity exact in a test."""

    def encode(self, texts, normalize_embeddings=True):
        vocab = ["time", "weather", "raining", "warm", "convert", "euros", "hello", "feet", "times"]
        vectors = np.array([[t.lower().count(w) for w in vocab] for t in texts], dtype=float) + 1e-3
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.exercise("stage2.shortlist")
def test_the_shortlist_ranks_tools_and_leaves_answer_out():
    tools = list(BUILTIN_TOOLS.values())
    shortlist = Router(WordEncoder()).shortlist("Is it raining? What is the weather?", tools, k=2)
    assert (
        shortlist.best == "get_weather" and shortlist.tools[0] == "get_weather" and len(shortlist.tools) == 2
    )
    assert DIRECT_ANSWER in shortlist.scores and DIRECT_ANSWER not in shortlist.tools
    assert shortlist.nearest["get_weather"] == 0, "its first example mentions raining"
    assert Router(WordEncoder()).shortlist("hello hello", tools).best == DIRECT_ANSWER


@pytest.mark.slow
@pytest.mark.exercise("stage2.shortlist")
def test_the_router_shortlists_the_right_tool_on_the_shipped_suite(router):
    tasks = load_suite("shipped")
    tools = list(BUILTIN_TOOLS.values())
    shortlists = [router.shortlist(t["question"], tools) for t in tasks]
    best = sum(s.best == t["tool"] for s, t in zip(shortlists, tasks, strict=True)) / len(tasks)
    listed = sum(t["tool"] in s.tools for s, t in zip(shortlists, tasks, strict=True)) / len(tasks)
    assert best >= 0.85 and listed >= 0.95, (best, listed)
