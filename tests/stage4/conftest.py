"""The capstone's default run, trained once for the stage 4 suite, and its replies on the first held-out
prompts: the lift test and both server tests share them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

COMPARED = 12  # held-out prompts asked of the base and the tuned model


@pytest.fixture(scope="session")
def tuned(tmp_path_factory):
    """(adapter folder, training summary) of the default method with its default settings (about 5 minutes
    on a 2-core CPU): what `train` with no options builds."""
    from stage4_finetune_align.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tuned")
    summary = train(TrainConfig(out=str(out)))
    return out / "adapter", summary


@pytest.fixture(scope="session")
def compared(tuned) -> list[dict]:
    """`compare --held-out 12 --adapter ADAPTER --json`, as a learner runs it: per prompt, the base's and
    the tuned model's greedy replies from one process (the same base model with the adapter off, then on)."""
    adapter, _ = tuned
    done = subprocess.run([sys.executable, "-m", "stage4_finetune_align", "compare", "--held-out", str(COMPARED),
                           "--adapter", str(adapter), "--json"], capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout)
    assert len(rows) == COMPARED
    return rows
