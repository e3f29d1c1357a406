"""Docs that stay true: every command and flag a README shows in a ```bash block exists."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys

import pytest

from shared import paths

READMES = sorted([paths.REPO_ROOT / "README.md", *paths.REPO_ROOT.glob("stage*_*/README.md")])
BLOCK = re.compile(r"```bash\n(.*?)```", re.S)


def commands(readme) -> list[list[str]]:
    """Every simple command in the README's bash blocks, as tokens (continuations joined, comments cut)."""
    found = []
    for block in BLOCK.findall(readme.read_text(encoding="utf-8")):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|\|\||;|\|", line):
                try:
                    tokens = shlex.split(part, comments=True)
                except ValueError:
                    continue
                if tokens:
                    found.append(tokens)
    return found


def module_calls(readme) -> list[tuple[str, str | None, list[str]]]:
    """(module, subcommand or None, --flags) for each `python -m MODULE ...` in the README."""
    calls = []
    for tokens in commands(readme):
        if "-m" not in tokens[:-1] or not tokens[0].endswith("python"):
            continue
        rest = tokens[tokens.index("-m") + 1 :]
        module, args = rest[0], rest[1:]
        if module == "pytest":
            continue
        sub = args[0] if args and not args[0].startswith("-") else None
        flags = [a.split("=")[0] for a in args if a.startswith("--")]
        calls.append((module, sub, flags))
    return calls


@functools.cache
def help_text(module: str, sub: str | None) -> tuple[int, str]:
    argv = [sys.executable, "-m", module] + ([sub] if sub else []) + ["--help"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=paths.REPO_ROOT, timeout=120)
    return done.returncode, done.stdout + done.stderr


def make_targets() -> set[str]:
    text = (paths.REPO_ROOT / "Makefile").read_text()
    targets = set()
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9_ .-]+):(?!=)", line)
        if match:
            targets.update(match[1].split())
    return targets


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(paths.REPO_ROOT)))
def test_every_command_and_flag_in_a_readme_exists(readme):
    calls = module_calls(readme)
    for module, sub, flags in calls:
        code, text = help_text(module, sub)
        shown = f"python -m {module} {sub or ''}".strip()
        assert code == 0, f"{readme.name}: `{shown} --help` failed:\n{text[-500:]}"
        for flag in flags:
            assert flag in text, f"{readme.name}: `{shown}` has no flag {flag}"
    targets = make_targets()
    for tokens in commands(readme):
        if tokens[0] == "make":
            for target in (t for t in tokens[1:] if "=" not in t and not t.startswith("-")):
                assert target in targets, f"{readme.name}: `make {target}` is not a Makefile target"


def test_the_parser_finds_commands():
    calls = module_calls(paths.REPO_ROOT / "stage5_serving_ops" / "README.md")
    assert ("stage5_serving_ops", "serve", ["--model", "--port"]) in calls
    assert "phoenix" in make_targets() and "grade" in make_targets()
