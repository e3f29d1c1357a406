"""dpo.py and evaluate.py: a few real DPO steps, resume, QLoRA smoke run, merge, held-out scoring."""

from __future__ import annotations

import pytest

from shared.console import BadInput
from stage4_finetune_align.data import load_pairs, write_pairs
from stage4_finetune_align.dpo import TrainConfig, latest_checkpoint, merge, train
from stage4_finetune_align.evaluate import implicit_preference, preference_eval, style_score


@pytest.mark.parametrize("options", [{"method": "ppo"}, {"quant": "2bit"}, {"steps": 0}, {"learning_rate": 2.0},
                                     {"beta": 0}, {"max_length": 8}])  # fmt: skip
def test_config_validates(options):
    with pytest.raises(BadInput):
        TrainConfig(**options)


@pytest.mark.exercise("stage4.style_score")
def test_style_score():
    assert style_score("Sorry about that. Please send me the order number and I will check it.")["score"] == 1
    blaming = style_score(
        "You obviously didn't read the manual. This is your fault. Try again. Or not. Whatever."
    )
    assert not blaming["no_blame"] and not blaming["at_most_three_sentences"]


@pytest.mark.exercise("stage4.implicit_reward")
def test_implicit_reward_compares_each_answer_with_the_reference():
    margin, credit = implicit_preference(-10.0, -12.0, -11.0, -11.0, beta=0.5)
    assert margin == pytest.approx(1.0) and credit == 1.0, (
        "chosen rose and rejected fell against the reference"
    )
    assert implicit_preference(-5.0, -3.0, -6.0, -3.0, beta=0.1) == (pytest.approx(0.1), 1.0), (
        "a likelier rejected answer is no matter: only the change from the reference counts"
    )
    assert implicit_preference(-4.0, -4.0, -4.0, -4.0) == (0.0, 0.5), "the reference itself ties"
    assert implicit_preference(-9.0, -8.0, -8.0, -8.0, beta=0.2) == (pytest.approx(-0.2), 0.0)


SMALL = dict(batch_size=2, max_length=64, save_every=2, learning_rate=5e-4)


@pytest.fixture(scope="module")
def small_pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    write_pairs(load_pairs(split="train")[:8], path)
    return path


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, small_pairs):
    out = tmp_path_factory.mktemp("run")
    return train(TrainConfig(steps=3, out=str(out), **SMALL), pairs_path=small_pairs), out


def lora_tensors(adapter):
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


@pytest.mark.slow
def test_dpo_changes_the_lora_weights_not_the_base(dpo_run):
    import torch
    from peft import PeftModel

    from stage4_finetune_align.dpo import load_base

    summary, out = dpo_run
    tensors = lora_tensors(out / "adapter")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in tensors.items()), (
        "lora_B starts at zero and moved"
    )
    fresh, _ = load_base()
    reference = fresh.model.layers[0].self_attn.q_proj.weight.detach().clone()
    tuned = PeftModel.from_pretrained(load_base()[0], str(out / "adapter"))
    assert torch.equal(tuned.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight, reference)
    losses = [h["loss"] for h in summary["history"]]
    assert len(losses) == 3 and min(losses[1:]) < losses[0], "the loss fell below its start (ln 2)"
    assert (out / "metrics.json").is_file() and (out / "metrics.png").is_file()
    assert 0 < summary["trainable_parameters"] < 10_000_000


@pytest.mark.slow
def test_resume_continues_from_the_saved_step(dpo_run, small_pairs):
    _, out = dpo_run
    checkpoint = latest_checkpoint(out)
    assert checkpoint is not None
    logged = []
    resumed = train(TrainConfig(steps=4, out=str(out), **SMALL), resume=True, pairs_path=small_pairs,
                    on_step=lambda log: logged.append(log["step"]))  # fmt: skip
    saved = int(checkpoint.name.split("-")[1])
    assert resumed["steps"] == 4 and resumed["resumed_from"] == str(checkpoint)
    assert logged == list(range(saved + 1, 5)), "it ran only the steps after the checkpoint"


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(BadInput, match="nothing to resume"):
        train(TrainConfig(steps=1, out=str(tmp_path)), resume=True)


@pytest.mark.slow
def test_the_merged_directory_loads_and_generates(dpo_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, out = dpo_run
    merged = merge(out / "adapter", tmp_path / "merged")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(merged), AutoTokenizer.from_pretrained(merged)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "My card was declined."}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)  # fmt: skip
    generated = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > ids["input_ids"].shape[1]


@pytest.mark.slow
@pytest.mark.exercise("stage4.implicit_reward")
def test_held_out_scoring_before_and_after(dpo_run):
    _, out = dpo_run
    pairs = load_pairs(split="test")[:4]
    base = preference_eval(pairs)
    assert base["n"] == 4 and base["mean_margin"] == 0, "the base is its own reference"
    assert base["preference_accuracy"] == 0.5, "every pair ties: no preference"
    tuned = preference_eval(pairs, out / "adapter")
    assert 0 <= tuned["preference_accuracy"] <= 1 and tuned["mean_margin"] != 0
    assert 0 <= tuned["likelihood_accuracy"] <= 1


@pytest.mark.slow
def test_qlora_smoke_run_on_cpu(tmp_path, small_pairs):
    summary = train(TrainConfig(quant="4bit", steps=1, out=str(tmp_path), batch_size=1, max_length=48),
                    pairs_path=small_pairs)  # fmt: skip
    assert summary["steps"] == 1 and (tmp_path / "adapter" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_8bit_smoke_run_on_cpu(tmp_path, small_pairs):
    summary = train(TrainConfig(quant="8bit", steps=1, out=str(tmp_path), batch_size=1, max_length=48),
                    pairs_path=small_pairs)  # fmt: skip
    assert summary["steps"] == 1 and (tmp_path / "adapter" / "adapter_config.json").is_file()
    full = 538  # MB: SmolLM2-135M in fp32
    assert summary["base_footprint_mb"] < 0.6 * full, "the frozen base is stored in 8 bits"


@pytest.mark.slow
@pytest.mark.exercise("stage4.implicit_reward")
def test_a_short_capstone_run_lifts_held_out_preference_accuracy(tmp_path):
    """8 of the default 30 steps on the full training split; the bench measures the whole default run."""
    summary = train(TrainConfig(steps=8, out=str(tmp_path)))
    pairs = load_pairs(split="test")[:24]
    before = preference_eval(pairs)["preference_accuracy"]
    after = preference_eval(pairs, tmp_path / "adapter")["preference_accuracy"]
    assert before == 0.5 and after >= 0.75, f"held-out preference accuracy {before} -> {after}"
    assert summary["peak_memory_mb"] > 0 and len(summary["step_seconds"]) == 8


@pytest.mark.slow
def test_bench_times_each_precision_in_its_own_process(tmp_path, capsys):
    import json

    from stage4_finetune_align.cli import main

    assert main(["bench", "--quants", "none", "--steps", "2", "--batch-size", "1", "--no-capstone",
                 "--out", str(tmp_path), "--json"]) == 0  # fmt: skip
    report = json.loads((tmp_path / "stage4_train.json").read_text())
    (row,) = report["precisions"]
    assert row["quant"] == "none" and row["steps"] == 2 and row["seconds_per_step"] > 0
    assert row["peak_memory_mb"] > row["base_footprint_mb"] > 400
    assert (tmp_path / "stage4_train.png").stat().st_size > 10_000
    assert json.loads(capsys.readouterr().out) == report
