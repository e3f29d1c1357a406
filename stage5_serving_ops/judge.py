"""An LLM judge whose verdicts always parse: Ragas' prompts, answered under a JSON schema by vLLM.

Ragas' faithfulness and answer relevancy ask an LLM to do small jobs and answer in JSON: split an
answer into statements; say for each statement whether the context supports it (a verdict 0 or 1);
write the question an answer would answer. Ragas describes the JSON it wants with a pydantic model
and parses the reply with it. A strong model follows the description; a 135M model mostly does not.
Asked in plain text, SmolLM2-135M answered these prompts with prose, copied the few-shot example,
or ran to its token limit without closing the JSON; every such reply is a judge failure, no score.

**Structured outputs** remove that failure: the server compiles the JSON schema into a grammar and,
at every decoding step, masks out the tokens that would break it (vLLM's grammar backends,
xgrammar or guidance; requested through the OpenAI API's `response_format={"type": "json_schema",
...}`, which works on vLLM's CPU build too). The reply is then valid JSON of the right shape by
construction. Three bounds are added to Ragas' schemas so that it is also *finite*: arrays hold at
most MAX_ITEMS items (and at least one statement: every answer states something), strings at most
MAX_CHARS characters, and the 0/1 fields (`verdict`, `noncommittal`) are an enum of 0 and 1. Without
them a small model under a grammar can keep adding list items until `max_tokens`, and the cut-off
JSON fails to parse after all.

What the grammar cannot do is make the judge *right*. A verdict that parses can still be a coin
flip. So a judge earns a say in the gate only by agreeing with labels: calibration.py scores a set
whose good and bad answers are known, and measures how often the judge ranks a good answer above a
bad one. The parse rate and that agreement are reported side by side, and they are different
things: this judge parses every time and agrees no better than its measured figure says.

    judge = StructuredJudge(base_url, "smollm2-135m-instruct", api_key)
    metric = ragas.metrics.collections.Faithfulness(llm=judge)
    judge.stats  # {"calls": ..., "parsed": ..., "failures": {...}}
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from shared.console import WorkFailed, one_line

# Ragas sends usage analytics unless told not to; the flag is read once, so set it before any import.
os.environ["RAGAS_DO_NOT_TRACK"] = "true"

MAX_ITEMS = 4  # statements per answer, verdicts per context
MAX_CHARS = 160  # characters per string in the judge's JSON
BINARY_FIELDS = ("verdict", "noncommittal")  # Ragas' 0/1 integers
JUDGE_MAX_TOKENS = 640  # above the longest reply the bounded schemas allow for this model's tokenizer
JUDGE_TIMEOUT_S = 300.0


class JudgeOutputError(ValueError):
    """The judge's reply was not a valid instance of the schema (cut off, or rejected by the server)."""


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """Replace every {"$ref": "#/$defs/X"} by a copy of X, so the schema is one self-contained tree."""
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            return _inline_refs(copy.deepcopy(defs[name]), defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def _bound(node: Any, name: str = "") -> None:
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind == "object":
        node["additionalProperties"] = False
        for key, child in node.get("properties", {}).items():
            _bound(child, key)
    elif kind == "array":
        node.setdefault("maxItems", MAX_ITEMS)
        if name == "statements":
            node.setdefault("minItems", 1)
        _bound(node.get("items"), "")
    elif kind == "string":
        node.setdefault("maxLength", MAX_CHARS)
    elif kind == "integer" and name in BINARY_FIELDS:
        node["enum"] = [0, 1]


def bounded_schema(response_model: type) -> dict[str, Any]:
    """The JSON schema of a pydantic model, self-contained and bounded (see the module's essay).

    Example: Ragas' NLIStatementOutput -> {"type": "object", "properties": {"statements": {"type": "array",
    "maxItems": 4, "minItems": 1, "items": {..., "verdict": {"type": "integer", "enum": [0, 1]}}}}, ...}
    """
    raw = response_model.model_json_schema()
    schema = _inline_refs(raw, raw.get("$defs", {}))
    _bound(schema)
    return schema


@dataclass
class JudgeStats:
    """calls: requests sent; replies: answers received; parsed: replies valid under the schema.
    The parse rate is parsed / replies: a dropped connection says nothing about the judge's JSON."""

    calls: int = 0
    replies: int = 0
    parsed: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    completion_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "replies": self.replies, "parsed": self.parsed, "failures": dict(self.failures),
                "parse_rate": self.parsed / self.replies if self.replies else None,
                "completion_tokens": self.completion_tokens}  # fmt: skip


def _base_class() -> type:
    from ragas.llms.base import InstructorBaseRagasLLM

    return InstructorBaseRagasLLM


class StructuredJudge(_base_class()):  # type: ignore[misc]
    """Ragas' LLM interface (`agenerate(prompt, response_model)`) over any OpenAI-compatible server,
    every reply constrained by the bounded schema of `response_model`, greedy (temperature 0)."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None,
                 max_tokens: int = JUDGE_MAX_TOKENS, timeout: float = JUDGE_TIMEOUT_S):  # fmt: skip
        self.base_url, self.model, self.max_tokens, self.timeout = base_url, model, max_tokens, timeout
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.stats = JudgeStats()
        self._clients: dict[int, tuple[Any, Any]] = {}

    def client(self) -> Any:
        """An AsyncOpenAI client for the running event loop: an HTTP connection belongs to the loop that
        opened it, and each `evaluate_set` runs a loop of its own."""
        import openai

        loop = asyncio.get_running_loop()
        held = self._clients.get(id(loop))
        if held is None or held[0] is not loop:  # (the loop is kept, so its id is not reused meanwhile)
            # max_retries=2: the client retries only a dropped connection, a 429 or a 5xx. Without it, 2 of
            # 120 calls failed with "Connection error." while the server logged nothing (most likely a
            # kept-alive connection it had just closed): nothing to do with the judge's verdicts.
            held = (loop, openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout,
                                             max_retries=2))  # fmt: skip
            self._clients[id(loop)] = held
        return held[1]

    async def agenerate(self, prompt: str, response_model: type) -> Any:
        import openai
        import pydantic

        schema = bounded_schema(response_model)
        self.stats.calls += 1
        try:
            reply = await self.client().chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": prompt}], temperature=0.0,
                max_tokens=self.max_tokens,
                response_format={"type": "json_schema",
                                 "json_schema": {"name": response_model.__name__, "schema": schema, "strict": True}},
            )  # fmt: skip
        except openai.APIStatusError as e:
            self.stats.failures[f"HTTP {e.status_code}"] += 1
            raise JudgeOutputError(
                f"the judge's server refused the request: {one_line(e.message)[:160]}"
            ) from None
        except openai.OpenAIError as e:  # connection lost, timed out: counted, and raised as they are
            self.stats.failures[type(e).__name__] += 1
            raise
        except asyncio.CancelledError:  # the caller's time limit for this metric ran out
            self.stats.failures["cancelled"] += 1
            raise
        self.stats.replies += 1
        choice = reply.choices[0]
        self.stats.completion_tokens += reply.usage.completion_tokens if reply.usage else 0
        if choice.finish_reason == "length":
            self.stats.failures["hit max_tokens"] += 1
            raise JudgeOutputError(f"the judge's reply was cut off at {self.max_tokens} tokens")
        try:
            parsed = response_model.model_validate_json(choice.message.content or "")
        except pydantic.ValidationError as e:
            self.stats.failures["invalid JSON"] += 1
            raise JudgeOutputError(
                f"the judge's reply does not fit the schema: {one_line(e)[:160]}"
            ) from None
        self.stats.parsed += 1
        return parsed

    def generate(self, prompt: str, response_model: type) -> Any:
        return asyncio.run(self.agenerate(prompt, response_model))


def check_judge(base_url: str, model: str | None, api_key: str | None) -> str:
    """Make sure the judge's server answers before scoring anything; the model name to use."""
    from stage5_serving_ops.server import served_model, served_models

    if model is None:
        return served_model(base_url, api_key, what="the judge")
    names = served_models(base_url, api_key, what="the judge")
    if model not in names:
        raise WorkFailed(f"the judge at {base_url} does not serve {model!r} (it serves {', '.join(names)})")
    return model
