"""The capstone's default run changes what the model writes on held-out prompts.

The bench measures the default run on all 43 held-out prompts; this checks the same run
(tests/stage4/conftest.py) on the first PROMPTS of them, base and tuned from one process
(`compare`: the same base model with the adapter off, then on).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stage4_finetune_align.generation import style_figures
from stage4_finetune_align.train import DEFAULT_METHOD

PROMPTS = 12
LIFT_AT_LEAST = 0.25  # the share of replies meeting all three rules rises by at least this much


@pytest.mark.slow
def test_the_default_run_changes_what_the_model_writes(tuned):
    adapter, summary = tuned
    assert summary["method"] == DEFAULT_METHOD
    done = subprocess.run([sys.executable, "-m", "stage4_finetune_align", "compare", "--held-out", str(PROMPTS),
                           "--adapter", str(adapter), "--json"], capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout)
    base, tuned_figures = style_figures([r["base"] for r in rows]), style_figures([r["tuned"] for r in rows])
    print(f"{PROMPTS} held-out prompts, all three rules: base {base['all_rules']:.2f} -> tuned "
          f"{tuned_figures['all_rules']:.2f}; mean sentences {base['mean_sentences']:.1f} -> "
          f"{tuned_figures['mean_sentences']:.1f}")  # fmt: skip
    assert tuned_figures["all_rules"] >= base["all_rules"] + LIFT_AT_LEAST
    assert tuned_figures["mean_sentences"] < base["mean_sentences"]
