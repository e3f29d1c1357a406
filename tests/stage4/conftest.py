"""One short run of the capstone's default recipe for the stage 4 suite: the lift test and the server test share it."""

from __future__ import annotations

import pytest

# A shortened default run (the bench measures the full one): enough steps to change what the model writes.
SHORT_RUN = dict(sft_steps=12, steps=4)


@pytest.fixture(scope="session")
def tuned(tmp_path_factory):
    """(adapter folder, training summary) of the default method, shortened."""
    from stage4_finetune_align.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tuned")
    summary = train(TrainConfig(out=str(out), **SHORT_RUN))
    return out / "adapter", summary
