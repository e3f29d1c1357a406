"""Preference data: what DPO learns is exactly what the pairs say, noise and bias included.

A preference pair is a prompt with two answers, one `chosen` and one `rejected`, in TRL's
conversational format (lists of chat messages). DPO raises the model's relative likelihood of the
chosen answer over the rejected one, so every flaw of the data becomes a behaviour:

    duplicates        a pair seen five times counts five times: the model overfits it
    near duplicates   the same, hidden by a changed word or extra spaces
    chosen == rejected, empty answers
                      no signal at all, or a signal toward saying nothing
    length bias       if chosen is nearly always the longer answer, the cheapest thing to learn is
                      "be longer", not "be better"; the report measures the share of pairs where
                      chosen is longer, and `balance` can trim the majority side toward 50%
    prompt leakage    a prompt in both train and test makes the held-out numbers a memory test;
                      splits are made by prompt, never by pair

Curation here: validate the schema (errors name the line), normalise whitespace, drop empty and
identical pairs, drop exact and near duplicates (Jaccard similarity of word 3-gram shingles over
the whole pair), report length bias, split by prompt, and write a report of what went and why.

Training and evaluation load the same files strictly: a prompt that sits in two splits (within the
pairs file, or between the pairs and the SFT file) stops the run with the line that breaks the rule,
because every held-out figure would silently become a memory test. The held-out prompts the
generation figures are measured on are the test prompts of both files, each once.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.console import BadInput

DATA_DIR = Path(__file__).parent / "data"
PAIRS_PATH = DATA_DIR / "pairs.jsonl"
SFT_PATH = DATA_DIR / "sft.jsonl"
SPLITS = ("train", "test")
ROLES = ("system", "user", "assistant")
NEAR_DUPLICATE = 0.8  # Jaccard similarity of 3-gram shingles at or above which two pairs are one


def _messages(value: Any, where: str, last_role: str | None = None) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where} must be a non-empty list of messages")
    for m in value:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"{where} holds a message without a valid role and string content: {m!r}")
    if last_role and value[-1]["role"] != last_role:
        raise ValueError(f"{where} must end with an {last_role} message")
    return value


def validate_pair(row: Any) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError("a pair must be a JSON object")
    for key in ("prompt", "chosen", "rejected"):
        if key not in row:
            raise ValueError(f"missing field {key!r}")
    _messages(row["prompt"], "prompt", "user")
    _messages(row["chosen"], "chosen", "assistant")
    _messages(row["rejected"], "rejected", "assistant")
    _split(row)
    return row


def validate_sft(row: Any) -> dict[str, Any]:
    """An SFT example: {"messages": [system?, user, assistant]}; the prompt is every message but the last."""
    if not isinstance(row, dict):
        raise ValueError("an SFT example must be a JSON object")
    if "messages" not in row:
        raise ValueError("missing field 'messages'")
    messages = _messages(row["messages"], "messages", "assistant")
    if len(messages) < 2 or messages[-2]["role"] != "user":
        raise ValueError("messages must end with a user message and then the assistant's answer")
    _split(row)
    return row


def _split(row: dict[str, Any]) -> None:
    if "split" in row and row["split"] not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {row['split']!r}")


def _read_jsonl(path: Path, validate: Any) -> list[tuple[int, dict[str, Any]]]:
    """(line number, validated row) for every non-empty line; a bad line is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"no such file: {path}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, validate(json.loads(line))))
        except json.JSONDecodeError as e:
            raise BadInput(f"{path}:{number}: not valid JSON ({e.msg})") from None
        except ValueError as e:
            raise BadInput(f"{path}:{number}: {e}") from None
    return rows


def check_one_split_per_prompt(
    numbered: Sequence[tuple[int, dict[str, Any]]], path: Path, seen: dict[str, tuple[str, str]] | None = None
) -> dict[str, tuple[str, str]]:
    """Stop at the first row whose prompt is already in another split; returns prompt key -> (split, where).

    `seen` carries the prompts of a file read before (the pairs, when checking the SFT set against them).
    """
    seen = dict(seen or {})
    for number, row in numbered:
        if "split" not in row:
            continue
        key, where = prompt_key(row), f"{path}:{number}"
        if key in seen and seen[key][0] != row["split"]:
            split, first = seen[key]
            raise BadInput(f"{where}: this prompt is in split {row['split']!r} here but {split!r} at {first}; "
                           "a prompt must stay in one split")  # fmt: skip
        seen.setdefault(key, (row["split"], where))
    return seen


def load_pairs(
    path: Path = PAIRS_PATH, split: str | None = None, strict: bool = True
) -> list[dict[str, Any]]:
    """Every pair of a JSONL file, validated; a bad line is a one-line error naming it.

    `strict` (training, evaluation) also refuses a prompt in two splits; `curate` reads loosely,
    since re-splitting by prompt is part of its job.
    """
    numbered = _read_jsonl(path, validate_pair)
    if strict:
        check_one_split_per_prompt(numbered, Path(path))
    return [r for _, r in numbered if split is None or r.get("split") == split]


def load_sft(
    path: Path = SFT_PATH, split: str | None = None, pairs_path: Path | None = PAIRS_PATH
) -> list[dict[str, Any]]:
    """The SFT examples, validated; no prompt may sit in one split here and another in the pairs file."""
    numbered = _read_jsonl(path, validate_sft)
    seen = (
        check_one_split_per_prompt(_read_jsonl(pairs_path, validate_pair), Path(pairs_path))
        if pairs_path
        else {}
    )
    check_one_split_per_prompt(
        [(n, {**r, "prompt": r["messages"][:-1]}) for n, r in numbered], Path(path), seen
    )
    return [r for _, r in numbered if split is None or r.get("split") == split]


def held_out_prompts(
    pairs_path: Path = PAIRS_PATH, sft_path: Path | None = SFT_PATH
) -> list[list[dict[str, str]]]:
    """Every distinct test prompt of the pairs file, then those of the SFT file not already there."""
    rows = load_pairs(pairs_path, split="test")
    if sft_path:
        rows += [
            {"prompt": r["messages"][:-1]} for r in load_sft(sft_path, split="test", pairs_path=pairs_path)
        ]
    prompts, seen = [], set()
    for row in rows:
        if (key := prompt_key(row)) not in seen:
            seen.add(key)
            prompts.append(row["prompt"])
    return prompts


# ---------------------------------------------------------------------------------------------
# Curation


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def answer(messages: Sequence[dict[str, str]]) -> str:
    return messages[-1]["content"]


def prompt_key(row: dict[str, Any]) -> str:
    """The prompt's identity, whitespace and case aside: what a split must never share."""
    return hashlib.sha256(
        normalise(" ".join(m["content"] for m in row["prompt"])).lower().encode()
    ).hexdigest()[:16]


def shingles(text: str, n: int = 3) -> set[str]:
    words = re.findall(r"\w+", text.lower())
    return {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a: set[str], b: set[str]) -> float:
    # EXERCISE stage4.near_duplicate: return the Jaccard similarity |a & b| / |a | b| of two shingle sets (1.0 when both are empty)
    return len(a & b) / len(a | b) if a or b else 1.0
    # END EXERCISE


def pair_text(row: dict[str, Any]) -> str:
    return " | ".join(normalise(m["content"]) for key in ("prompt", "chosen", "rejected") for m in row[key])


def chosen_longer_share(rows: Sequence[dict[str, Any]]) -> float:
    # EXERCISE stage4.length_bias: the share of pairs whose chosen answer (last message) has more characters than the rejected one; 0.0 for no pairs
    if not rows:
        return 0.0
    return sum(len(answer(r["chosen"])) > len(answer(r["rejected"])) for r in rows) / len(rows)
    # END EXERCISE


@dataclass
class CurationReport:
    before: int
    after: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    chosen_longer_before: float = 0.0
    chosen_longer_after: float = 0.0
    splits: dict[str, int] = field(default_factory=dict)
    prompts_in_two_splits: int = 0

    def drop(self, reason: str, row: dict[str, Any]) -> None:
        self.dropped[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(str(row.get("id", answer(row["prompt"])[:60])))

    def to_dict(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "dropped": dict(self.dropped),
                "dropped_examples": self.examples, "chosen_longer_before": round(self.chosen_longer_before, 3),
                "chosen_longer_after": round(self.chosen_longer_after, 3), "splits": self.splits,
                "prompts_in_two_splits": self.prompts_in_two_splits}  # fmt: skip


def clean_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": normalise(m["content"])} for m in messages]


def curate(
    rows: Iterable[dict[str, Any]],
    near_duplicate: float = NEAR_DUPLICATE,
    balance: bool = False,
    test_share: float = 0.15,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], CurationReport]:
    """Clean, deduplicate, (optionally) balance and split by prompt. Returns the kept pairs and the report."""
    rows = list(rows)
    report = CurationReport(before=len(rows), chosen_longer_before=chosen_longer_share(rows))
    kept: list[dict[str, Any]] = []
    seen_exact: set[str] = set()
    kept_shingles: list[set[str]] = []
    for row in rows:
        row = {**row, **{k: clean_messages(row[k]) for k in ("prompt", "chosen", "rejected")}}
        chosen, rejected = answer(row["chosen"]), answer(row["rejected"])
        if not chosen or not rejected:
            report.drop("empty answer", row)
            continue
        if chosen.lower() == rejected.lower():
            report.drop("chosen equals rejected", row)
            continue
        text = pair_text(row)
        if text.lower() in seen_exact:
            report.drop("exact duplicate", row)
            continue
        grams = shingles(text)
        if any(jaccard(grams, other) >= near_duplicate for other in kept_shingles):
            report.drop("near duplicate", row)
            continue
        seen_exact.add(text.lower())
        kept_shingles.append(grams)
        kept.append(row)
    if balance:
        kept = balance_length(kept, report, seed)
    kept = split_by_prompt(kept, test_share, seed)
    report.after = len(kept)
    report.chosen_longer_after = chosen_longer_share(kept)
    report.splits = dict(Counter(r["split"] for r in kept))
    report.prompts_in_two_splits = leaked_prompts(kept)
    return kept, report


def balance_length(rows: list[dict[str, Any]], report: CurationReport, seed: int = 0) -> list[dict[str, Any]]:
    """Drop pairs from the majority side (chosen longer, or shorter) until the two sides are equal."""
    longer = [r for r in rows if len(answer(r["chosen"])) > len(answer(r["rejected"]))]
    other = [r for r in rows if len(answer(r["chosen"])) <= len(answer(r["rejected"]))]
    majority, minority = (longer, other) if len(longer) > len(other) else (other, longer)
    rng = random.Random(seed)
    excess = set(id(r) for r in rng.sample(majority, len(majority) - len(minority)))
    for r in majority:
        if id(r) in excess:
            report.drop("length balance", r)
    return [r for r in rows if id(r) not in excess]


def split_by_prompt(
    rows: list[dict[str, Any]], test_share: float = 0.15, seed: int = 0
) -> list[dict[str, Any]]:
    """Keep a row's split if it has one and its prompt is consistent; otherwise assign splits by prompt."""
    by_prompt: dict[str, set[str]] = {}
    for r in rows:
        by_prompt.setdefault(prompt_key(r), set()).add(r.get("split", ""))
    consistent = all(len(s) == 1 and "" not in s for s in by_prompt.values())
    if consistent:
        return rows
    # EXERCISE stage4.split_by_prompt: shuffle the sorted prompt keys with random.Random(seed), put the first max(1, round(test_share * number of keys)) in test; label each row "test" or "train" by its prompt_key
    keys = sorted(by_prompt)
    random.Random(seed).shuffle(keys)
    test = set(keys[: max(1, round(test_share * len(keys)))])
    return [{**r, "split": "test" if prompt_key(r) in test else "train"} for r in rows]
    # END EXERCISE


def leaked_prompts(rows: Sequence[dict[str, Any]]) -> int:
    splits: dict[str, set[str]] = {}
    for r in rows:
        splits.setdefault(prompt_key(r), set()).add(r["split"])
    return sum(len(s) > 1 for s in splits.values())


def write_pairs(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    from shared.paths import atomic_write_text

    return atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
