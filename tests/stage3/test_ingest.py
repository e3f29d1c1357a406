"""ingest.py: loaders, chunking boundaries, metadata, stable ids."""

from __future__ import annotations

import re

import pytest

from stage3_retrieval import ingest
from stage3_retrieval.ingest import (
    STDLIB_MODULES,
    Document,
    chunk_documents,
    chunk_fixed,
    chunk_structured,
    load_documents,
    sections,
    windows,
)


def test_windows_respect_size_overlap_and_cover_every_word():
    text = " ".join(f"w{i}" for i in range(200))
    pieces = windows(text, 50, 15)
    assert all(len(p) <= 50 for p in pieces)
    assert all(set(a.split()) & set(b.split()) for a, b in zip(pieces, pieces[1:], strict=False)), (
        "they overlap"
    )
    assert set(" ".join(pieces).split()) == set(text.split())
    assert windows("a b c d e f", 5, 2) == ["a b c", "c d e", "e f"]


@pytest.mark.parametrize("size, overlap", [(0, 0), (10, 10), (10, -1)])
def test_windows_reject_bad_settings(size, overlap):
    with pytest.raises(ValueError):
        windows("text", size, overlap)


def test_structured_chunks_never_cross_a_heading():
    doc = Document(
        "s", "t", "Doc", "Intro line.\n\nFirst\n=====\n\nalpha one.\n\nalpha two.\n\n# Second\n\nbeta."
    )
    assert [h for h, _ in sections(doc.text)] == [None, "First", "Second"]
    chunks = chunk_structured(doc, max_chars=1000)
    assert [c.title for c in chunks] == ["Doc", "Doc > First", "Doc > Second"]
    assert chunks[1].text == "alpha one.\n\nalpha two." and [c.position for c in chunks] == [0, 1, 2]


def test_long_sections_are_split_within_the_limit():
    doc = Document("s", "t", "Doc", "\n\n".join(" ".join(["word"] * 40) for _ in range(10)))
    assert all(len(c.text) <= 600 for c in chunk_structured(doc, max_chars=600))
    assert all(len(c.text) <= 300 for c in chunk_fixed(doc, size=300, overlap=50))


def test_sources_carry_their_metadata():
    from pydoc_data.topics import topics

    docs = load_documents()
    by_source = {s: [d for d in docs if d.source == s] for s in ingest.SOURCES}
    assert {d.topic for d in by_source["python-reference"]} == set(topics)
    assert len(by_source["stdlib-docs"]) == len(STDLIB_MODULES) >= 40
    assert {d.topic for d in by_source["course-docs"]} >= {"stage1_foundations", "stage2_prompting_tools"}
    chunks = chunk_documents(docs)
    nonlocal_chunks = [c for c in chunks if c.topic == "nonlocal"]
    assert nonlocal_chunks and all(c.source == "python-reference" for c in nonlocal_chunks)
    assert all(re.fullmatch(r"[0-9a-f]{16}", c.id) for c in chunks)


def test_ids_are_stable_and_follow_content():
    docs = load_documents(["python-reference"])
    first, second = chunk_documents(docs), chunk_documents(docs)
    assert [c.id for c in first] == [c.id for c in second]
    assert len({c.id for c in first}) == len(first)
    edited = Document(docs[0].source, docs[0].topic, docs[0].title, docs[0].text + "\n\nOne more paragraph.")
    assert chunk_structured(edited)[-1].id not in {c.id for c in first}


def test_empty_documents_are_skipped_with_a_warning(monkeypatch, capsys):
    monkeypatch.setitem(ingest.LOADERS, "course-docs", lambda: [Document("course-docs", "x", "x", "  \n")])
    assert load_documents(["course-docs"]) == []
    assert "empty document" in capsys.readouterr().err


def test_an_unknown_source_or_chunker_is_an_error():
    with pytest.raises(ValueError, match="unknown source"):
        load_documents(["nope"])
    with pytest.raises(ValueError, match="unknown chunker"):
        chunk_documents([], "nope")


def test_c_accelerated_functions_belong_to_their_module():
    text = ingest.module_text("heapq")
    assert "## heapq.heappush" in text and "## heapq.nsmallest" in text, (
        "heappush lives in _heapq, still heapq's"
    )
    assert "## bisect.bisect_left" in ingest.module_text("bisect")
    assert "## typing.ABCMeta" not in ingest.module_text("typing"), "a re-export from abc is not typing's"


def normalised(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9_]+", text.lower()))


def test_the_data_readme_names_the_readmes_that_are_indexed():
    from pathlib import Path

    readme = (Path(ingest.__file__).parent / "data" / "README.md").read_text()
    named = re.search(r"Indexed course READMEs: (.+)\.", readme)
    assert named, "data/README.md says which course READMEs are indexed"
    assert tuple(re.findall(r"`(stage\d_\w+)`", named.group(1))) == ingest.COURSE_PACKAGES


def test_no_evaluation_query_is_copied_from_an_indexed_readme():
    from stage3_retrieval.evaluate import load_golden
    from stage3_retrieval.router import load_routes

    corpus = [normalised(d.text) for d in load_documents(["course-docs"])]
    queries = [r["question"] for r in load_golden()] + [r["query"] for r in load_routes()]
    copied = [q for q in queries if any(normalised(q) in text for text in corpus)]
    assert not copied, f"evaluation queries found verbatim in an indexed README: {copied[:3]}"


def test_labels_with_evidence_name_exactly_the_topics_that_hold_it():
    from stage3_retrieval.evaluate import load_golden

    texts = {(d.source, d.topic): " ".join(d.text.split()) for d in load_documents()}
    checked = 0
    for row in load_golden():
        if "evidence" not in row:
            continue
        holding = {t for (s, t), text in texts.items() if s == row["source"]
                   for e in row["evidence"] if " ".join(e.split()) in text}  # fmt: skip
        assert set(row["relevant"]) == holding, (row["id"], row["relevant"], sorted(holding))
        checked += 1
    assert checked >= 100
