"""The capstone's default run changes what the model writes on held-out prompts.

The bench measures the default run on all 43 held-out prompts; this checks the same run
(tests/stage4/conftest.py) on the first 12 of them, base and tuned from one process
(`compare`: the same base model with the adapter off, then on).
"""

from __future__ import annotations

import pytest

from stage4_finetune_align.generation import style_figures
from stage4_finetune_align.train import DEFAULT_METHOD

LIFT_AT_LEAST = 0.25  # the share of replies meeting all three rules rises by at least this much


@pytest.mark.slow
def test_the_default_run_changes_what_the_model_writes(tuned, compared):
    _, summary = tuned
    assert summary["method"] == DEFAULT_METHOD
    rows = compared
    base, tuned_figures = style_figures([r["base"] for r in rows]), style_figures([r["tuned"] for r in rows])
    print(f"{len(rows)} held-out prompts, all three rules: base {base['all_rules']:.2f} -> tuned "
          f"{tuned_figures['all_rules']:.2f}; mean sentences {base['mean_sentences']:.1f} -> "
          f"{tuned_figures['mean_sentences']:.1f}")  # fmt: skip
    assert tuned_figures["all_rules"] >= base["all_rules"] + LIFT_AT_LEAST
    assert tuned_figures["mean_sentences"] < base["mean_sentences"]
