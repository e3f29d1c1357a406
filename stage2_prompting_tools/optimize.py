"""Programmatic prompt optimization with DSPy: let an optimizer choose the few-shot examples.

prompts.py compares prompt designs a person wrote. DSPy turns the prompt into a *program*: you
declare what goes in and what comes out (a Signature), a module (Predict) renders it into messages
through an adapter, and an optimizer ("teleprompter") fills in the parts worth searching over, here
the demonstrations, by running the program on training data and keeping what works:

    Signature   message: str  ->  intent: one of the six intents
    Predict     the ChatAdapter renders instructions, fields and demos as chat turns with
                "[[ ## intent ## ]]" headers, and parses the reply back into a typed field
    optimizer   knn:       KNNFewShot picks, for each input, the k training examples nearest to it
                           (embedded with the bundled MiniLM), so the demos fit the question
                labeled:   LabeledFewShot picks k training examples at random (seeded)
                bootstrap: BootstrapFewShot runs a teacher (the program with labeled demos) over
                           the training set and keeps the traces the metric accepts, so every demo
                           is one the model itself got right in this format; the rest are labeled.
                           With a weak teacher this skews the demos toward the labels it already
                           gets right, which the table shows.

The model behind it is ours, not a hosted API: `chat_lm` wraps any `shared.chat` model (the
in-process SmolLM2 or an OpenAI-compatible server) as a `dspy.LM` through DSPy's engine interface,
`complete(Request) -> Response`, which is what DSPy 3.4 asks custom models to implement instead of
subclassing `BaseLM.forward`. Unlike prompts.py, the model here *generates* its answer, so a reply
that breaks the format counts as wrong and is reported as unparsed: part of what a prompt buys.

    python -m stage2_prompting_tools optimize                  # the bench records how long (seconds.dspy)
    python -m stage2_prompting_tools classify "My card was charged twice"
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from shared import paths
from shared.console import BadInput
from stage2_prompting_tools.prompts import INTENTS, fixed_examples, load_intents

os.environ.setdefault("DSPY_CACHEDIR", str(paths.cache_dir() / "dspy"))  # never ~/.dspy_cache
import dspy  # noqa: E402  (after the cache location is set)
from dspy.lm15 import Message, Response, Usage, response_to_events  # noqa: E402

dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
logging.getLogger("dspy.clients.lm").setLevel(logging.ERROR)  # truncated replies are counted as unparsed

PROGRAM_FORMAT = "llm-roadmap/intent-program/1"
OPTIMIZERS = ("knn", "bootstrap", "labeled")
SHOTS = 6  # the same number of demos as the hand-written few-shot prompt, so the comparison is fair
MAX_TOKENS = 32  # "[[ ## intent ## ]]\nfeature_request\n\n[[ ## completed ## ]]" is about 20 tokens


def default_program_path() -> Path:
    return paths.artifacts_dir() / "stage2" / "intent_program.json"


# ---------------------------------------------------------------------------------------------
# The model: a DSPy engine over shared.chat


class ChatEngine:
    """DSPy's engine contract over any shared.chat model: one canonical request in, one response out.

    Example: dspy.LM("local/smollm2", engine=ChatEngine(LocalChatModel()), cache=False)
    """

    def __init__(self, chat_model: Any):
        self.chat_model = chat_model
        self.calls = 0

    def complete(self, request: Any) -> Response:
        messages = []
        if request.system is not None:
            system = (
                request.system if isinstance(request.system, str) else "".join(p.text for p in request.system)
            )
            messages.append({"role": "system", "content": system})
        messages += [{"role": m.role, "content": m.text or ""} for m in request.messages]
        config = request.config
        reply = self.chat_model.chat(
            messages,
            max_tokens=config.max_tokens or MAX_TOKENS,
            temperature=config.temperature or 0.0,
            stop=list(config.stop) or None,
        )
        self.calls += 1
        usage = reply.usage
        return Response(
            id=None,
            model=str(getattr(self.chat_model, "name", "chat-model")),
            message=Message.assistant(reply.text),
            finish_reason="length" if reply.finish_reason == "length" else "stop",
            usage=Usage(
                input_tokens=usage.prompt_tokens,
                output_tokens=usage.completion_tokens,
                total_tokens=usage.prompt_tokens + usage.completion_tokens,
            ),  # fmt: skip
        )

    def stream(self, request: Any) -> Any:
        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass


def chat_lm(chat_model: Any, max_tokens: int = MAX_TOKENS) -> dspy.LM:
    """A dspy.LM (a BaseLM) whose calls go to `chat_model`: greedy, uncached, one attempt.

    `chat_model` is a shared.chat model, or a ChatEngine over one when the caller counts its calls.
    """
    engine = chat_model if isinstance(chat_model, ChatEngine) else ChatEngine(chat_model)
    name = str(getattr(engine.chat_model, "name", "chat-model")).replace("/", "-")
    return dspy.LM(f"local/{name}", engine=engine, cache=False, temperature=0.0, max_tokens=max_tokens,
                   num_retries=0)  # fmt: skip


def adapter() -> dspy.ChatAdapter:
    # No silent second call in another format when a reply does not parse: we want to count those.
    return dspy.ChatAdapter(use_json_adapter_fallback=False)


# ---------------------------------------------------------------------------------------------
# The program


class SupportIntent(dspy.Signature):
    """Sort a customer-support message into exactly one intent."""

    message: str = dspy.InputField(desc="what the customer wrote")
    intent: Literal[INTENTS] = dspy.OutputField()  # type: ignore[valid-type]


def example(row: dict[str, str]) -> dspy.Example:
    return dspy.Example(message=row["text"], intent=row["intent"]).with_inputs("message")


def zero_shot_program() -> dspy.Predict:
    return dspy.Predict(SupportIntent)


def hand_written_program(train: Sequence[dict[str, str]]) -> dspy.Predict:
    """The few-shot prompt a person would write: one example per intent, the same for every input."""
    program = zero_shot_program()
    program.demos = [example(r) for r in fixed_examples(train, SHOTS)]
    return program


def exact_intent(gold: dspy.Example, prediction: Any, trace: Any = None) -> bool:
    return getattr(prediction, "intent", None) == gold.intent


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """DSPy's optimizers print and draw progress bars, even once per KNN prediction: keep our output clean."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def embedder() -> dspy.Embedder:
    from shared.models import load_embedder

    return dspy.Embedder(lambda texts: load_embedder().encode(list(texts), normalize_embeddings=True,
                                                             show_progress_bar=False))  # fmt: skip


def knn_program(train: Sequence[dict[str, str]], shots: int = SHOTS) -> dspy.Predict:
    """The zero-shot program, given the `shots` training examples nearest to each input as demos."""
    teleprompter = dspy.KNNFewShot(k=shots, trainset=[example(r) for r in train], vectorizer=embedder(),
                                   max_bootstrapped_demos=0, max_labeled_demos=shots)  # fmt: skip
    program = teleprompter.compile(zero_shot_program())
    program.knn = {"k": shots, "train": [{"text": r["text"], "intent": r["intent"]} for r in train]}
    return program


def optimize(
    lm: dspy.LM,
    train: Sequence[dict[str, str]],
    optimizer: str = "knn",
    seed: int = 0,
    max_bootstrapped: int = 4,
    shots: int = SHOTS,
) -> dspy.Predict:
    """Compile the zero-shot program into a few-shot one chosen by `optimizer` on `train`."""
    if optimizer not in OPTIMIZERS:
        raise BadInput(f"unknown optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if optimizer == "knn":  # nothing to search at compile time: the demos are chosen per input
        return knn_program(train, shots)
    trainset = [example(r) for r in train]
    # the shipped file is grouped by intent, and bootstrapping walks it in order
    random.Random(seed).shuffle(trainset)
    if optimizer == "labeled":
        teleprompter: Any = dspy.LabeledFewShot(k=shots)
    else:
        teleprompter = dspy.BootstrapFewShot(metric=exact_intent, max_bootstrapped_demos=max_bootstrapped,
                                             max_labeled_demos=shots, max_errors=len(trainset) + 1)  # fmt: skip
    with dspy.context(lm=lm, adapter=adapter()), quiet():
        return teleprompter.compile(zero_shot_program(), trainset=trainset)


# ---------------------------------------------------------------------------------------------
# Predictions, accuracy, and the saved program


def predict(program: dspy.Predict, lm: dspy.LM, text: str) -> str | None:
    """The program's intent for `text`, or None when the reply did not parse into one of the intents."""
    from dspy.utils.exceptions import AdapterParseError

    with dspy.context(lm=lm, adapter=adapter()), quiet():
        try:
            return program(message=text).intent
        except AdapterParseError:
            return None


def evaluate(program: dspy.Predict, lm: dspy.LM, rows: Sequence[dict[str, str]],
             on_row: Callable[[], None] | None = None) -> dict[str, Any]:  # fmt: skip
    predictions = []
    for row in rows:
        predictions.append(predict(program, lm, row["text"]))
        if on_row:
            on_row()
    correct = sum(p == r["intent"] for p, r in zip(predictions, rows, strict=True))
    return {"n": len(rows), "accuracy": correct / len(rows),
            "unparsed": sum(p is None for p in predictions) / len(rows), "predictions": predictions}  # fmt: skip


def save_program(program: dspy.Predict, path: Path, **metadata: Any) -> Path:
    """Write the program (instructions and demos) as JSON, atomically."""
    document = {"format": PROGRAM_FORMAT, **metadata, "state": program.dump_state()}
    if getattr(program, "knn", None):  # demos are chosen per input: keep what chooses them
        document["knn"] = program.knn
    return paths.atomic_write_text(Path(path), json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def load_program(path: Path) -> dspy.Predict:
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"no saved program at {path}; run `python -m stage2_prompting_tools optimize` first")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{path} is not valid JSON ({e})") from None
    if not isinstance(document, dict) or document.get("format") != PROGRAM_FORMAT:
        raise BadInput(f"{path} is not a saved intent program (expected format {PROGRAM_FORMAT!r})")
    try:
        if "knn" in document:
            return knn_program(document["knn"]["train"], document["knn"]["k"])
        program = zero_shot_program()
        program.load_state(document["state"])
    except (KeyError, TypeError, ValueError) as e:
        raise BadInput(f"{path} holds a damaged program state ({type(e).__name__}: {e})") from None
    return program


def demo_texts(program: dspy.Predict) -> list[dict[str, str]]:
    if getattr(program, "knn", None):
        return []  # chosen per input
    return [{"message": d["message"], "intent": d["intent"]} for d in program.demos]


def optimization_table(
    chat_model: Any,
    optimizer: str = "knn",
    splits: Sequence[str] = ("dev", "test"),
    limit: int | None = None,
    out: Path | None = None,
    on_row: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Zero-shot vs hand-written few-shot vs optimized, each scored on `splits` from real predictions."""
    engine = ChatEngine(chat_model)
    lm = chat_lm(engine)
    train = load_intents("train")
    start = time.perf_counter()
    optimized = optimize(lm, train, optimizer)
    optimize_s, optimizer_calls = time.perf_counter() - start, engine.calls
    out = Path(out) if out else default_program_path()
    save_program(optimized, out, optimizer=optimizer, model=str(getattr(chat_model, "name", "")))
    programs = {"zero-shot": zero_shot_program(), "hand-written 6-shot": hand_written_program(train),
                f"optimized ({optimizer})": optimized}  # fmt: skip
    rows = []
    for split in splits:
        data = load_intents(split)[:limit]
        for name, program in programs.items():
            result = evaluate(program, lm, data, on_row)
            rows.append({"program": name, "split": split, "n": result["n"], "accuracy": result["accuracy"],
                         "unparsed": result["unparsed"]})  # fmt: skip
    return {"optimizer": optimizer, "program_path": str(out), "optimize_seconds": optimize_s,
            "optimizer_calls": optimizer_calls, "demos": demo_texts(optimized), "rows": rows}  # fmt: skip


def rows_in_table(splits: Sequence[str] = ("dev", "test"), limit: int | None = None) -> int:
    return 3 * sum(len(load_intents(s)[:limit]) for s in splits)


def optimization_rows_table(report: dict[str, Any]) -> Any:
    """The accuracy table of an optimization report: one row per program, a column per split."""
    from shared.console import table

    splits = list(dict.fromkeys(r["split"] for r in report["rows"]))
    programs = list(dict.fromkeys(r["program"] for r in report["rows"]))
    cell = {(r["program"], r["split"]): r for r in report["rows"]}
    return table("DSPy programs: intent accuracy (unparsed replies)", ["program", *splits],
                 [(p, *(f"{cell[p, s]['accuracy']:.0%} ({cell[p, s]['unparsed']:.0%})" for s in splits))
                  for p in programs])  # fmt: skip
