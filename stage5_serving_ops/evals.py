"""Evaluation gates: score answers with Ragas and fail the build when quality drops below a baseline.

A unit test asks "is this output exactly right?". A language model's answer is rarely exactly
anything, so an evaluation asks "how close is it, on average, over a fixed set of questions?" and a
gate turns that average into a yes or no: below the threshold, the build fails, the same way a
failing test does. The gate catches the regressions nobody looks for by hand: a new prompt that
makes answers vaguer, a chunker change that stops the right passage from being retrieved, a
quantized model that drifts.

Reference-based and reference-free metrics
------------------------------------------
A *reference-based* metric compares what the system did with what a person wrote down as right:

    non_llm_string_similarity   1 - normalised Levenshtein distance between answer and reference
                                (characters, case-sensitive: a paraphrase scores ~0.6-0.8, an
                                unrelated sentence ~0.2-0.3, the same text 1.0)
    semantic_similarity         cosine of the answer's and the reference's embeddings (MiniLM here):
                                meaning, not spelling; a paraphrase scores ~0.9
    non_llm_context_precision_with_reference
                                were the retrieved contexts the right ones, and ranked first?
                                (average precision; a retrieved context counts as relevant when its
                                string similarity to some reference context is at least 0.5)
    non_llm_context_recall      share of the reference contexts that some retrieved context matches

They need no model to judge, so they are cheap, deterministic and run anywhere, CI included. Their
price is the reference: someone has to write the right answer and mark the right passages, and a
string or embedding comparison still misses a correct answer phrased very differently.

A *reference-free* metric judges the output against the question and the retrieved contexts alone,
which is what you have in production, where no one wrote a reference:

    faithfulness                share of the answer's claims that the contexts support (hallucination)
    answer_relevancy            does the answer address the question (questions regenerated from the
                                answer, compared with the real one by embedding similarity)

Deciding whether a claim is "supported" needs language understanding, so Ragas asks an LLM.

LLM-as-judge, and how it fails at small scale
---------------------------------------------
The judge is itself a model, prompted with instructions, few-shot examples and a JSON schema, and
its JSON is parsed into verdicts. Strong judges agree with people fairly well; they are also biased
(towards longer answers, towards their own style) and not free. A small judge, such as this course's
135M SmolLM2, fails in plainer ways: it does not follow the few-shot format and writes prose instead
of JSON, it copies the example verbatim, it runs to the token limit without closing the JSON, or it
returns an empty list of claims. Each of those is a *failure*, not a score: counting it as 0 would
call a good answer bad, and dropping it silently would average over the easy cases only. So
`evaluate_set` counts failures per metric (`failed`) with their reasons (`failure_reasons`) and
averages only the scores that exist; a report with `faithfulness: 0.8` and `failed: 15 of 17` says
the judge could not judge, which is the true finding. The judge runs at temperature 0 (we bypass
Ragas' own 0.3 for the multi-sample relevancy prompt) so that a gate gives the same answer twice.

Thresholds come from a measured baseline
----------------------------------------
A threshold picked from thin air ("0.8 sounds good") either never fires or always does. Measure a
baseline instead: run the metrics on a set of answers you have checked and know to be good, set each
threshold below the measured value by a margin larger than the run-to-run noise, and check that a
deliberately bad set (wrong answers, shuffled contexts) falls below it: a gate that cannot tell the
two apart gates nothing. When the eval set or the metric changes, re-measure and move the threshold
in the same commit, with the numbers (see data/eval_thresholds.toml). A metric with no measured
baseline (here the LLM-judged ones: no capable judge was available to measure one) is reported but
not gated.

Inputs and outputs
------------------
data/eval_set.jsonl holds one record a line: {id, question, contexts, answer, reference,
reference_contexts}; stage 3's `export-eval` records ({question, contexts, answer, reference,
relevant, citations}) load too, and Ragas' own column names (user_input, retrieved_contexts,
response) are accepted. A record without what a metric needs (no reference_contexts, an empty
reference) is *skipped* for that metric, which is counted apart from failures.

    from stage5_serving_ops import evals
    result = evals.evaluate_set(evals.load_dataset())                 # no LLM
    result = evals.evaluate_set(records, judge_base_url="http://127.0.0.1:8000/v1")
    failures = evals.gate(result, evals.load_thresholds())            # [] means the gate passes
    evals.write_report(result)                                        # -> reports/stage5_eval.json

Ragas 0.4.3 notes: the no-LLM context metrics exist only as legacy `ragas.metrics` classes (the new
`ragas.metrics.collections` has none, although the deprecation warning says to import them from
there), so every metric here is a legacy class scored one sample at a time with
`single_turn_ascore`; `ragas.evaluate` (deprecated) would need every record to carry every column
and would turn errors into NaN without saying why. Cosine scores come back raw (an unrelated
answer measured -0.006) and are clamped to [0, 1]; context precision divides by (hits + 1e-10), so a
perfect retrieval reads 0.9999999999. Ragas records usage events (and writes a user id
under ~/.local/share/ragas) even with tracking off; `RAGAS_DO_NOT_TRACK=true`, set below before Ragas
is imported, keeps them from being sent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import os
import tomllib
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import BadInput, one_line

# Ragas sends usage analytics unless told not to; the flag is read once, so set it before any import.
os.environ["RAGAS_DO_NOT_TRACK"] = "true"

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_DATASET = DATA_DIR / "eval_set.jsonl"
DEFAULT_THRESHOLDS = DATA_DIR / "eval_thresholds.toml"
REPORT_NAME = "stage5_eval.json"

NO_LLM_METRICS = (
    "non_llm_context_precision_with_reference",
    "non_llm_context_recall",
    "non_llm_string_similarity",
    "semantic_similarity",
)
JUDGE_METRICS = ("faithfulness", "answer_relevancy")
CONTEXT_METRICS = NO_LLM_METRICS[:2]
ALL_METRICS = NO_LLM_METRICS + JUDGE_METRICS

# What each metric needs from a record (non-empty); a record without it is skipped for that metric.
NEEDS = {
    "non_llm_context_precision_with_reference": ("reference_contexts",),
    "non_llm_context_recall": ("reference_contexts",),
    "non_llm_string_similarity": ("reference",),
    "semantic_similarity": ("reference",),
    "faithfulness": ("contexts", "answer"),
    "answer_relevancy": ("answer",),
}

# The judge: enough tokens for a few claims in JSON; a judge that runs past them has failed.
JUDGE_MAX_TOKENS = 768
JUDGE_TIMEOUT_S = 300.0  # one metric on one record, retries included
JUDGE_CONCURRENCY = 4  # requests in flight; a vLLM server batches them


# ------------------------------------------------------------------------------------------------
# The dataset


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# Stage 3's export and Ragas' own column names, mapped to ours. (Stage 3 writes question, contexts,
# answer, reference under our names already, plus `relevant` topic labels and the `citations` its
# answer drew on, which no metric here can use: they are kept under "meta".)
ALIASES = {
    "user_input": "question",
    "retrieved_contexts": "contexts",
    "response": "answer",
    "ground_truth": "reference",
}


def normalize_record(raw: Any, where: str, index: int) -> dict[str, Any]:
    """One record in our shape, or BadInput saying what is wrong and `where` (e.g. "line 3")."""
    if not isinstance(raw, dict):
        raise BadInput(f"{where}: expected a JSON object, got {_type_name(raw)}")
    data = dict(raw)
    for alias, name in ALIASES.items():
        if alias in data and name not in data:
            data[name] = data.pop(alias)
    for name in ("question", "contexts", "answer", "reference"):
        if name not in data:
            raise BadInput(f"{where}: missing field {name!r} (need question, contexts, answer, reference)")
    for name in ("question", "answer", "reference"):
        if not isinstance(data[name], str):
            raise BadInput(f"{where}: {name!r} must be a string, got {_type_name(data[name])}")
    if not data["question"].strip():
        raise BadInput(f"{where}: 'question' is empty")
    reference_contexts = data.get("reference_contexts")
    for name, value in (("contexts", data["contexts"]), ("reference_contexts", reference_contexts or [])):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadInput(f"{where}: {name!r} must be a list of strings, got {json.dumps(value)[:60]}")
    record_id = data.get("id", f"record-{index + 1}")
    if not isinstance(record_id, str | int):
        raise BadInput(f"{where}: 'id' must be a string or an integer, got {_type_name(record_id)}")
    known = {"id", "question", "contexts", "answer", "reference", "reference_contexts", "meta"}
    meta = data["meta"] if isinstance(data.get("meta"), dict) else {}  # a record we normalised before
    return {
        "id": str(record_id),
        "question": data["question"],
        "contexts": list(data["contexts"]),
        "answer": data["answer"],
        "reference": data["reference"],
        "reference_contexts": list(reference_contexts) if reference_contexts else None,
        "meta": {**meta, **{k: v for k, v in data.items() if k not in known}},
    }


def load_dataset(path: str | os.PathLike[str] = DEFAULT_DATASET) -> list[dict[str, Any]]:
    """Records from a JSONL file (ours, stage 3's export, or Ragas column names); BadInput names the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"no eval dataset at {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read {path}: {one_line(e)}") from None
    records: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInput(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        record = normalize_record(raw, where, len(records))
        if record["id"] in seen:
            raise BadInput(f"{where}: id {record['id']!r} already used on line {seen[record['id']]}")
        seen[record["id"]] = number
        records.append(record)
    if not records:
        raise BadInput(f"{path} holds no records")
    return records


# ------------------------------------------------------------------------------------------------
# Ragas pieces


@contextmanager
def _quiet_ragas() -> Iterator[None]:
    """Ragas warns that its legacy classes are deprecated and logs every judge parse error; we count
    and report those ourselves, so keep stderr for what the learner needs."""
    logger = logging.getLogger("ragas")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def minilm_embeddings(model: Any = None) -> Any:
    """The bundled all-MiniLM-L6-v2 as Ragas embeddings: the legacy interface (embed_query /
    embed_documents, used by answer_relevancy) plus `aembed_text` (used by semantic_similarity)."""
    from ragas.embeddings.base import BaseRagasEmbeddings
    from ragas.run_config import RunConfig

    class MiniLMEmbeddings(BaseRagasEmbeddings):
        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.encoder = encoder
            self.vectors: dict[str, list[float]] = {}  # Ragas embeds one text at a time: batch ahead
            self.set_run_config(RunConfig())

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            missing = list(dict.fromkeys(t for t in texts if t not in self.vectors))
            if missing:
                vectors = self.encoder.encode(missing, batch_size=32, normalize_embeddings=True,
                                              show_progress_bar=False, convert_to_numpy=True)  # fmt: skip
                self.vectors.update(zip(missing, vectors.tolist(), strict=True))
            return [self.vectors[t] for t in texts]

        def embed_query(self, text: str) -> list[float]:
            return self.embed_documents([text])[0]

        async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
            return self.embed_documents(texts)

        async def aembed_query(self, text: str) -> list[float]:
            return self.embed_query(text)

        async def aembed_text(self, text: str, **kwargs: Any) -> list[float]:
            return self.embed_query(text)

    if model is None:
        from shared.models import load_embedder

        model = load_embedder()
    return MiniLMEmbeddings(model)


def check_judge(base_url: str, model: str | None, api_key: str | None) -> str:
    """Make sure the judge's server answers before scoring anything; the model name to use."""
    from stage5_serving_ops.server import served_model, served_models

    if model is None:
        return served_model(base_url, api_key, what="the judge")
    served_models(base_url, api_key, what="the judge")
    return model


def _api_key(api_key: str | None) -> str:
    return api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"


def build_judge(
    base_url: str, model: str, api_key: str | None = None, timeout: float = JUDGE_TIMEOUT_S
) -> Any:
    """A Ragas LLM over any OpenAI-compatible chat server (vLLM, OpenAI): LangChain's ChatOpenAI in
    Ragas' LangchainLLMWrapper. Plain chat completions, parsed by Ragas' own JSON extraction with its
    fix-the-format retry, which is what a small model needs most (llm_factory's Instructor path asks
    the server for tool calls or JSON mode, which a vLLM server may not enable)."""
    from langchain_openai import ChatOpenAI
    from ragas.llms import LangchainLLMWrapper

    chat = ChatOpenAI(base_url=base_url, api_key=_api_key(api_key), model=model, temperature=0,
                      max_tokens=JUDGE_MAX_TOKENS, timeout=timeout, max_retries=0, use_responses_api=False)  # fmt: skip
    with _quiet_ragas():
        return LangchainLLMWrapper(chat, run_config=judge_run_config(timeout), bypass_temperature=True)


def judge_run_config(timeout: float = JUDGE_TIMEOUT_S) -> Any:
    """Ragas retries a failed request (connection, HTTP error) up to max_retries times with backoff;
    its defaults (10 tries, up to 60 s apart) would spend minutes on a dead server. A bad answer is
    retried not here but by Ragas' fix-the-format prompt."""
    from ragas.run_config import RunConfig

    return RunConfig(timeout=int(timeout), max_retries=2, max_wait=5)


def build_metrics(
    embeddings: Any, judge: Callable[[], Any] | None = None, run_config: Any = None
) -> dict[str, Any]:
    """Metric name -> a Ragas metric object. `judge` builds one LLM per judged metric: Ragas'
    wrapper sets `n` and the temperature on the shared LangChain object for each call, so two
    metrics sharing one would race (relevancy asks for 3 samples, faithfulness for 1). `metric.init`
    hands `run_config` to the judge, replacing the one it was built with."""
    with _quiet_ragas():
        from ragas.metrics import (
            Faithfulness,
            NonLLMContextPrecisionWithReference,
            NonLLMContextRecall,
            NonLLMStringSimilarity,
            ResponseRelevancy,
            SemanticSimilarity,
        )

        metrics: dict[str, Any] = {
            "non_llm_context_precision_with_reference": NonLLMContextPrecisionWithReference(),
            "non_llm_context_recall": NonLLMContextRecall(),
            "non_llm_string_similarity": NonLLMStringSimilarity(),
            "semantic_similarity": SemanticSimilarity(embeddings=embeddings),
        }
        if judge is not None:
            metrics["faithfulness"] = Faithfulness(llm=judge())
            metrics["answer_relevancy"] = ResponseRelevancy(llm=judge(), embeddings=embeddings)
    for name, metric in metrics.items():
        assert metric.name == name, (metric.name, name)
        metric.init(run_config or judge_run_config())
    return metrics


def to_sample(record: dict[str, Any]) -> Any:
    from ragas.dataset_schema import SingleTurnSample

    return SingleTurnSample(user_input=record["question"], retrieved_contexts=record["contexts"],
                            response=record["answer"], reference=record["reference"],
                            reference_contexts=record["reference_contexts"])  # fmt: skip


def failure_reason(error: BaseException) -> str:
    """A short, countable name for why a metric produced no score."""
    from ragas.exceptions import LLMDidNotFinishException, RagasOutputParserException

    if isinstance(error, RagasOutputParserException):
        return "unparseable judge output"
    if isinstance(error, LLMDidNotFinishException):
        return "judge hit its token limit (finish_reason=length)"
    if isinstance(error, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    if type(error).__name__ == "ValidationError":  # pydantic: JSON of the wrong shape
        return "judge output of the wrong shape"
    return f"{type(error).__name__}: {one_line(error)[:120]}"


async def _score_all(jobs: list[tuple[str, Any, Any]], timeout: float,
                     on_done: Callable[[], None] | None) -> list[tuple[float | None, str | None]]:  # fmt: skip
    """Run (name, metric, sample) jobs, a few at a time; each gives (score, None) or (None, reason)."""
    gate = asyncio.Semaphore(JUDGE_CONCURRENCY)

    async def one(name: str, metric: Any, sample: Any) -> tuple[float | None, str | None]:
        async with gate:
            try:
                value = await metric.single_turn_ascore(sample, timeout=timeout)
            except Exception as e:  # a judge's bad day must not end the evaluation
                outcome: tuple[float | None, str | None] = (None, failure_reason(e))
            else:
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    value = math.nan
                if math.isfinite(value):
                    # Cosine-based scores (semantic_similarity, answer_relevancy) come back raw and dip
                    # just below 0 for unrelated texts (-0.006 measured); the documented range is [0, 1].
                    outcome = (min(max(value, 0.0), 1.0), None)
                elif name in JUDGE_METRICS:
                    outcome = (None, "no score (NaN): the judge found no claims or questions")
                else:
                    outcome = (None, "no score (NaN)")
            if on_done:
                on_done()
            return outcome

    return await asyncio.gather(*(one(*job) for job in jobs))


def _run(coro_factory: Callable[[], Any]) -> Any:
    """asyncio.run, also from code that already runs an event loop (a notebook, a server)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(coro_factory())).result()


def _applies(name: str, record: dict[str, Any]) -> bool:
    return all(record[field] for field in NEEDS[name])


# ------------------------------------------------------------------------------------------------
# Evaluate


def evaluate_set(
    records: Sequence[dict[str, Any]],
    judge_base_url: str | None = None,
    judge_model: str | None = None,
    api_key: str | None = None,
    *,
    embedder: Any = None,
    on_done: Callable[[], None] | None = None,
    timeout: float = JUDGE_TIMEOUT_S,
) -> dict[str, Any]:
    """Score `records` with the no-LLM metrics, and with the judged ones when a judge server is given.

    Returns {"n", "metrics": {name: mean or None}, "per_record": [{"id", "question", "scores",
    "failures"}], "failed": {name: count}, "failure_reasons": {name: {reason: count}},
    "skipped": {name: count}, "judge": {"base_url", "model"} or None}. A mean covers the records that
    got a score; `failed` counts records that should have and did not, `skipped` those that lack
    the inputs. `embedder` is a SentenceTransformer (default: the bundled MiniLM); `on_done` is
    called after each (metric, record) score, for a progress bar.

    Example: evaluate_set(load_dataset())["metrics"]["semantic_similarity"] -> 0.9...
    """
    records = [normalize_record(r, f"record {i + 1}", i) for i, r in enumerate(records)]
    if not records:
        raise BadInput("no records to evaluate")
    judge_info = None
    judge_factory = None
    if judge_base_url:
        model = check_judge(judge_base_url, judge_model, api_key)
        judge_info = {"base_url": judge_base_url, "model": model}

        def judge_factory() -> Any:
            return build_judge(judge_base_url, model, api_key, timeout)

    with _quiet_ragas():
        embeddings = minilm_embeddings(embedder)
        # One batched encode instead of two single ones per record: the same vectors in a fraction of
        # the time. (semantic_similarity embeds " " for an empty text; answer_relevancy the question.)
        fields = ("answer", "reference", "question") if judge_factory else ("answer", "reference")
        embeddings.embed_documents([r[f] or " " for r in records for f in fields])
        metrics = build_metrics(embeddings, judge_factory, judge_run_config(timeout))
        jobs, where = [], []
        skipped: Counter[str] = Counter()
        nothing_retrieved = []
        for i, record in enumerate(records):
            sample = to_sample(record)
            for name, metric in metrics.items():
                if not _applies(name, record):
                    skipped[name] += 1
                elif name in CONTEXT_METRICS and not record["contexts"]:
                    nothing_retrieved.append((i, name))  # Ragas' recall would fail on max([])
                else:
                    jobs.append((name, metric, sample))
                    where.append((i, name))
        outcomes = _run(lambda: _score_all(jobs, timeout, on_done))
    # Retrieving nothing when there was something to find: precision and recall are both 0.
    where += nothing_retrieved
    outcomes += [(0.0, None)] * len(nothing_retrieved)

    per_record = [{"id": r["id"], "question": r["question"], "scores": dict.fromkeys(metrics), "failures": {}}
                  for r in records]  # fmt: skip
    reasons: dict[str, Counter[str]] = {name: Counter() for name in metrics}
    for (i, name), (value, reason) in zip(where, outcomes, strict=True):
        per_record[i]["scores"][name] = value
        if reason is not None:
            per_record[i]["failures"][name] = reason
            reasons[name][reason] += 1
    means = {}
    for name in metrics:
        values = [p["scores"][name] for p in per_record if p["scores"][name] is not None]
        means[name] = sum(values) / len(values) if values else None
    return {
        "n": len(records),
        "metrics": means,
        "per_record": per_record,
        "failed": {name: sum(reasons[name].values()) for name in metrics},
        "failure_reasons": {name: dict(reasons[name]) for name in metrics if reasons[name]},
        "skipped": {name: skipped[name] for name in metrics},
        "judge": judge_info,
    }


# ------------------------------------------------------------------------------------------------
# Gate


def load_thresholds(path: str | os.PathLike[str] = DEFAULT_THRESHOLDS) -> dict[str, dict[str, Any]]:
    """{metric: {"min": float or None, "required": bool, "max_failed_fraction": float or None}}
    from a TOML file of [metrics.<name>] tables (see data/eval_thresholds.toml) or the same as JSON."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except FileNotFoundError:
        raise BadInput(f"no thresholds file at {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:  # TOMLDecodeError and JSONDecodeError too
        raise BadInput(f"cannot read thresholds from {path}: {one_line(e)}") from None
    table = raw.get("metrics") if isinstance(raw, dict) else None
    if not isinstance(table, dict) or not table:
        raise BadInput(f"{path}: expected [metrics.<name>] tables")
    thresholds = {}
    for name, spec in table.items():
        if name not in ALL_METRICS:
            raise BadInput(f"{path}: unknown metric {name!r} (known: {', '.join(ALL_METRICS)})")
        if not isinstance(spec, dict):
            raise BadInput(f"{path}: metrics.{name} must be a table")
        entry = {"min": spec.get("min"), "required": spec.get("required", False),
                 "max_failed_fraction": spec.get("max_failed_fraction")}  # fmt: skip
        for key in ("min", "max_failed_fraction"):
            value = entry[key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not 0 <= value <= 1):  # fmt: skip
                raise BadInput(f"{path}: metrics.{name}.{key} must be a number in [0, 1], got {value!r}")
        if not isinstance(entry["required"], bool):
            raise BadInput(f"{path}: metrics.{name}.required must be true or false")
        thresholds[name] = entry
    return thresholds


def gate(result: dict[str, Any], thresholds: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The failures of the gate: [{"metric", "value", "threshold", "reason"}]; empty means it passes.

    A metric fails when its mean is below its `min`; when it is `required` and has no mean (not
    run, skipped on every record, or failed on every record); or when more than
    `max_failed_fraction` of the records it applied to gave no score. An optional metric that was
    not run (no judge given) is not a failure.
    """
    failures = []
    for name, spec in thresholds.items():
        value = result["metrics"].get(name)
        if value is not None and not math.isfinite(value):
            value = None
        failed = result.get("failed", {}).get(name, 0)
        skipped = result.get("skipped", {}).get(name, 0)
        if value is None:
            if spec.get("required"):
                if name not in result["metrics"]:
                    why = "required but not run" + (
                        " (needs a judge: --base-url)" if name in JUDGE_METRICS else ""
                    )
                else:
                    why = f"required but no record got a score ({failed} failed, {skipped} skipped)"
                failures.append({"metric": name, "value": None, "threshold": spec.get("min"), "reason": why})
            continue
        if spec.get("min") is not None and value < spec["min"]:
            failures.append({"metric": name, "value": value, "threshold": spec["min"],
                             "reason": f"{value:.3f} is below the threshold {spec['min']}"})  # fmt: skip
        limit = spec.get("max_failed_fraction")
        applied = result["n"] - skipped
        if limit is not None and applied and failed / applied > limit:
            failures.append({"metric": name, "value": value, "threshold": spec.get("min"),
                             "reason": f"no score on {failed} of {applied} records (allowed: {limit:.0%})"})  # fmt: skip
    return failures


def write_report(result: dict[str, Any], out_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write `result` (plus anything the caller added, such as the gate's failures) to
    <out_dir or reports/>/stage5_eval.json atomically."""
    out = Path(out_dir) if out_dir is not None else paths.reports_dir()
    text = json.dumps(_finite(result), indent=2, ensure_ascii=False, allow_nan=False, default=str) + "\n"
    return paths.atomic_write_text(out / REPORT_NAME, text)


def _finite(value: Any) -> Any:
    """NaN and infinities (not valid JSON) become null, at any depth."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
