"""DPO by hand: the loss TRL's DPOTrainer minimises, written out and checked against it.

DPO (Direct Preference Optimization) learns from pairs without a reward model and without sampling,
unlike RLHF with PPO. Its insight: the policy that maximises a reward under a KL leash to a
reference model is pi(y|x) proportional to ref(y|x) * exp(r(x, y) / beta), so the reward can be
read back from the policy itself, r(x, y) = beta * log(pi(y|x) / ref(y|x)) (plus a term that
cancels in a pair). Plug that *implicit reward* into the Bradley-Terry model of "chosen beats
rejected" and the whole of RLHF becomes one classification loss per pair:

    loss = -log sigmoid( beta * [(log pi(yc|x) - log ref(yc|x)) - (log pi(yr|x) - log ref(yr|x))] )

Every log-probability is a *sum over the answer's tokens* (the prompt's tokens are context, not
scored): `sequence_logprobs` below. The reference is frozen: for a LoRA run it is the same network
with the adapter switched off; for SFT-then-DPO it is the SFT adapter, frozen at the start.

- beta sets the leash. The gradient weight of a pair is sigmoid(-beta * margin): pairs already
  ranked right by a wide margin stop counting, so a small beta lets the policy move further from
  the reference before it is "done", a large one keeps it close.
- The loss starts at ln 2 = 0.693 (policy == reference, margin 0) and only cares about the
  *difference* of the two log-ratios: it can lower both answers' likelihood, as long as the
  rejected one falls faster. That is why likelihood accuracy (is log pi(chosen) > log pi(rejected)
  outright?) is measured separately from the implicit-reward accuracy the trainer logs.

`tests/stage4/test_dpo.py` runs TRL's `compute_loss` and these functions on the same batch and
requires the same loss to 1e-6.
"""

from __future__ import annotations

from typing import Any


def sequence_logprobs(logits: Any, input_ids: Any, completion_mask: Any) -> Any:
    """Sum of log p(token | everything before it) over the completion tokens of each sequence.

    logits (B, T, V) from one forward pass over input_ids (B, T); completion_mask (B, T) is 1 on
    the answer's tokens. The token at position t is predicted by the logits at t - 1, so targets
    and mask shift left by one: position 0 is never scored. Returns (B,).
    """
    logprobs = logits[:, :-1].float().log_softmax(-1)  # (B, T-1, V)
    targets = input_ids[:, 1:]  # (B, T-1)
    token_logprobs = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return (token_logprobs * completion_mask[:, 1:]).sum(-1)  # (B,)


def dpo_loss(
    policy_chosen: Any, policy_rejected: Any, ref_chosen: Any, ref_rejected: Any, beta: float = 0.1
) -> tuple[Any, Any, Any]:
    """(mean loss, chosen rewards, rejected rewards) of a batch of pairs; inputs are (B,) summed log-probs.

    The implicit reward of an answer is beta * (log pi - log ref); the loss is -log sigmoid of the
    chosen reward minus the rejected one, averaged over the batch.

    Example: policy (-10, -12), reference (-11, -11), beta 0.5 -> rewards 0.5 and -0.5,
    loss -log sigmoid(1.0) = 0.3133
    """
    assert beta > 0, "beta must be positive"
    import torch.nn.functional as F

    # EXERCISE stage4.dpo_loss: rewards = beta * (policy - reference) for chosen and for rejected; loss = mean of -logsigmoid(chosen reward - rejected reward); return (loss, chosen rewards, rejected rewards)
    chosen_rewards = beta * (policy_chosen - ref_chosen)  # (B,)
    rejected_rewards = beta * (policy_rejected - ref_rejected)  # (B,)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards, rejected_rewards
    # END EXERCISE
