"""The capstone: DPO with TRL and a LoRA adapter, on a full-precision, 4-bit or 8-bit base.

LoRA freezes the model and learns a low-rank update `W + (alpha / r) * B @ A` for chosen weight
matrices (here every linear layer): for SmolLM2-135M at r=16 that is about 4.9M trainable numbers
instead of 135M, so an optimizer fits in little memory and the result is a small adapter file.
QLoRA keeps the frozen base in 4-bit NF4 (bitsandbytes) and trains the same adapter in higher
precision: the base takes ~3x less memory here, at the price of dequantizing on every step (on a CPU
that price is 14 s/step against 9 s for LoRA at batch 2 in `bench`; on a GPU it is small).

DPO (Direct Preference Optimization) learns from pairs without a reward model or sampling, unlike
RLHF with PPO: it raises log pi(chosen) - log pi(rejected) relative to the frozen reference model
(here the base itself, the adapter switched off), with beta setting how far it may drift:

    loss = -log sigmoid( beta * [(log pi(yc|x) - log ref(yc|x)) - (log pi(yr|x) - log ref(yr|x))] )

TRL's DPOTrainer logs the implicit rewards: rewards/margins (chosen minus rejected) and
rewards/accuracies (the share of pairs where chosen's reward is higher), which we keep per step.

    python -m stage4_finetune_align train --method dpo --steps 30
    python -m stage4_finetune_align train --quant 4bit --steps 2        # QLoRA smoke run on CPU
    python -m stage4_finetune_align train --resume                      # continue from a checkpoint
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import BadInput
from shared.models import DEFAULT_CHAT_MODEL, resolve

METHODS = ("dpo", "sft")
QUANTS = ("none", "4bit", "8bit")


def default_out() -> Path:
    return paths.artifacts_dir() / "stage4" / "run"


@dataclass
class TrainConfig:
    """Everything a run depends on, validated before any model loads."""

    method: str = "dpo"
    quant: str = "none"
    steps: int = 30
    batch_size: int = 4
    learning_rate: float = 5e-4
    beta: float = 0.1
    lora_r: int = 16
    lora_alpha: int = 32
    max_length: int = 128
    save_every: int = 10
    seed: int = 0
    model: str = DEFAULT_CHAT_MODEL
    out: str = ""

    def __post_init__(self) -> None:
        checks = [(self.method in METHODS, f"method must be one of {', '.join(METHODS)}, got {self.method!r}"),
                  (self.quant in QUANTS, f"quant must be one of {', '.join(QUANTS)}, got {self.quant!r}"),
                  (self.steps >= 1, f"steps must be at least 1, got {self.steps}"),
                  (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
                  (0 < self.learning_rate < 1, f"learning rate must be in (0, 1), got {self.learning_rate}"),
                  (self.beta > 0, f"beta must be positive, got {self.beta}"),
                  (self.lora_r >= 1 and self.lora_alpha >= 1, "LoRA r and alpha must be at least 1"),
                  (self.max_length >= 32, f"max length must be at least 32 tokens, got {self.max_length}"),
                  (self.save_every >= 1, f"save_every must be at least 1, got {self.save_every}")]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise BadInput(message)
        self.out = str(self.out or default_out())


def quantization_config(quant: str) -> Any:
    if quant == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if quant == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.float32)  # fmt: skip
    return BitsAndBytesConfig(load_in_8bit=True)


def load_base(model: str = DEFAULT_CHAT_MODEL, quant: str = "none") -> tuple[Any, Any]:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar reports the steps
    datasets.disable_progress_bars()
    path = resolve(model, kind="chat")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if quant != "none":
        kwargs["quantization_config"] = quantization_config(quant)
    base = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if quant != "none":
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    return base, tokenizer


def lora_config(config: TrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")  # fmt: skip


def datasets_for(method: str, pairs_path: Path | None = None) -> Any:
    from datasets import Dataset

    from stage4_finetune_align.data import PAIRS_PATH, load_pairs

    rows = load_pairs(pairs_path or PAIRS_PATH, split="train")
    if not rows:
        raise BadInput("no training pairs (split 'train') in the pairs file")
    if method == "dpo":
        return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    return Dataset.from_list([{"messages": r["prompt"] + r["chosen"]} for r in rows])


def latest_checkpoint(out: Path) -> Path | None:
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return checkpoints[-1] if checkpoints else None


def train(config: TrainConfig, resume: bool = False, pairs_path: Path | None = None,
          on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Train a LoRA adapter; checkpoints every `save_every` steps; returns the run's summary."""
    import torch
    from transformers import TrainerCallback

    out = Path(config.out)
    checkpoint = latest_checkpoint(out) if resume else None
    if resume and checkpoint is None:
        raise BadInput(f"nothing to resume: no checkpoint under {out / 'checkpoints'}")
    torch.manual_seed(config.seed)
    dataset = datasets_for(config.method, pairs_path)
    base, tokenizer = load_base(config.model, config.quant)
    footprint_mb = base.get_memory_footprint() / 2**20  # the frozen base's weights, before the adapter
    common = dict(output_dir=str(out / "checkpoints"), max_steps=config.steps, per_device_train_batch_size=config.batch_size,
                  learning_rate=config.learning_rate, lr_scheduler_type="constant", logging_steps=1,
                  save_steps=config.save_every, save_total_limit=2, report_to=[], seed=config.seed,
                  use_cpu=not torch.cuda.is_available(), disable_tqdm=True, max_length=config.max_length,
                  dataloader_num_workers=0, bf16=False)  # fmt: skip

    step_seconds: list[float] = []

    class Relay(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.began = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            step_seconds.append(time.perf_counter() - self.began)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
        ) -> None:
            if on_step and logs and "loss" in logs:
                on_step({"step": state.global_step, **logs})

    if config.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(model=base, args=DPOConfig(beta=config.beta, **common), train_dataset=dataset,
                             processing_class=tokenizer, peft_config=lora_config(config), callbacks=[Relay()])  # fmt: skip
    else:
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(model=base, args=SFTConfig(**common), train_dataset=dataset, processing_class=tokenizer,
                             peft_config=lora_config(config), callbacks=[Relay()])  # fmt: skip
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our Relay reports each step instead of raw dicts on stdout
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.perf_counter() - start
    adapter = out / "adapter"
    with paths.atomic_directory(adapter) as tmp:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    history = [h for h in trainer.state.log_history if "loss" in h]
    summary = {"config": asdict(config), "adapter": str(adapter), "resumed_from": str(checkpoint) if checkpoint else None,
               "steps": trainer.state.global_step, "seconds": seconds,
               "seconds_per_step": seconds / max(1, len(history)), "step_seconds": step_seconds,
               "peak_memory_mb": peak_memory_mb(), "base_footprint_mb": footprint_mb,
               "device": "cuda" if torch.cuda.is_available() else "cpu",
               "history": history,
               "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}  # fmt: skip
    paths.atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2) + "\n")
    plot_history(history, out / "metrics.png", f"{config.method.upper()} ({config.quant}) on {config.model}")
    return summary


def peak_memory_mb() -> float:
    """The most memory this run has held: GPU memory allocated by torch on a GPU, resident set size on a CPU."""
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def plot_history(history: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("loss", "rewards/margins", "rewards/accuracies") if k in history[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        ax.plot([h["step"] for h in history], [h[key] for h in history], marker=".")
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    paths.atomic_savefig(fig, path, dpi=110)
    return path


def merge(adapter: Path, out: Path, model: str = DEFAULT_CHAT_MODEL) -> Path:
    """Fold the adapter into a full-precision copy of the base: a plain model directory for Transformers or vLLM."""
    from peft import PeftModel

    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise BadInput(f"no LoRA adapter at {adapter} (adapter_config.json missing); train one first")
    base, tokenizer = load_base(model, "none")
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    with paths.atomic_directory(Path(out)) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(out)
