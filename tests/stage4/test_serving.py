"""The tuned model through stage 5's server: merged and served by vLLM, its replies scored through the OpenAI API.

The in-process figures (Transformers, float32) and the served ones (vLLM, which serves a float32 folder
in bfloat16 on this CPU) come from the same weights and the same greedy decoding, but not the same
arithmetic: a reply may part from the other at a near tie between two tokens, and over 128 greedy
tokens most do (measured on a short run: 1 of 12 replies identical). So the test compares what the
issue asks for, the style figures, within a stated TOLERANCE, and prints how many replies are identical.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stage4_finetune_align.serving import ServedModel

PROMPTS = 12  # held-out prompts asked both ways
TOLERANCE = 0.17  # 2 of 12 replies may fall on the other side of a rule
SENTENCES_TOLERANCE = 0.5  # mean sentences per reply


def eval_json(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "stage4_finetune_align", "eval", "--json", "--limit", str(PROMPTS),
                           *args], capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def vllm_processes(port: int) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"vllm.entrypoints.openai.api_server" in args and str(port).encode() in args:
            found.append(int(cmdline.parent.name))
    return found


@pytest.fixture(scope="module")
def merged(tuned, tmp_path_factory):
    from stage4_finetune_align.train import merge

    adapter, _ = tuned
    return merge(adapter, tmp_path_factory.mktemp("merged") / "merged")


@pytest.mark.server
@pytest.mark.slow
def test_the_served_merged_model_writes_what_it_writes_in_process(merged, tmp_path):
    in_process = eval_json("--model", str(merged))
    with ServedModel(str(merged), log_dir=tmp_path) as server:
        port = int(server.base_url.rsplit(":", 1)[1].split("/")[0])
        assert vllm_processes(port), "the serve command started vLLM"
        served = eval_json("--base-url", server.base_url)
    assert vllm_processes(port) == [], "stopping the serve command stopped vLLM: nothing left running"
    assert served["model"] == "merged" and served["likelihood_accuracy"] is None
    mine, theirs = in_process["generation"], served["generation"]
    assert mine["prompts"] == theirs["prompts"] == PROMPTS
    identical = sum(a["reply"] == b["reply"] for a, b in zip(mine["replies"], theirs["replies"], strict=True))
    print(f"served vs in-process on {PROMPTS} prompts: {identical} identical replies; all rules "
          f"{theirs['all_rules']:.2f} vs {mine['all_rules']:.2f}; mean sentences {theirs['mean_sentences']:.2f} vs "
          f"{mine['mean_sentences']:.2f}; blame {theirs['blame_rate']:.2f} vs {mine['blame_rate']:.2f}")  # fmt: skip
    assert abs(theirs["all_rules"] - mine["all_rules"]) <= TOLERANCE
    assert abs(theirs["mean_sentences"] - mine["mean_sentences"]) <= SENTENCES_TOLERANCE
    assert abs(theirs["blame_rate"] - mine["blame_rate"]) <= TOLERANCE
