"""Quantization: the same model in fp32, bf16, int8, NF4 and FP4, priced in memory, quality and speed.

A weight stored in fp32 takes 4 bytes; bf16 keeps fp32's 8-bit exponent (its range) but only 7
mantissa bits, and takes 2. Quantization goes further and stores integers plus a few scales:

- **int8 (LLM.int8, bitsandbytes `load_in_8bit`)**: each row of a weight matrix is scaled by its
  largest absolute value (absmax) into [-127, 127] and stored as int8, with one fp32 scale per row.
  Plain int8 breaks on large models because a few hidden features carry outliers 20x larger than the
  rest, and one outlier ruins the scale of its whole row. LLM.int8's *outlier decomposition* finds the
  input columns with any value above a threshold (6.0), multiplies those few in 16-bit, the rest in
  int8, and adds the two results.
- **NF4 and FP4 (bitsandbytes `load_in_4bit`, QLoRA)**: 4 bits name one of 16 values. Weights are cut
  into blocks of 64, each block is divided by its own absmax (blockwise, so one outlier spoils only
  64 weights) and each weight is rounded to the nearest of the 16 levels. FP4 uses a tiny float
  (1 sign, 2 exponent, 1 mantissa bit); NF4, "4-bit NormalFloat", places its 16 levels at quantiles
  of a normal distribution, which is how trained weights are spread, so every level is used about
  equally often. *Double quantization* then quantizes the per-block absmax constants themselves (to
  8 bits, in blocks of 256), cutting their cost from 0.5 to about 0.127 bits per weight.

Why the footprint is not 4x or 8x smaller: only the big linear layers of the transformer blocks are
replaced. The embedding matrix (and the LM head, here tied to it), the norms and the biases stay in
the load dtype. SmolLM2-135M spends 28M of its 135M parameters (108 MB in fp32) on its embedding, so
measured here (MB = 2**20 bytes) fp32 is 513 MB, int8 209 MB and NF4 159 MB: the embedding alone is
two thirds of NF4's bytes.

Why quantized can be *slower*: a CPU has no int8/4-bit matmul kernels for these formats that beat its
fp32 BLAS, so each linear layer dequantizes its weights back to float, then multiplies, on every
forward pass. The memory saving is real; the speed is a GPU story (fewer bytes to move from HBM is
what makes decoding faster there). bf16 on a CPU without AMX or AVX512-BF16 units is emulated and can
also be slower than fp32; on a GPU it is the native fast path.

Quality is measured as perplexity on a fixed held-out text (`data/heldout.txt`, prose that the model
never saw) with a sliding window: each window of `max_length` tokens is fed whole, but only the tokens
not already scored by the previous window count (the overlap's labels are -100), so every token is
scored exactly once, and past the first window with at least `max_length - stride` tokens of context
(a model's perplexity depends on how much context it gets). Speed is greedy decoding,
tokens per second at batch 1, after a warm-up. And as a sanity check each precision answers one
question: a broken quantization shows up there at once.

    python -m stage5_serving_ops quantize              # -> reports/stage5_quantization.json + .png
    python -m stage5_serving_ops quantize --json
"""

from __future__ import annotations

import gc
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import BadInput, WorkFailed, one_line
from shared.models import DEFAULT_CHAT_MODEL, resolve

PRECISIONS = ("fp32", "bf16", "int8", "nf4", "fp4")
HELDOUT_PATH = Path(__file__).parent / "data" / "heldout.txt"
SPEED_PROMPT = "Give three short tips for an engineer joining an on-call rotation."
SANITY_QUESTION = "What is the capital of France?"
TABLE_COLUMNS = ("precision", "footprint MB", "perplexity", "tok/s", "answer")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise BadInput(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return precision


def quantization_config(precision: str, device: str) -> Any:
    """The BitsAndBytesConfig for int8/nf4/fp4, None for the plain float precisions."""
    import torch
    from transformers import BitsAndBytesConfig

    if precision == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if precision in ("nf4", "fp4"):
        compute = torch.bfloat16 if device.startswith("cuda") else torch.float32
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=precision, bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute)  # fmt: skip
    return None


def load(precision: str, model: str = DEFAULT_CHAT_MODEL, device: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) with the weights in `precision`, on `device` (the GPU when there is one).

    The parts that are not quantized (embeddings, norms) stay in fp32 on a CPU and bf16 on a GPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    check_precision(precision)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # LLM.int8 logs "inputs will be cast from torch.float32 to float16" on every matmul of an fp32 model
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    device = device or default_device()
    path = resolve(model, kind="chat")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = quantization_config(precision, device)
    if precision == "bf16" or (config is not None and device.startswith("cuda")):
        dtype = torch.bfloat16
    else:
        dtype = torch.float32
    try:
        if config is None:
            loaded = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        else:  # bitsandbytes places the quantized weights itself, so the device goes in device_map
            loaded = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, quantization_config=config,
                                                          device_map={"": device})  # fmt: skip
    except (ImportError, RuntimeError, ValueError) as e:
        raise WorkFailed(f"could not load {model} in {precision} on {device}: {one_line(e)}") from e
    return loaded.eval(), tokenizer


def heldout_text() -> str:
    return HELDOUT_PATH.read_text(encoding="utf-8")


def window_nll(model: Any, input_ids: Any, max_length: int = 512, stride: int = 256) -> tuple[float, int]:
    """Sliding-window negative log-likelihood: (sum over scored tokens, number of scored tokens).

    Window k covers tokens [k*stride, k*stride + max_length); its labels are -100 on the tokens an
    earlier window already scored, so each token from the second on is predicted exactly once. (With
    stride == max_length the windows do not overlap and each window's first token goes unscored.)"""
    import torch

    if not 0 < stride <= max_length:
        raise BadInput(f"need 0 < stride <= max_length, got stride {stride}, max_length {max_length}")
    ids = input_ids.to(model.device)
    seq_len = ids.size(1)
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        window = ids[:, begin:end]
        labels = window.clone()
        labels[:, : prev_end - begin] = -100  # context only: scored by the previous window
        with torch.inference_mode():
            logits = model(window).logits.float()
        # position t predicts token t+1: shift, then mask the context
        targets = labels[:, 1:]
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        keep = targets != -100
        picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        total += float(-(picked[keep]).sum())
        count += int(keep.sum())
        prev_end = end
        if end == seq_len:
            break
    return total, count


def perplexity(model: Any, tokenizer: Any, text: str, max_length: int = 512, stride: int = 256) -> float:
    """exp(mean negative log-likelihood per token) of `text`, scored with a sliding window."""
    input_ids = tokenizer(text, return_tensors="pt").input_ids
    if input_ids.size(1) < 2:
        raise BadInput("perplexity needs a text of at least two tokens")
    total, count = window_nll(model, input_ids, max_length=max_length, stride=stride)
    return math.exp(total / count)


def _chat_inputs(model: Any, tokenizer: Any, question: str) -> dict[str, Any]:
    encoded = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)  # fmt: skip
    return {k: v.to(model.device) for k, v in encoded.items()}


def _greedy(model: Any, tokenizer: Any, inputs: dict[str, Any], new_tokens: int, exact: bool) -> Any:
    import torch

    with torch.inference_mode():
        return model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens if exact else None,
                              do_sample=False, temperature=None, top_p=None, top_k=None,
                              pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)  # fmt: skip


def tokens_per_second(model: Any, tokenizer: Any, new_tokens: int = 32) -> float:
    """Greedy decoding speed at batch 1: exactly `new_tokens` new tokens (EOS is held off by
    min_new_tokens) over the wall time of `generate`, prefill of the short prompt included."""
    if new_tokens < 1:
        raise BadInput(f"new_tokens must be at least 1, got {new_tokens}")
    inputs = _chat_inputs(model, tokenizer, SPEED_PROMPT)
    _greedy(model, tokenizer, inputs, 4, exact=True)  # warm-up: lazy init, allocator, kernels
    _sync(model)
    start = time.perf_counter()
    output = _greedy(model, tokenizer, inputs, new_tokens, exact=True)
    _sync(model)
    seconds = time.perf_counter() - start
    produced = output.size(1) - inputs["input_ids"].size(1)
    return produced / seconds


def _sync(model: Any) -> None:
    import torch

    if model.device.type == "cuda":
        torch.cuda.synchronize()


def answer(model: Any, tokenizer: Any, question: str = SANITY_QUESTION, new_tokens: int = 12) -> str:
    inputs = _chat_inputs(model, tokenizer, question)
    output = _greedy(model, tokenizer, inputs, new_tokens, exact=False)
    return tokenizer.decode(output[0, inputs["input_ids"].size(1) :], skip_special_tokens=True).strip()


def measure(precision: str, model: str = DEFAULT_CHAT_MODEL, new_tokens: int = 32) -> dict[str, Any]:
    """Load one precision, measure it, free it: footprint, perplexity, speed, and one answer."""
    import torch

    check_precision(precision)
    start = time.perf_counter()
    loaded, tokenizer = load(precision, model)
    load_seconds = time.perf_counter() - start
    try:
        row = {"precision": precision, "footprint_mb": loaded.get_memory_footprint() / 2**20,
               "perplexity": perplexity(loaded, tokenizer, heldout_text()),
               "tokens_per_second": tokens_per_second(loaded, tokenizer, new_tokens=new_tokens),
               "load_seconds": load_seconds, "device": loaded.device.type,
               "answer": answer(loaded, tokenizer)}  # fmt: skip
    finally:
        del loaded
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return row


def run(precisions: Sequence[str] = PRECISIONS, model: str = DEFAULT_CHAT_MODEL,
        on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Measure each precision in turn (one model in memory at a time); the report."""
    for precision in precisions:
        check_precision(precision)  # fail before the first load, not after it
    rows = []
    for precision in precisions:
        row = measure(precision, model)
        rows.append(row)
        if on_row:
            on_row(row)
    from stage5_serving_ops.provenance import provenance

    return {"model": str(model), "provenance": provenance(model), "device": default_device(),
            "heldout": HELDOUT_PATH.name, "rows": rows}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Rounded weights: the quality of a precision, served by any engine


def round_weights(model: Any, precision: str = "nf4") -> int:
    """Round, in place, every weight that `load_in_4bit` would quantize (each nn.Linear but the LM head)
    through `precision` and back, with bitsandbytes' own functions; the number of weights rounded."""
    import torch
    from bitsandbytes import functional as bnb

    rounded = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head"):
                weight = module.weight.data
                packed, state = bnb.quantize_4bit(
                    weight, blocksize=64, quant_type=precision, compress_statistics=True
                )
                module.weight.data = bnb.dequantize_4bit(packed, state).to(weight.dtype)
                rounded += weight.numel()
    return rounded


def save_rounded(precision: str, out: Path, model: str = DEFAULT_CHAT_MODEL) -> Path:
    """A model folder whose weights went through `precision` (nf4 or fp4) and back to float.

    Every weight bitsandbytes would quantize (the linear layers of the transformer blocks: not the
    embedding, the tied LM head or the norms) is quantized exactly as `load_in_4bit` does it
    (blocks of 64, double-quantized absmax) and dequantized again, then saved as a plain fp32
    model. Served by vLLM, which has no bitsandbytes kernels on a CPU, it answers with NF4's
    rounding errors at fp32's memory and speed: a way to test what a precision does to *quality*
    (the gate's `nf4-weights` regression) on any engine. `provenance.json` records what was done.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from stage5_serving_ops.provenance import PROVENANCE_FILE, provenance

    hf_logging.disable_progress_bar()
    if precision not in ("nf4", "fp4"):
        raise BadInput(f"rounded weights are made for nf4 or fp4, got {precision!r}")
    source = resolve(model, kind="chat")
    loaded = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    rounded = round_weights(loaded, precision)
    origin = provenance(model)
    with paths.atomic_directory(Path(out)) as tmp:
        loaded.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
        info = {"source": f"{origin['source']}, then {precision.upper()}-rounded (bitsandbytes quantize_4bit, "
                          f"blocks of 64, double quantization) and stored as fp32",
                "started_as": origin["started_as"], "rounded_weights": rounded,
                "total_weights": sum(p.numel() for p in loaded.parameters())}  # fmt: skip
        (tmp / PROVENANCE_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return Path(out)


def table_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """One row per precision, formatted for printing under TABLE_COLUMNS."""
    return [(r["precision"], f"{r['footprint_mb']:.0f}", f"{r['perplexity']:.2f}", f"{r['tokens_per_second']:.1f}",
             r["answer"]) for r in report["rows"]]  # fmt: skip


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    labels = [r["precision"] for r in rows]
    colors = ["#4c72b0", "#8172b3", "#dd8452", "#55a868", "#c44e52"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, title, fmt in ((axes[0], "footprint_mb", "weights in memory (MB)", "%.0f"),
                                (axes[1], "perplexity", "perplexity on held-out text (lower is better)", "%.2f"),
                                (axes[2], "tokens_per_second", "greedy decoding (tokens/s, batch 1)", "%.1f")):  # fmt: skip
        bars = ax.bar(
            labels, [r[key] for r in rows], color=[colors[i % len(colors)] for i in range(len(rows))]
        )
        ax.bar_label(bars, fmt=fmt)
        ax.margins(y=0.15)  # room for the labels above the tallest bar
        ax.set_title(title, fontsize=10)
    source = report.get("provenance", {}).get("source", "")
    fig.suptitle(f"{report['model']} ({source}) on {report['device']}: memory, quality and speed by precision",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    paths.atomic_savefig(fig, path, dpi=110)
    return path


def write_report(report: dict[str, Any], out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write stage5_quantization.json and .png (to reports/ by default); their paths."""
    out = Path(out_dir) if out_dir is not None else paths.reports_dir()
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "stage5_quantization.json"
    paths.atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    return json_path, plot(report, out / "stage5_quantization.png")
