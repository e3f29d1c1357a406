"""The capstone's training: LoRA SFT, DPO, or SFT then DPO, with TRL and PEFT, on a full-precision, 4-bit or 8-bit base.

LoRA freezes the model and learns a low-rank update `W + (alpha / r) * B @ A` for chosen weight
matrices (here every linear layer): for SmolLM2-135M at r=16 that is about 4.9M trainable numbers
instead of 135M, so an optimizer fits in little memory and the result is a small adapter file.
QLoRA keeps the frozen base in 4-bit NF4 (bitsandbytes) and trains the same adapter in higher
precision: the base takes ~3x less memory, at the price of dequantizing on every step (steep on a
CPU, small on a GPU; `bench` measures it).

Three methods, each a `--method`:
- `sft`: supervised fine-tuning on `data/sft.jsonl`, the loss on the answer's tokens only
  (TRL's prompt-completion format): the model imitates the voice, token by token.
- `dpo`: Direct Preference Optimization on `data/pairs.jsonl` (the loss is written out in
  `dpo.py`); the reference is the base, which is the adapter switched off.
- `sft-dpo`: SFT first, then DPO that continues the SFT adapter, with the SFT model frozen as the
  reference (TRL copies the adapter it is given into a second, frozen "ref" adapter). The usual
  recipe: SFT moves the model to the voice, DPO then teaches what to avoid. `--init ADAPTER`
  does the same from any adapter.

The default is `dpo`, 20 steps at a learning rate of 1e-3, chosen by `bench`'s method table
(reports/stage4_train.json, rendered into the README): it is the method whose replies to the
held-out prompts meet the voice's rules most often within the 10-minute budget.

Every sequence is whole: the max length is fitted to the data (`lengths.py`), and written into the
adapter folder so that evaluation cuts, or rather does not cut, the same way. Checkpoints every
`save_every` steps; `--resume` continues from the last one (for `sft-dpo`, in the phase it was in).
Gradient checkpointing is off: TRL turns it on by default, which recomputes every forward pass to
save memory, for about a third more time per step. Memory is kept down another way: a batch of 4
pairs runs as 2 micro-batches of 2 whose gradients add up before the optimizer step (the same
update; a DPO micro-batch holds 4 sequences of up to 240 tokens, policy and reference).

    python -m stage4_finetune_align train                              # the default: see DEFAULT_METHOD
    python -m stage4_finetune_align train --method sft --steps 30
    python -m stage4_finetune_align train --method sft-dpo --resume     # continue an interrupted run
    python -m stage4_finetune_align train --quant 4bit --steps 2        # QLoRA smoke run on CPU
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import BadInput
from shared.models import DEFAULT_CHAT_MODEL, resolve

METHODS = ("sft", "dpo", "sft-dpo")
QUANTS = ("none", "4bit", "8bit")
DEFAULT_METHOD = "dpo"  # chosen by the bench's method table: see the module docstring
RUN_FILE = "stage4_train.json"  # in the adapter folder: how it was trained (method, steps, max length)


def default_out() -> Path:
    return paths.artifacts_dir() / "stage4" / "run"


@dataclass
class TrainConfig:
    """Everything a run depends on, validated before any model loads."""

    method: str = DEFAULT_METHOD
    quant: str = "none"
    steps: int = 20  # steps of the method; for sft-dpo, of its DPO phase
    sft_steps: int = 30  # the SFT phase of sft-dpo
    batch_size: int = 4  # examples (pairs) per optimizer step
    micro_batch_size: int = (
        2  # per forward pass: gradients accumulate over batch_size / micro_batch_size passes
    )
    learning_rate: float = 1e-3
    beta: float = 0.1
    sft_weight: float = 0.0  # DPO plus this times the NLL of the chosen answer (RPO); 0: plain DPO
    lora_r: int = 16
    lora_alpha: int = 32
    max_length: int = 0  # 0: fitted to the data, so that nothing is cut
    save_every: int = 10
    seed: int = 0
    init: str = ""  # an adapter to continue from (its frozen copy is DPO's reference)
    model: str = DEFAULT_CHAT_MODEL
    out: str = ""

    def __post_init__(self) -> None:
        checks = [(self.method in METHODS, f"method must be one of {', '.join(METHODS)}, got {self.method!r}"),
                  (self.quant in QUANTS, f"quant must be one of {', '.join(QUANTS)}, got {self.quant!r}"),
                  (self.steps >= 1, f"steps must be at least 1, got {self.steps}"),
                  (self.sft_steps >= 1, f"SFT steps must be at least 1, got {self.sft_steps}"),
                  (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
                  (self.micro_batch_size >= 1 and self.batch_size % min(self.micro_batch_size, self.batch_size) == 0,
                   f"batch size {self.batch_size} must be a multiple of the micro batch size {self.micro_batch_size}"),
                  (0 < self.learning_rate < 1, f"learning rate must be in (0, 1), got {self.learning_rate}"),
                  (self.beta > 0, f"beta must be positive, got {self.beta}"),
                  (self.sft_weight >= 0, f"the SFT weight must be 0 or more, got {self.sft_weight}"),
                  (self.lora_r >= 1 and self.lora_alpha >= 1, "LoRA r and alpha must be at least 1"),
                  (self.max_length == 0 or self.max_length >= 32,
                   f"max length must be 0 (fit the data) or at least 32 tokens, got {self.max_length}"),
                  (self.save_every >= 1, f"save_every must be at least 1, got {self.save_every}")]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise BadInput(message)
        if self.init:
            check_adapter(Path(self.init))
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


def check_adapter(adapter: Path) -> Path:
    """A LoRA adapter folder as PEFT writes it, or a one-line BadInput saying what is wrong."""
    adapter = Path(adapter)
    config = adapter / "adapter_config.json"
    if not adapter.is_dir():
        raise BadInput(f"no adapter folder at {adapter}")
    if not config.is_file():
        raise BadInput(f"{adapter} is not a LoRA adapter (adapter_config.json missing); train one first")
    try:
        peft_type = json.loads(config.read_text()).get("peft_type")
    except (json.JSONDecodeError, AttributeError):
        raise BadInput(f"{config} is not valid JSON") from None
    if peft_type != "LORA":
        raise BadInput(f"{adapter} is not a LoRA adapter (peft_type {peft_type!r})")
    if not any((adapter / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        raise BadInput(f"{adapter} has no adapter weights (adapter_model.safetensors missing)")
    return adapter


def lora_config(config: TrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")  # fmt: skip


def training_rows(
    method: str, pairs_path: Path | None = None, sft_path: Path | None = None
) -> list[dict[str, Any]]:
    """The train split a phase learns from: pairs for DPO, prompt/completion examples for SFT."""
    from stage4_finetune_align.data import PAIRS_PATH, SFT_PATH, load_pairs, load_sft

    if method == "dpo":
        rows = [
            {k: r[k] for k in ("prompt", "chosen", "rejected")}
            for r in load_pairs(pairs_path or PAIRS_PATH, "train")
        ]
    else:
        rows = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]}
                for r in load_sft(sft_path or SFT_PATH, "train", pairs_path or PAIRS_PATH)]  # fmt: skip
    if not rows:
        raise BadInput(f"no training examples (split 'train') for {method}")
    return rows


def check_inputs(config: TrainConfig, pairs_path: Path | None = None, sft_path: Path | None = None) -> None:
    """Every file the run will read, validated before any model loads: a bad line fails in a second."""
    methods = ("sft", "dpo") if config.method == "sft-dpo" else (config.method,)
    for method in methods:
        training_rows(method, pairs_path, sft_path)


def fitted_max_length(tokenizer: Any, pairs_path: Path | None, sft_path: Path | None) -> dict[str, Any]:
    """One max length for the whole stage: every pair and SFT example (all splits) fits, none is cut."""
    from stage4_finetune_align.data import PAIRS_PATH, SFT_PATH, load_pairs, load_sft
    from stage4_finetune_align.lengths import fit_max_length, pair_lengths, sft_lengths

    lengths = pair_lengths(tokenizer, load_pairs(pairs_path or PAIRS_PATH))
    lengths += sft_lengths(tokenizer, load_sft(sft_path or SFT_PATH, pairs_path=pairs_path or PAIRS_PATH))
    return {"lengths": lengths, "max_length": fit_max_length(lengths)}


def latest_checkpoint(out: Path) -> Path | None:
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return checkpoints[-1] if checkpoints else None


def finished(out: Path, steps: int) -> bool:
    """A phase whose adapter is saved after `steps` steps (so `--resume` can skip it)."""
    run = out / "adapter" / RUN_FILE
    return run.is_file() and json.loads(run.read_text()).get("steps") == steps


def train(config: TrainConfig, resume: bool = False, pairs_path: Path | None = None, sft_path: Path | None = None,
          on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Train the configured method into `config.out`; returns the run's summary (also in metrics.json)."""
    out = Path(config.out)
    start = time.perf_counter()
    check_inputs(config, pairs_path, sft_path)
    if config.method != "sft-dpo":
        return run_phase(config, config.method, out, resume, pairs_path, sft_path, on_step, start)
    sft_out = out / "sft"
    if resume and latest_checkpoint(out) is None and latest_checkpoint(sft_out) is None:
        raise BadInput(
            f"nothing to resume: no checkpoint under {out / 'checkpoints'} or {sft_out / 'checkpoints'}"
        )
    if resume and finished(sft_out, config.sft_steps):
        sft = json.loads((sft_out / "metrics.json").read_text())
    else:
        sft_config = replace(config, method="sft", steps=config.sft_steps, out=str(sft_out))
        sft = run_phase(sft_config, "sft", sft_out, resume and latest_checkpoint(sft_out) is not None, pairs_path,
                        sft_path, on_step, start)  # fmt: skip
    dpo_config = replace(config, method="dpo", init=str(sft_out / "adapter"))
    dpo = run_phase(dpo_config, "dpo", out, resume and latest_checkpoint(out) is not None, pairs_path, sft_path,
                    on_step, start)  # fmt: skip
    summary = {**dpo, "config": asdict(config), "method": "sft-dpo", "phases": {"sft": strip(sft), "dpo": strip(dpo)},
               "steps": sft["steps"] + dpo["steps"], "seconds": sft["seconds"] + dpo["seconds"],
               "step_seconds": sft["step_seconds"] + dpo["step_seconds"], "wall_seconds": time.perf_counter() - start}  # fmt: skip
    summary["seconds_per_step"] = summary["seconds"] / max(1, len(summary["step_seconds"]))
    paths.atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2) + "\n")
    return summary


def strip(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k not in ("history", "config", "phases")}


def run_phase(config: TrainConfig, method: str, out: Path, resume: bool, pairs_path: Path | None,
              sft_path: Path | None, on_step: Callable[[dict[str, Any]], None] | None,
              start: float) -> dict[str, Any]:  # fmt: skip
    """One TRL run (SFT or DPO) from the base or from `config.init`; checkpoints, adapter, metrics."""
    checkpoint = latest_checkpoint(out) if resume else None
    if resume and checkpoint is None:
        raise BadInput(f"nothing to resume: no checkpoint under {out / 'checkpoints'}")
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    torch.manual_seed(config.seed)
    dataset = Dataset.from_list(training_rows(method, pairs_path, sft_path))
    base, tokenizer = load_base(config.model, config.quant)
    footprint_mb = base.get_memory_footprint() / 2**20  # the frozen base's weights, before the adapter
    fitted = fitted_max_length(tokenizer, pairs_path, sft_path)
    max_length = config.max_length or fitted["max_length"]
    from stage4_finetune_align.lengths import length_report

    lengths = length_report(fitted["lengths"], max_length)
    model, peft_config = base, lora_config(config)
    if config.init:  # continue an adapter: it stays trainable; for DPO, TRL freezes a copy as the reference
        from peft import PeftModel

        model, peft_config = PeftModel.from_pretrained(base, config.init, is_trainable=True), None
    micro = min(config.micro_batch_size, config.batch_size)
    common = dict(output_dir=str(out / "checkpoints"), max_steps=config.steps, per_device_train_batch_size=micro,
                  gradient_accumulation_steps=config.batch_size // micro,
                  learning_rate=config.learning_rate, lr_scheduler_type="constant", logging_steps=1,
                  save_steps=config.save_every, save_total_limit=2, report_to=[], seed=config.seed,
                  use_cpu=not torch.cuda.is_available(), disable_tqdm=True, max_length=max_length,
                  dataloader_num_workers=0, bf16=False, gradient_checkpointing=False)  # fmt: skip
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
                on_step({"phase": method, "step": state.global_step, **logs})

    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        losses = (
            dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, config.sft_weight])
            if config.sft_weight
            else {}
        )
        trainer: Any = DPOTrainer(model=model, args=DPOConfig(beta=config.beta, **losses, **common), train_dataset=dataset,
                                  processing_class=tokenizer, peft_config=peft_config, callbacks=[Relay()])  # fmt: skip
    else:
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config, callbacks=[Relay()])  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # our Relay reports each step instead of raw dicts on stdout
    began = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.perf_counter() - began
    history = [h for h in trainer.state.log_history if "loss" in h]
    run = {"method": method, "steps": trainer.state.global_step, "max_length": max_length, "init": config.init or None,
           "model": config.model, "quant": config.quant}  # fmt: skip
    adapter = out / "adapter"
    with paths.atomic_directory(adapter) as tmp:
        trainer.model.save_pretrained(tmp, selected_adapters=["default"])  # not the frozen "ref" copy
        tokenizer.save_pretrained(tmp)
        paths.atomic_write_text(Path(tmp) / RUN_FILE, json.dumps(run, indent=2) + "\n")
    summary = {"config": asdict(config), "method": method, "adapter": str(adapter),
               "resumed_from": str(checkpoint) if checkpoint else None, "steps": trainer.state.global_step,
               "steps_this_run": len(step_seconds), "seconds": seconds,
               # the steps this process ran, not the ones a resumed checkpoint had already done
               "seconds_per_step": seconds / max(1, len(step_seconds)), "step_seconds": step_seconds,
               "wall_seconds": time.perf_counter() - start, "lengths": lengths,
               "peak_memory_mb": peak_memory_mb(), "base_footprint_mb": footprint_mb,
               "device": "cuda" if torch.cuda.is_available() else "cpu", "history": history,
               "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}  # fmt: skip
    paths.atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2) + "\n")
    plot_history(history, out / "metrics.png", f"{method.upper()} ({config.quant}) on {config.model}")
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

    keys = [
        k for k in ("loss", "rewards/margins", "rewards/accuracies", "mean_token_accuracy") if k in history[0]
    ]
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
    adapter = check_adapter(Path(adapter))
    from peft import PeftModel

    base, tokenizer = load_base(model, "none")
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    with paths.atomic_directory(Path(out)) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(out)
