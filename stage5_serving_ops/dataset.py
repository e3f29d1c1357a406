"""What an evaluation scores: records of (question, contexts shown, answer, reference), read strictly.

An evaluation is only as good as the records it reads, and two kinds of records serve two purposes:

    the system's own output   `python -m stage3_retrieval export-eval FILE --base-url URL` runs the
                              course's RAG pipeline (retrieval, the served model's answer) over the
                              golden questions and writes what it did. This is what the gate grades
                              (pipeline.py): a change to the prompt, the chunker, the retrieval or the
                              model changes these records, and the gate sees it.
    a calibration set         data/calibration_set.jsonl: 17 hand-checked records on this course's
                              topics, whose answers are known to be good, and `bad_copy` of it,
                              whose answers are known to be bad. A metric that cannot tell the two
                              apart gates nothing; one that can is worth a threshold. Scoring a
                              hand-written file is a check of the *metric*, never of the system:
                              it can only change if someone edits the file.

One record a line:

    {"id": "g002",                                  unique in the file (default: record-N)
     "question": "...",
     "contexts": ["...", ...],                      the exact text the model was shown
     "answer": "...",                               what the system answered
     "reference": "...",                            a person's right answer ("" if none)
     "reference_contexts": ["...", ...],            the passages that hold the answer (optional)
     "meta": {...}}                                 anything else (route, citations, timings)

Ragas' own column names (user_input, retrieved_contexts, response, ground_truth) are accepted, and
unknown fields are kept under "meta". A malformed line is a BadInput naming the file and line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import BadInput, one_line

DATA_DIR = Path(__file__).resolve().parent / "data"
CALIBRATION_SET = DATA_DIR / "calibration_set.jsonl"

ALIASES = {  # Ragas' column names -> ours
    "user_input": "question",
    "retrieved_contexts": "contexts",
    "response": "answer",
    "ground_truth": "reference",
}
FIELDS = ("id", "question", "contexts", "answer", "reference", "reference_contexts", "meta")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def normalize_record(raw: Any, where: str, index: int) -> dict[str, Any]:
    """One record in our shape, or BadInput saying what is wrong and `where` (e.g. "line 3")."""
    if not isinstance(raw, dict):
        raise BadInput(f"{where}: expected a JSON object, got {_type_name(raw)}")
    data = dict(raw)
    for alias, name in ALIASES.items():
        if alias in data and name not in data:
            data[name] = data.pop(alias)
    for name in ("question", "contexts", "answer", "reference"):
        if name not in data:
            raise BadInput(f"{where}: missing field {name!r} (need question, contexts, answer, reference)")
    for name in ("question", "answer", "reference"):
        if not isinstance(data[name], str):
            raise BadInput(f"{where}: {name!r} must be a string, got {_type_name(data[name])}")
    if not data["question"].strip():
        raise BadInput(f"{where}: 'question' is empty")
    reference_contexts = data.get("reference_contexts")
    for name, value in (("contexts", data["contexts"]), ("reference_contexts", reference_contexts or [])):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadInput(f"{where}: {name!r} must be a list of strings, got {json.dumps(value)[:60]}")
    record_id = data.get("id", f"record-{index + 1}")
    if not isinstance(record_id, str | int):
        raise BadInput(f"{where}: 'id' must be a string or an integer, got {_type_name(record_id)}")
    meta = data["meta"] if isinstance(data.get("meta"), dict) else {}
    return {
        "id": str(record_id),
        "question": data["question"],
        "contexts": list(data["contexts"]),
        "answer": data["answer"],
        "reference": data["reference"],
        "reference_contexts": list(reference_contexts) if reference_contexts else None,
        "meta": {**meta, **{k: v for k, v in data.items() if k not in FIELDS}},
    }


def load_dataset(path: str | os.PathLike[str] = CALIBRATION_SET) -> list[dict[str, Any]]:
    """Records from a JSONL file; BadInput names the line of the first problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"no eval dataset at {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read {path}: {one_line(e)}") from None
    records: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInput(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        record = normalize_record(raw, where, len(records))
        if record["id"] in seen:
            raise BadInput(f"{where}: id {record['id']!r} already used on line {seen[record['id']]}")
        seen[record["id"]] = number
        records.append(record)
    if not records:
        raise BadInput(f"{path} holds no records")
    return records


def write_dataset(records: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Records as JSONL, atomically (a reader never sees half a file)."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return paths.atomic_write_text(Path(path), text)


def bad_copy(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The calibration set made wrong on purpose: each answer is another topic's answer (half the set
    away) and each record is given its neighbour's contexts. Every answer is fluent, on-topic for the
    course and wrong for its question, and every retrieval missed: what a broken pipeline looks like.

    Example: records [a, b, c, d] -> a gets c's answer and b's contexts, b gets d's answer and c's ...
    """
    n = len(records)
    if n < 3:
        raise BadInput(f"a bad copy needs at least 3 records, got {n}")
    half = n // 2
    return [{**r, "id": f"{r['id']}~bad", "answer": records[(i + half) % n]["answer"],
             "contexts": list(records[(i + 1) % n]["contexts"])} for i, r in enumerate(records)]  # fmt: skip
