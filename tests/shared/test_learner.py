"""shared.progress and shared.figures: the learner's table and the README's measured figures."""

from __future__ import annotations

import json

import pytest

from shared import figures, paths, progress
from shared.console import BadInput


def test_runs_are_recorded_per_stage_and_progress_says_what_next():
    progress.record_run({"tests/stage1/test_a.py::t1": "passed", "tests/stage1/test_a.py::t2": "failed: boom",
                         "tests/stage2/test_b.py::t": "passed", "tests/shared/test_c.py::t": "skipped"})  # fmt: skip
    progress.record_run({"tests/stage2/test_b.py::t": "passed", "tests/stage2/test_b.py::u": "passed"})
    summary = json.loads(progress.results_path().read_text())
    assert (summary["stage1"]["passed"], summary["stage1"]["failed"]) == (1, 1), (
        "stage 1 kept from the first run"
    )
    assert summary["stage2"]["passed"] == 2 and summary["shared"]["skipped"] == 1
    rows = {r["stage"]: r for r in progress.stage_rows()}
    assert "fix the 1 failing" in rows[1]["next"] and rows[3]["next"] == "make stage3"
    assert rows[5]["exercises"] >= 4


def test_the_readme_figures_come_from_the_reports(tmp_path):
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "stage5_serving.json").write_text(json.dumps({"device": "cpu", "baseline": {"output_tokens_per_s": 9.0},
        "levels": [{"concurrency": 1, "output_tokens_per_s": 10.0}, {"concurrency": 8, "output_tokens_per_s": 21.5}]}))  # fmt: skip
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\n{figures.START}\nold\n{figures.END}\n\nafter\n")
    old, new = figures.update(readme, reports)
    assert "old" in old and "old" not in new and new.endswith("after\n")
    assert "10.0 tok/s at 1 user(s), 21.5 at 8; Transformers one by one 9.0" in new
    assert "no report yet" in new, "missing reports are named, not invented"
    kept = "| 1 | decode tok/s measured by an earlier bench | `stage1_decode.json` |"
    readme.write_text(new.replace("| 1 | no report yet: run `make bench` (writes reports/stage1_decode.json) | "
                                  "`stage1_decode.json` |", kept))  # fmt: skip
    assert kept in figures.update(readme, reports)[1], "a row whose report is missing here is kept, not wiped"
    readme.write_text("# no markers\n")
    with pytest.raises(BadInput, match="no <!-- figures:start -->"):
        figures.update(readme, reports)


def test_the_committed_readme_has_a_figures_section():
    text = (paths.REPO_ROOT / "README.md").read_text()
    assert figures.START in text and figures.END in text


def test_a_stage_section_is_replaced_between_its_markers():
    text = "# S\n\n<!-- decode:start -->\nold\n<!-- decode:end -->\n\nafter\n"
    assert (
        figures.replace_section(text, "decode", "new")
        == "# S\n\n<!-- decode:start -->\nnew\n<!-- decode:end -->\n\nafter\n"
    )
    with pytest.raises(BadInput, match="no <!-- bpe:start -->"):
        figures.replace_section(text, "bpe", "x")


def test_every_stage_section_named_in_a_figures_module_is_in_its_readme():
    for package, module in figures.stage_figure_modules():
        readme = (paths.REPO_ROOT / package / "README.md").read_text()
        if hasattr(module, "readme_text"):  # its own markers (stage 3: <!-- figures:NAME:start -->)
            names = [
                (f"<!-- figures:{name}:start -->", f"<!-- figures:{name}:end -->") for name in module.SECTIONS
            ]
        else:
            names = [(f"<!-- {name}:start -->", f"<!-- {name}:end -->") for name, _, _ in module.SECTIONS]
        for start, end in names:
            assert start in readme and end in readme, (package, start)
