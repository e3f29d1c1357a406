"""shared.paths (one variable moves each place; atomic writes) and shared.console (exit codes)."""

from __future__ import annotations

import pytest

from shared import paths
from shared.console import BadInput, WorkFailed, one_line, run_cli


def test_environment_variables_move_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_ROADMAP_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("LLM_ROADMAP_ARTIFACTS", str(tmp_path / "a"))
    monkeypatch.setenv("LLM_ROADMAP_REPORTS", str(tmp_path / "r"))
    assert paths.models_dir() == tmp_path / "h" / "models"
    assert paths.artifacts_dir() == tmp_path / "a"
    assert paths.reports_dir() == tmp_path / "r"


def test_atomic_write_replaces_whole_files(tmp_path):
    target = tmp_path / "sub" / "report.json"
    paths.atomic_write_text(target, "old")
    paths.atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]


def test_atomic_directory_keeps_the_old_entry_when_the_build_fails(tmp_path):
    final = tmp_path / "index"
    with paths.atomic_directory(final) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(RuntimeError), paths.atomic_directory(final) as tmp:
        (tmp / "v").write_text("2")
        raise RuntimeError("crash")
    assert (final / "v").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["index"]


def test_run_cli_maps_errors_to_exit_codes_and_one_line(capsys):
    def bad(argv):
        raise BadInput("top_p must be in (0, 1], got 2\n(details)")

    def failed(argv):
        raise WorkFailed("server died")

    assert run_cli(bad) == 2
    assert run_cli(failed) == 1
    assert run_cli(lambda argv: 0) == 0
    err = capsys.readouterr().err
    assert "top_p must be in (0, 1], got 2 (details)" in err and "server died" in err
    assert one_line("a\n  b") == "a b"
