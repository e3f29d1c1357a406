"""dpo.py: the hand-written DPO loss against TRL's on the same batch; evaluation tokenizes as TRL trains."""

from __future__ import annotations

import copy
import math

import pytest

from stage4_finetune_align.data import load_pairs
from stage4_finetune_align.dpo import dpo_loss, sequence_logprobs
from stage4_finetune_align.evaluate import tokenize_pair

BETA = 0.3


@pytest.mark.exercise("stage4.dpo_loss")
def test_the_docstring_example():
    import torch

    loss, chosen, rejected = dpo_loss(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]),
                                      torch.tensor([-11.0]), beta=0.5)  # fmt: skip
    assert chosen.item() == pytest.approx(0.5) and rejected.item() == pytest.approx(-0.5)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))), abs=1e-6)


@pytest.mark.exercise("stage4.dpo_loss")
def test_policy_equal_to_reference_costs_ln_2_and_only_the_difference_counts():
    import torch

    same = torch.tensor([-20.0, -5.0])
    loss, _, _ = dpo_loss(same, same - 3, same, same - 3)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6), "no movement from the reference: a coin flip"
    lowered, _, _ = dpo_loss(same - 1, same - 3 - 5, same, same - 3)
    assert lowered.item() < math.log(2), "both answers less likely, rejected much more so: the loss falls"


def test_sequence_logprobs_scores_only_the_completion_shifted_by_one():
    import torch

    logits = torch.zeros(1, 4, 3)
    logits[0, 1, 2] = 10.0  # position 1 predicts token 2 almost surely
    ids = torch.tensor([[0, 1, 2, 0]])
    mask = torch.tensor([[0, 0, 1, 0]])  # only token 2 (at position 2) is the answer
    expected = torch.log_softmax(logits[0, 1], -1)[2]
    assert sequence_logprobs(logits, ids, mask).item() == pytest.approx(expected.item())


@pytest.fixture(scope="module")
def trl_trainer(tiny_llama, tmp_path_factory):
    """TRL's DPOTrainer on the tiny model with a LoRA adapter moved off zero, so policy != reference."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = tiny_llama
    pairs = load_pairs(split="train")[:4]
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    args = DPOConfig(output_dir=str(tmp_path_factory.mktemp("dpo")), beta=BETA, per_device_train_batch_size=4,
                     max_length=256, report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False,
                     disable_tqdm=True)  # fmt: skip
    trainer = DPOTrainer(model=copy.deepcopy(model), args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))  # fmt: skip
    torch.manual_seed(0)
    for name, parameter in trainer.model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0.0, 0.5)
    return trainer, pairs


def trl_sequence_logprobs(trainer, batch, reference: bool = False):
    """The summed answer log-probabilities exactly as TRL's loss sees them (its fused LM head), (2B,)."""
    import torch

    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        if reference:
            with trainer.model.disable_adapter():
                out = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    labels=labels, fused_lm_head=True)  # fmt: skip
        else:
            out = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                                fused_lm_head=True)  # fmt: skip
    return out.log_probs.sum(-1)


@pytest.mark.exercise("stage4.dpo_loss")
def test_hand_written_loss_equals_trls_on_the_same_batch(trl_trainer):
    """Same batch, same log-probabilities, same beta: the same loss and rewards to 1e-6."""
    import torch

    trainer, _ = trl_trainer
    batch = trainer.data_collator(
        [trainer.train_dataset[i] for i in range(4)]
    )  # rows: 4 chosen, then 4 rejected
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch).item()
    policy, reference = (
        trl_sequence_logprobs(trainer, batch),
        trl_sequence_logprobs(trainer, batch, reference=True),
    )
    loss, chosen_rewards, rejected_rewards = dpo_loss(
        policy[:4], policy[4:], reference[:4], reference[4:], BETA
    )
    assert abs(loss.item() - math.log(2)) > 1e-3, "the adapter moved the policy: not the trivial ln 2"
    assert loss.item() == pytest.approx(trl_loss, abs=1e-6)
    logged = trainer._metrics["train"]
    assert chosen_rewards.mean().item() == pytest.approx(logged["rewards/chosen"][-1], abs=1e-6)
    assert rejected_rewards.mean().item() == pytest.approx(logged["rewards/rejected"][-1], abs=1e-6)


def test_hand_written_log_probabilities_match_trls_fused_head(trl_trainer):
    """From full logits instead of TRL's tiled LM head: equal up to float32 summation order."""
    import torch

    trainer, _ = trl_trainer
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ours = sequence_logprobs(logits, batch["input_ids"], batch["completion_mask"])
    torch.testing.assert_close(ours, trl_sequence_logprobs(trainer, batch), rtol=1e-5, atol=1e-4)


def test_evaluation_tokenizes_each_pair_exactly_as_trl_trains_on_it(trl_trainer, tiny_llama):
    trainer, pairs = trl_trainer
    _, tokenizer = tiny_llama
    for i, pair in enumerate(pairs):
        row = trainer.train_dataset[i]
        assert tokenize_pair(tokenizer, pair) == {
            k: row[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")
        }
