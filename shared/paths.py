"""Where this course keeps what it writes.

Three places, each movable by one environment variable, so a test, a CI run or a learner with a
small home directory can point everything elsewhere:

    cache      LLM_ROADMAP_HOME       default ~/.cache/llm-roadmap   models, indexes (big, reusable)
    artifacts  LLM_ROADMAP_ARTIFACTS  default <repo>/artifacts        adapters, merged models, traces
    reports    LLM_ROADMAP_REPORTS    default <repo>/reports          benchmark JSON and plots

Nothing here creates a directory until someone asks for it, and nothing imports a heavy library.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The repository root: shared/ sits directly under it (the course is installed editable).
REPO_ROOT = Path(__file__).resolve().parent.parent


def _dir(env_var: str, default: Path) -> Path:
    value = os.environ.get(env_var, "").strip()
    path = Path(value).expanduser() if value else default
    return path.resolve()


def cache_dir() -> Path:
    """The root of every cache (models, indexes); `LLM_ROADMAP_HOME` moves it."""
    return _dir("LLM_ROADMAP_HOME", Path.home() / ".cache" / "llm-roadmap")


def models_dir() -> Path:
    return cache_dir() / "models"


def artifacts_dir() -> Path:
    """What runs produce and later stages consume (adapters, merged models, traces)."""
    return _dir("LLM_ROADMAP_ARTIFACTS", REPO_ROOT / "artifacts")


def reports_dir() -> Path:
    """Benchmark and evaluation reports (JSON + PNG)."""
    return _dir("LLM_ROADMAP_REPORTS", REPO_ROOT / "reports")


def ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------
# Atomic writes: a reader sees the old file or the new one, never half of one. Write to a
# temporary file in the same directory (same filesystem), then os.replace, which is atomic.


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    path = Path(path)
    ensure(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it into place only if the block succeeds.

    Example:
        with atomic_directory(cache / "my-model") as tmp:
            model.save_pretrained(tmp)      # a crash here leaves no `my-model`
    """
    final = Path(final)
    ensure(final.parent)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        yield tmp
        if final.exists():  # an incomplete leftover: move it aside, then drop it
            trash = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".trash-{final.name}-"))
            os.replace(final, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_savefig(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as `path` atomically (a temporary PNG beside it, then renamed) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    ensure(path.parent)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
