"""data.py: validation naming the bad line, one split per prompt, and curation on crafted inputs."""

from __future__ import annotations

import json

import pytest

from shared.console import BadInput
from stage4_finetune_align.data import (
    chosen_longer_share,
    curate,
    held_out_prompts,
    jaccard,
    leaked_prompts,
    load_pairs,
    load_sft,
    prompt_key,
    shingles,
    split_by_prompt,
)


def pair(prompt: str, chosen: str, rejected: str, split: str | None = None, **extra) -> dict:
    row = {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
           "rejected": [{"role": "assistant", "content": rejected}], **extra}  # fmt: skip
    if split:
        row["split"] = split
    return row


CLEAN = [pair(f"My order {i} has not arrived after {i + 3} days, what can I do?",
              f"I am sorry about the wait; please send me order number {i} and I will check it with the carrier today.",
              "Wait longer.") for i in range(20)]  # fmt: skip


@pytest.mark.exercise("stage4.near_duplicate", "stage4.length_bias", "stage4.split_by_prompt")
def test_exact_and_near_duplicates_are_removed():
    rows = CLEAN + [dict(CLEAN[0]), pair(CLEAN[1]["prompt"][0]["content"].upper() + "  ",
                                         CLEAN[1]["chosen"][0]["content"] + "!", "Wait longer.")]  # fmt: skip
    kept, report = curate(rows)
    assert (
        len(kept) == 20 and report.dropped["exact duplicate"] == 1 and report.dropped["near duplicate"] == 1
    )


@pytest.mark.exercise("stage4.near_duplicate")
def test_jaccard_of_word_shingles():
    a, b = shingles("please send me the order number"), shingles("please send me the order number today")
    assert jaccard(a, a) == 1.0 and jaccard(a, b) == pytest.approx(4 / 5)
    assert jaccard(a, shingles("wait longer")) == 0.0 and jaccard(set(), set()) == 1.0


@pytest.mark.exercise("stage4.near_duplicate", "stage4.length_bias", "stage4.split_by_prompt")
def test_empty_and_identical_pairs_are_dropped():
    rows = CLEAN[:5] + [pair("Refund please", "", "No."), pair("Refund please!", "Sure.", "  sure. ")]
    kept, report = curate(rows)
    assert len(kept) == 5 and report.dropped == {"empty answer": 1, "chosen equals rejected": 1}
    assert report.before == 7 and report.after == 5


@pytest.mark.exercise("stage4.length_bias", "stage4.split_by_prompt")
def test_whitespace_is_normalised():
    kept, _ = curate([pair("  Hello\n\nthere  ", "Hi,   how can I help?", "What.")])
    assert (
        kept[0]["prompt"][0]["content"] == "Hello there"
        and kept[0]["chosen"][0]["content"] == "Hi, how can I help?"
    )


@pytest.mark.exercise("stage4.near_duplicate", "stage4.length_bias", "stage4.split_by_prompt")
def test_length_bias_is_reported_and_can_be_balanced():
    rows = CLEAN[:15] + [pair(f"Question {i} about billing?", "Done.", "Let me explain at great length " * 5)
                         for i in range(5)]  # fmt: skip
    _, report = curate(rows)
    assert report.chosen_longer_before == pytest.approx(0.75)
    kept, balanced = curate(rows, balance=True)
    assert chosen_longer_share(kept) == pytest.approx(0.5) and balanced.dropped["length balance"] == 10


@pytest.mark.exercise("stage4.length_bias")
def test_length_bias_share_counts_pairs_whose_chosen_answer_is_longer():
    rows = [
        pair("a?", "A longer answer.", "Short."),
        pair("b?", "Same.", "Same!"),
        pair("c?", "No.", "Yes, sure."),
    ]
    assert chosen_longer_share(rows) == pytest.approx(1 / 3) and chosen_longer_share([]) == 0.0


@pytest.mark.exercise("stage4.split_by_prompt")
def test_split_by_prompt_sends_every_copy_of_a_prompt_to_one_split():
    rows = [pair(f"Prompt {i // 4}?", f"Answer {i}.", "No.") for i in range(80)]
    split = split_by_prompt(rows, test_share=0.25, seed=1)
    assert leaked_prompts(split) == 0 and sum(r["split"] == "test" for r in split) == 4 * 5
    assert split_by_prompt(rows, 0.25, seed=1) == split, "the same seed gives the same split"
    assert split_by_prompt(split) == split, "rows already split consistently are kept as they are"


@pytest.mark.exercise("stage4.near_duplicate", "stage4.length_bias", "stage4.split_by_prompt")
def test_no_prompt_is_in_two_splits():
    rows = [pair(f"Prompt {i // 2} about my bank card being blocked", f"Answer {i} with a next step.", f"Bad {i}.",
                 split="train" if i % 3 else "test") for i in range(40)]  # fmt: skip
    assert leaked_prompts(rows) > 0, "the crafted input leaks"
    kept, report = curate(rows, near_duplicate=1.01)
    assert report.prompts_in_two_splits == 0 and leaked_prompts(kept) == 0
    assert {r["split"] for r in kept} == {"train", "test"}
    test_prompts = {prompt_key(r) for r in kept if r["split"] == "test"}
    assert all(prompt_key(r) not in test_prompts for r in kept if r["split"] == "train")


@pytest.mark.parametrize("line, message", [("{not json", "not valid JSON"), ('{"prompt": []}', "missing field"),
                                           ('{"prompt": [{"role": "user", "content": "x"}], "chosen": [], "rejected": []}',
                                            "non-empty list"),
                                           ('{"prompt": [{"role": "bot", "content": "x"}], "chosen": [1], "rejected": [1]}',
                                            "valid role")])  # fmt: skip
def test_a_malformed_line_is_named(tmp_path, line, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(CLEAN[0]) + "\n" + line + "\n")
    with pytest.raises(BadInput, match=rf"pairs.jsonl:2: .*{message}"):
        load_pairs(path)


@pytest.mark.exercise("stage4.near_duplicate", "stage4.length_bias")
def test_the_shipped_noisy_file_loses_exactly_its_planted_defects():
    from stage4_finetune_align.data import DATA_DIR

    kept, report = curate(load_pairs(DATA_DIR / "noisy_pairs.jsonl"))
    assert report.dropped == {
        "exact duplicate": 4,
        "near duplicate": 4,
        "chosen equals rejected": 3,
        "empty answer": 3,
    }
    assert len(kept) == 16


@pytest.mark.exercise("stage4.near_duplicate", "stage4.length_bias")
def test_the_shipped_pairs_are_clean_unbiased_and_split_by_prompt():
    rows = load_pairs()
    kept, report = curate(rows)
    assert len(rows) >= 400 and report.after == len(rows), "nothing to drop in the shipped set"
    assert 0.35 <= report.chosen_longer_before <= 0.65, "chosen is not simply the longer answer"
    assert leaked_prompts(rows) == 0 and {r["split"] for r in rows} == {"train", "test"}


# ---------------------------------------------------------------------------------------------
# Strict loading for training and evaluation: one split per prompt, across files too


def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_a_prompt_in_two_splits_is_named_by_its_line(tmp_path):
    path = write_lines(tmp_path / "pairs.jsonl", [CLEAN[0] | {"split": "train"}, CLEAN[1] | {"split": "test"},
                                                  CLEAN[0] | {"split": "test"}])  # fmt: skip
    with pytest.raises(BadInput, match=r"pairs.jsonl:3: .*'test' here but 'train' at .*pairs.jsonl:1"):
        load_pairs(path)
    assert len(load_pairs(path, strict=False)) == 3, "curation reads it, to re-split it"


def test_an_sft_prompt_in_another_split_than_in_the_pairs_is_named(tmp_path):
    pairs = write_lines(tmp_path / "pairs.jsonl", [CLEAN[0] | {"split": "test"}])
    example = {"messages": CLEAN[0]["prompt"] + CLEAN[0]["chosen"], "split": "train"}
    sft = write_lines(tmp_path / "sft.jsonl", [example])
    with pytest.raises(BadInput, match=r"sft.jsonl:1: .*'train' here but 'test' at .*pairs.jsonl:1"):
        load_sft(sft, pairs_path=pairs)


@pytest.mark.parametrize("row, message", [({"split": "train"}, "missing field 'messages'"),
                                          ({"messages": [{"role": "assistant", "content": "Hi."}]}, "user message"),
                                          ({"messages": [{"role": "user", "content": "Hi?"},
                                                         {"role": "assistant", "content": "Hello."}], "split": "dev"},
                                           "split must be one of")])  # fmt: skip
def test_a_malformed_sft_line_is_named(tmp_path, row, message):
    sft = write_lines(tmp_path / "sft.jsonl", ['{"messages": [{"role": "user", "content": "a?"}, '
                                               '{"role": "assistant", "content": "b."}]}', row])  # fmt: skip
    with pytest.raises(BadInput, match=rf"sft.jsonl:2: .*{message}"):
        load_sft(sft, pairs_path=None)


def test_train_refuses_a_malformed_pairs_file_with_exit_2_naming_the_line(tmp_path):
    import subprocess
    import sys

    bad = write_lines(
        tmp_path / "pairs.jsonl", [CLEAN[0] | {"split": "train"}, '{"prompt": [], "chosen": []}']
    )
    done = subprocess.run([sys.executable, "-m", "stage4_finetune_align", "train", "--method", "dpo", "--pairs", str(bad),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2 and "pairs.jsonl:2: missing field 'rejected'" in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.strip().splitlines()[-1].startswith("error: ")


def test_the_held_out_prompts_are_every_test_prompt_once_and_never_trained_on():
    prompts = held_out_prompts()
    keys = [prompt_key({"prompt": p}) for p in prompts]
    trained = {prompt_key(r) for r in load_pairs(split="train")}
    trained |= {prompt_key({"prompt": r["messages"][:-1]}) for r in load_sft(split="train")}
    assert len(prompts) == 43 and len(set(keys)) == 43, "33 test prompts of the pairs, 10 more of the SFT set"
    assert not set(keys) & trained
