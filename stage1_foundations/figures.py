"""Stage 1's measured figures, written into its README from the reports `make bench` leaves.

Each entry names a `<!-- NAME:start -->` ... `<!-- NAME:end -->` section of README.md, the report
it comes from, and the function that renders it; `python -m shared.figures` (`make figures`) calls
them, so the tables a learner reads are the numbers a run produced. `ASSETS` lists the plots copied
next to the README.
"""

from __future__ import annotations

from typing import Any


def bpe(r: dict[str, Any]) -> str:
    rows = "\n".join(f"| {p['merges']} | {p['bytes_per_token']:.2f} |" for p in r["curve"])
    return (
        f"Measured ({r['train_bytes']:,} bytes to train on, {r['test_bytes']:,} held out; {r['merges']} merges "
        f"learned in {r['train_seconds']:.1f} s):\n\n| merges | held-out bytes per token |\n|---:|---:|\n{rows}\n"
        f"| {r['model_tokenizer_merges']:,} (SmolLM2's own) | {r['model_tokenizer_bytes_per_token']:.2f} |\n\n"
        f"The first merges are worth the most (the commonest pairs go first); SmolLM2's 48,900 merges, "
        f"learned on a far larger corpus, compress this text {r['model_tokenizer_bytes_per_token'] / r['curve'][-1]['bytes_per_token']:.1f}x "
        f"better than our {r['merges']}. Fewer tokens per byte is a longer effective context and fewer "
        "decode steps for the same text."
    )  # fmt: skip


def parity(r: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {x['prompt']} | {x['tokens']} | {x['max_abs_diff_vs_sdpa']:.1e} | {x['max_abs_diff_vs_eager']:.1e} | "
        f"{x['argmax_agreement_vs_sdpa']:.0%} |"
        for x in r["logits"]
    )
    g = r["greedy"]
    batches = "; ".join(f"{b['engine']}: {b['same']} of {b['rows']} rows as alone, {b['near-tie']} near-ties, "
                        f"{b['different']} different" for b in r["batch"])  # fmt: skip
    return (
        "| prompt | tokens | max abs logit difference vs Transformers (sdpa) | vs Transformers (eager) | same argmax |\n"
        f"|---|---:|---:|---:|---:|\n{rows}\n\n"
        f"Greedy, {g['new_tokens']} new tokens: {g['same_cached']} of {g['prompts']} chat prompts give exactly "
        f"`generate`'s tokens with the static cache, {g['same_uncached']} of {g['uncached_prompts']} without. "
        f"A batch of {r['batch'][0]['rows']} chat prompts: {batches}. Against `eager`, which computes attention "
        "as we do (matmul, softmax, matmul), the logits agree to the last bit or nearly; against `sdpa`, "
        "a fused kernel that sums in another order, to a few 1e-5: float32 rounding, not a different model."
    )  # fmt: skip


def decode(r: dict[str, Any]) -> str:
    rate = {(x["method"], x["new_tokens"]): x["tokens_per_second"] for x in r["results"]}
    lengths = sorted({n for _, n in rate})
    rows = "\n".join(
        f"| {n} | {rate[('generate', n)]:.1f} | {rate[('loop+cache', n)]:.1f} | {rate[('loop-nocache', n)]:.1f} | "
        f"{rate[('scratch+static', n)]:.1f} | {r['scratch_vs_generate'][str(n)]:.2f}x | {r['uncached_slowdown'][str(n)]:.1f}x |"
        for n in lengths
    )  # fmt: skip
    sizes = sorted({x["batch"] for x in r["batch"]})
    batch = {(x["engine"], x["batch"]): x["tokens_per_second"] for x in r["batch"]}
    batch_rows = "\n".join(
        f"| {e} | " + " | ".join(f"{batch[(e, s)]:.1f}" for s in sizes) + f" | {r['batch_gain'][e]:.1f}x |"
        for e in ("hf", "scratch")
    )
    bf16 = ", ".join(f"{x['method']} {x['tokens_per_second']:.1f} tok/s" for x in r["bf16"]) or "not measured"
    mem = r["memory"]
    met = "; ".join(f"{name}: {'met' if ok else 'missed'}" for name, ok in r["targets"].items())
    return (
        f"Measured on {r['machine']} ({r['device']}, torch {r['torch']}, {r['dtype']}, a {r['prompt_tokens']}-token "
        f"prompt, best of {r['repeats']}):\n\n"
        "| new tokens | `generate` | loop + cache | loop, no cache | hand model + static cache | hand / generate | cache / no cache |\n"
        f"|---:|---:|---:|---:|---:|---:|---:|\n{rows}\n\n"
        f"Batches, {r['batch'][0]['new_tokens']} new tokens per prompt, aggregate tokens/second:\n\n"
        "| engine | " + " | ".join(f"batch {s}" for s in sizes) + f" | batch {sizes[-1]} / batch {sizes[0]} |\n"
        "|---|" + "---:|" * (len(sizes) + 1) + f"\n{batch_rows}\n\n"
        f"bf16 at batch 1: {bf16}.\n\n"
        f"**What bounds batch 1.** A decode step reads every weight once: "
        f"{mem['weight_bytes_read_per_token'] / 1e6:.0f} MB in fp32 (the tied head reads the whole embedding table). "
        f"This machine reads memory at {mem['read_bandwidth_gb_s']:.1f} GB/s (torch summing a 256 MiB tensor), so no "
        f"batch-1 decoder can pass {mem['batch1_ceiling_tokens_per_second']:.0f} tokens/s here; the rest of a "
        "step goes to per-operation overhead (30 layers x a dozen small kernels). A batch reads the same "
        "weights once for all its rows, which is why aggregate throughput grows with the batch until "
        f"arithmetic becomes the limit.\n\nTargets: {met}."
    )  # fmt: skip


SECTIONS = [("bpe", "stage1_bpe.json", bpe), ("parity", "stage1_parity.json", parity),
            ("decode", "stage1_decode.json", decode)]  # fmt: skip
ASSETS = ["stage1_decode.png", "stage1_bpe.png"]
