"""Markers and fixtures shared by every stage's suite.

- Tests never write into the learner's repo: artifacts and reports go to a per-test temp dir.
- The model cache is the real one (`make setup` fills it), read-only for most tests; tests of
  the cache itself point LLM_ROADMAP_HOME at a temp dir.
- The hub is off (HF_HUB_OFFLINE=1) unless LLM_ROADMAP_NETWORK=1: the default suite is offline.
- `gpu` tests are skipped without CUDA; `network` tests without LLM_ROADMAP_NETWORK=1.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

# `make grade`: the learner's workspace copy of a stage package comes before the reference.
WORKSPACE = os.environ.get("LLM_ROADMAP_WORKSPACE", "")
if WORKSPACE:
    import importlib
    from pathlib import Path

    sys.path.insert(0, WORKSPACE)
    for package in Path(WORKSPACE).glob("stage*_*/__init__.py"):
        # imported now, from the workspace: pytest later puts the repository root first on sys.path,
        # but a package already in sys.modules (and its submodules, found through its __path__) stays
        importlib.import_module(package.parent.name)

NETWORK = os.environ.get("LLM_ROADMAP_NETWORK", "") == "1"
if not NETWORK:
    os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_net = pytest.mark.skip(reason="needs the internet; set LLM_ROADMAP_NETWORK=1")
    marks_file = os.environ.get("LLM_ROADMAP_EXERCISE_MARKS")
    if marks_file:  # shared.exercises asks which tests grade which exercise
        marked: dict[str, list[str]] = {}
        for item in items:
            for mark in item.iter_markers("exercise"):
                for exercise in mark.args:
                    marked.setdefault(exercise, []).append(item.nodeid)
        with open(marks_file, "w", encoding="utf-8") as f:
            json.dump(marked, f)
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
        if "network" in item.keywords and not NETWORK:
            item.add_marker(skip_net)


OUTCOMES_FILE = os.environ.get("LLM_ROADMAP_EXERCISE_OUTCOMES")
OUTCOMES: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """For shared.exercises: each test's outcome by node id ("failed: <last line>" on failure)."""
    if report.failed:
        last = (report.longreprtext.strip().splitlines() or [""])[-1]
        OUTCOMES[report.nodeid] = f"failed: {last}"
    elif report.skipped and report.nodeid not in OUTCOMES:
        OUTCOMES[report.nodeid] = "skipped"
    elif report.when == "call" and report.passed:
        OUTCOMES[report.nodeid] = "passed"


def pytest_sessionfinish(session: pytest.Session) -> None:
    if OUTCOMES_FILE:
        with open(OUTCOMES_FILE, "w", encoding="utf-8") as f:
            json.dump(OUTCOMES, f)
    elif OUTCOMES and not WORKSPACE:  # a run of the reference: `make progress` reads it
        from shared.progress import record_run

        record_run(OUTCOMES)


@pytest.fixture(autouse=True)
def isolated_outputs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path_factory.mktemp("out")
    monkeypatch.setenv("LLM_ROADMAP_ARTIFACTS", str(out / "artifacts"))
    monkeypatch.setenv("LLM_ROADMAP_REPORTS", str(out / "reports"))


@pytest.fixture
def tmp_home(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """An empty model/index cache, for tests of the cache itself."""
    home = tmp_path / "home"
    monkeypatch.setenv("LLM_ROADMAP_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def chat_model():
    """The default chat model, loaded once per test session (from the cache `make setup` fills)."""
    from shared.chat import LocalChatModel

    return LocalChatModel()


VLLM_API_KEY = "test-key"


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """One real vLLM server for the whole session, shared by stage 2's and stage 5's `server` tests (a
    start costs about 50 s on a 2-core CPU): stage 5's `serve` defaults (tool calling on, eager, the
    bundled chat model) with an API key. Stopped at the end of the session, with nothing left running."""
    from stage5_serving_ops.server import ServerConfig, VLLMServer
    from stage5_serving_ops.watchdog import process_group_members

    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    server = VLLMServer(ServerConfig(port=0, api_key=VLLM_API_KEY, log_file=str(log)))
    server.start()
    pgid = server.pgid
    yield server
    server.stop()
    assert process_group_members(pgid) == [], "processes of the server's group outlived it"


@pytest.fixture(scope="session")
def tiny_llama():
    """(model, tokenizer): SmolLM2's architecture and tokenizer, but 2 layers of width 64 and random
    weights, as LLMs-from-scratch shrinks its configs. Every mechanism runs on it in milliseconds;
    the `slow` tests then repeat the checks on the real model."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from shared.models import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m-instruct"))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, bos_token_id=1,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


@pytest.fixture(scope="session")
def tiny_dir(tiny_llama, tmp_path_factory):
    """The tiny random Llama saved as a model directory (config.json, model.safetensors, tokenizer)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama[0].save_pretrained(path)
    tiny_llama[1].save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_scratch(tiny_dir, tiny_llama):
    """(stage 1's hand-written model, tokenizer) on the tiny random weights."""
    from stage1_foundations.model import ScratchLlama

    return ScratchLlama.from_pretrained(tiny_dir), tiny_llama[1]


@pytest.fixture(scope="session")
def real_scratch(chat_model):
    """(stage 1's hand-written model, tokenizer) on SmolLM2-135M-Instruct's real weights."""
    from stage1_foundations.model import ScratchLlama

    return ScratchLlama.from_pretrained(chat_model.path), chat_model.tokenizer
