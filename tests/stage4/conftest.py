"""The capstone's default run, trained once for the stage 4 suite: the lift test and the server test share it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tuned(tmp_path_factory):
    """(adapter folder, training summary) of the default method with its default settings (about 5 minutes
    on a 2-core CPU): what `train` with no options builds."""
    from stage4_finetune_align.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tuned")
    summary = train(TrainConfig(out=str(out)))
    return out / "adapter", summary
