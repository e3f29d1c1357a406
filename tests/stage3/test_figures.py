"""figures.py: the README's tables are written from the bench's report, between their markers."""

from __future__ import annotations

import json

from stage3_retrieval.figures import README, SECTIONS, render, update_readme


def mode(name, mrr):
    return {"mode": name, "n": 2, "hit@5": 1.0, "mrr@10": mrr, "ndcg@10": 0.9, "p50_ms": 3.0, "p95_ms": 4.0}


def test_a_section_is_rewritten_from_the_report_and_others_say_what_is_missing(tmp_path):
    report = {
        "modes": [mode("dense", 0.5)],
        "modes_dev": [mode("dense", 0.4)],
        "modes_heldout": [mode("dense", 0.3)],
    }
    text = "intro\n<!-- figures:retrieval:start -->\nold\n<!-- figures:retrieval:end -->\n<!-- figures:answers:start -->\n" \
           "<!-- figures:answers:end -->\n"  # fmt: skip
    out = render(text, report)
    assert "| dense | 0.400 | 0.500 | 0.300 |" not in out and "| dense | 0.500 | 0.400 | 0.300 |" in out
    assert "old" not in out and out.startswith("intro\n")
    assert "lacks what this table needs" in out, "a section the report lacks says so"
    readme, path = tmp_path / "README.md", tmp_path / "report.json"
    readme.write_text(text)
    path.write_text(json.dumps(report))
    assert update_readme(readme, path, check=True) and readme.read_text() == text, "--check writes nothing"
    assert update_readme(readme, path) and not update_readme(readme, path, check=True)


def test_every_section_has_its_markers_in_the_stage_readme():
    text = README.read_text()
    for name in SECTIONS:
        assert f"<!-- figures:{name}:start -->" in text and f"<!-- figures:{name}:end -->" in text, name
