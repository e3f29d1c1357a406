"""Constrained decoding: valid tool calls from a model too small to be trusted with JSON.

Large models were trained to emit tool calls; SmolLM2-135M was not. Asked for JSON it writes
JSON-ish text, invents tool names, and fills string arguments with junk. Three levers, each
measured on the shipped 36-task suite by `make bench` (reports/stage2_tools.json):

1. **Choosing the tool.** Two ways, and the numbers decide between them. *Likelihood*: list the
   tools in the prompt with one example call each (one per tool, so none is favoured), then ask the
   model how likely the reply `{"tool": "NAME",` is for each listed name, one short forward pass per
   candidate over a shared, cached prompt. *Routing*: compare the question's embedding (the bundled
   MiniLM) with each tool's example questions and take the closest, a semantic router in miniature.
   Measured here: routing picks the right tool on 33 of 36 tasks, likelihood on none (the 135M model
   always finds "just answer" likelier) and on 25 when it only chooses among the router's top two.
   So routing is the default, and the small model does what it does well: fill in the arguments.
   Either way the choice is always a listed tool: nothing else is ever scored.
2. **Constraining the arguments with a grammar.** xgrammar compiles the chosen tool's JSON schema into
   a token mask applied at every step of `generate` (a Transformers logits processor), so the output
   is always a JSON object the schema accepts: the right keys, numbers where numbers go, enum values
   where enums go, patterns honoured, then EOS.
3. **Giving free-text strings a vocabulary.** `"type": "string"` still lets a small model write
   nonsense ("adabu_adabu"); restricting such a string to an `enum` of the 1-3 word spans of the
   user's own message ("Lisbon", "Ada Lovelace") leaves it only the choice of which span, which it
   makes well.

The result is a `ChatModel`: `chat(messages, tools=...)` returns a `ChatResponse` with
`tool_calls`, like an OpenAI-compatible server would, so agent.py runs the same loop on both.
After a tool result comes back, the model answers in free text from the question and the result.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import time
from collections.abc import Sequence
from typing import Any

import torch

from shared.chat import ChatResponse, LocalChatModel, ToolCall, Usage
from stage2_prompting_tools.prompts import continuation_logprobs

# One example call per tool, used both as few-shot examples in the prompt and as the embedding
# router's description of the tool. Never taken from the evaluation suite.
TOOL_EXAMPLES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "calculator": [("What is 12 times 7?", {"expression": "12*7"}),
                   ("How much is 300 minus 45 plus 18?", {"expression": "300-45+18"})],
    "convert_units": [("How many feet are in 3 meters?", {"value": 3, "from_unit": "m", "to_unit": "ft"}),
                      ("Convert 20 degrees Celsius to Fahrenheit", {"value": 20, "from_unit": "C", "to_unit": "F"})],
    "current_time": [("What time is it in Berlin now?", {"timezone": "Europe/Berlin"}),
                     ("Tell me the current time in New York", {"timezone": "America/New_York"})],
    "get_weather": [("Is it raining in London right now?", {"city": "London"}),
                    ("How warm is it in Madrid today?", {"city": "Madrid"})],
    "wiki_summary": [("Who was Isaac Newton?", {"title": "Isaac Newton"}),
                     ("Tell me about the Eiffel Tower", {"title": "Eiffel Tower"})],
    "convert_currency": [("How many euros is 40 GBP?", {"amount": 40, "from_currency": "GBP", "to_currency": "EUR"}),
                         ("Convert 15 USD to JPY", {"amount": 15, "from_currency": "USD", "to_currency": "JPY"})],
}  # fmt: skip
SELECTIONS = ("router", "likelihood", "hybrid")  # hybrid: the model chooses among the router's top k
DIRECT_ANSWER = "answer"  # the candidate meaning "no tool: answer directly"
DIRECT_EXAMPLES = ["Hello! How are you?", "Write a short poem about spring."]


def message_spans(text: str, max_words: int = 3) -> list[str]:
    """Every run of 1..max_words consecutive words of the message, punctuation trimmed.

    Example: "Weather in Lisbon?" -> ["Weather", "Weather in", "Weather in Lisbon", "in", "in Lisbon", "Lisbon"]
    """
    words = re.findall(r"[\w'().&-]+", text)
    spans = []
    for i in range(len(words)):
        for n in range(1, max_words + 1):
            if i + n <= len(words):
                span = _balanced(" ".join(words[i : i + n]).strip(".'"))
                if span and span not in spans:
                    spans.append(span)
    return spans


def _balanced(span: str) -> str:
    """Trim unmatched parentheses at the ends: "language)" -> "language", "(programming" -> "programming"."""
    while span.endswith(")") and span.count(")") > span.count("("):
        span = span[:-1]
    while span.startswith("(") and span.count("(") > span.count(")"):
        span = span[1:]
    return span.strip(".'")


def grounded_schema(parameters: dict[str, Any], question: str) -> dict[str, Any]:
    """The tool's schema grounded in the question: each free string (no enum, no pattern) limited to
    spans of the question, and each enum limited to the values the question mentions, if any (values
    of three or more characters only: "in" or "m" are too ambiguous to spot in a sentence).

    Example: "How much is 250 USD in EUR?" -> from_currency and to_currency in ["USD", "EUR"]
    """
    schema = copy.deepcopy(parameters)
    spans = message_spans(question)
    words = re.findall(r"[\w/]+", question)
    for prop in schema.get("properties", {}).values():
        if prop.get("type") == "string" and "enum" not in prop and "pattern" not in prop and spans:
            prop["enum"] = spans
        elif "enum" in prop:
            mentioned = sorted({v for v in prop["enum"] if len(str(v)) >= 3 and v in words}, key=words.index)
            if mentioned:
                prop["enum"] = mentioned
        prop.pop("default", None)
    schema["required"] = list(schema.get("properties", {}))  # a complete call, every argument given
    return schema


class ConstrainedToolModel:
    """The in-process model behind agent.py: a listed tool, and arguments its schema accepts."""

    def __init__(self, model: LocalChatModel | str = "smollm2-135m-instruct", selection: str = "router",
                 router_top_k: int = 2, constrain_arguments: bool = True):  # fmt: skip
        assert selection in SELECTIONS, f"selection must be one of {SELECTIONS}, got {selection!r}"
        self.chat_model = model if isinstance(model, LocalChatModel) else LocalChatModel(model)
        self.name = f"{self.chat_model.name}+constrained"
        self.tokenizer, self.model = self.chat_model.tokenizer, self.chat_model.model
        self.selection, self.router_top_k, self.constrain_arguments = (
            selection,
            router_top_k,
            constrain_arguments,
        )

    # ----------------------------------------------------------------------------- the prompt

    def system_prompt(self, tools: Sequence[dict]) -> str:
        lines = ["You call tools. Reply with one JSON object and nothing else:",
                 '{"tool": NAME, "arguments": {...}} to call a tool, or {"answer": TEXT} if no tool fits.',
                 "Tools:"]  # fmt: skip
        for spec in tools:
            fn = spec["function"]
            args = ", ".join(
                f"{k}: {v.get('type', 'any')}" for k, v in fn["parameters"]["properties"].items()
            )
            lines.append(f"- {fn['name']}({args}): {fn['description']}")
        return "\n".join(lines)

    def prompt_messages(self, question: str, tools: Sequence[dict]) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system_prompt(tools)}]
        names = [t["function"]["name"] for t in tools]
        for name in names:  # one example per tool, in the listed order: balanced few-shot
            if name in TOOL_EXAMPLES:
                example, arguments = TOOL_EXAMPLES[name][0]
                messages += [
                    {"role": "user", "content": example},
                    {"role": "assistant", "content": json.dumps({"tool": name, "arguments": arguments})},
                ]
        messages += [{"role": "user", "content": DIRECT_EXAMPLES[0]},
                     {"role": "assistant", "content": json.dumps({"answer": "Hello! I am fine, thank you."})},
                     {"role": "user", "content": question}]  # fmt: skip
        return messages

    # ----------------------------------------------------------------------------- choosing the tool

    @functools.cached_property
    def encoder(self) -> Any:
        from shared.models import load_embedder

        return load_embedder()

    def route(self, question: str, names: Sequence[str]) -> dict[str, float]:
        """Cosine similarity of the question to each tool's examples (max over examples)."""
        texts = {n: [q for q, _ in TOOL_EXAMPLES.get(n, [])] or [n.replace("_", " ")] for n in names}
        texts[DIRECT_ANSWER] = DIRECT_EXAMPLES
        flat = [(n, t) for n, ts in texts.items() for t in ts]
        vectors = self.encoder.encode([question] + [t for _, t in flat], normalize_embeddings=True)
        scores: dict[str, float] = {}
        for (n, _), v in zip(flat, vectors[1:], strict=True):
            scores[n] = max(scores.get(n, -1.0), float(vectors[0] @ v))
        return scores

    def likelihoods(self, prompt_ids: list[int], candidates: Sequence[str]) -> dict[str, float]:
        """log P(reply starts with the candidate's JSON) for each candidate, over one cached prefill."""
        texts = ['{"answer": "' if n == DIRECT_ANSWER else f'{{"tool": "{n}",' for n in candidates]
        values = continuation_logprobs(self.model, self.tokenizer, prompt_ids, texts)
        return dict(zip(candidates, values, strict=True))

    def select(self, question: str, tools: Sequence[dict]) -> tuple[str, dict[str, Any]]:
        """The chosen candidate (a tool name or DIRECT_ANSWER) and the scores that chose it."""
        names = [t["function"]["name"] for t in tools]
        # EXERCISE stage2.select_tool: router: the candidate most similar to the question (self.route); hybrid: the model's likeliest of the router's top k tools unless answering ranks first; likelihood: the likeliest of all
        info: dict[str, Any] = {}
        candidates = [*names, DIRECT_ANSWER]
        if self.selection in ("router", "hybrid"):
            similarity = self.route(question, names)
            info["similarity"] = similarity
            ranked = sorted(candidates, key=lambda n: similarity[n], reverse=True)
            if self.selection == "router" or ranked[0] == DIRECT_ANSWER:
                return ranked[0], info
            # the model decides among the router's best tools (answering directly was ranked lower)
            candidates = [n for n in ranked if n != DIRECT_ANSWER][: self.router_top_k]
        prompt_ids = self.chat_model.encode(self.prompt_messages(question, tools))
        info["likelihood"] = self.likelihoods(prompt_ids, candidates)
        return max(candidates, key=lambda n: info["likelihood"][n]), info
        # END EXERCISE

    # ----------------------------------------------------------------------------- the arguments

    @functools.cached_property
    def grammar_compiler(self) -> Any:
        import xgrammar

        info = xgrammar.TokenizerInfo.from_huggingface(
            self.tokenizer, vocab_size=self.model.config.vocab_size
        )
        return xgrammar.GrammarCompiler(info)

    @torch.inference_mode()
    def arguments(self, question: str, tools: Sequence[dict], name: str) -> tuple[str, int, int]:
        """Generate the arguments JSON for the chosen tool: (json text, prompt tokens, new tokens)."""
        from xgrammar.contrib.hf import LogitsProcessor

        spec = next(t["function"] for t in tools if t["function"]["name"] == name)
        prefix = f'{{"tool": "{name}", "arguments": '
        prompt_ids = self.chat_model.encode(self.prompt_messages(question, tools))
        prompt_ids += self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
        kwargs: dict[str, Any] = {}
        if self.constrain_arguments:
            schema = grounded_schema(spec["parameters"], question)
            grammar = self.grammar_compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
            kwargs["logits_processor"] = [LogitsProcessor(grammar)]  # one per generate call
        ids = torch.tensor([prompt_ids], device=self.model.device)
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=80,
                                  do_sample=False, temperature=None, top_p=None, top_k=None,
                                  pad_token_id=self.tokenizer.eos_token_id, **kwargs)  # fmt: skip
        new = out[0, len(prompt_ids) :].tolist()
        text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        if not self.constrain_arguments:  # free text: keep the first balanced {...}, whatever it is
            text = _first_object(text)
        return text, len(prompt_ids), len(new)

    # ----------------------------------------------------------------------------- the ChatModel

    def chat(self, messages: Sequence[dict[str, Any]], *, tools: list[dict] | None = None, max_tokens: int = 256,
             temperature: float = 0.0, **kwargs: Any) -> ChatResponse:  # fmt: skip
        start = time.perf_counter()
        question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        results = _tool_results_since(messages)
        if results or not tools:  # answer in free text, from the question and any tool results
            return self._answer(question, results, max_tokens, start)
        choice, _ = self.select(question, tools)
        if choice == DIRECT_ANSWER:
            return self._answer(question, [], max_tokens, start)
        arguments, prompt_tokens, new_tokens = self.arguments(question, tools, choice)
        return ChatResponse(text="", tool_calls=[ToolCall(name=choice, arguments=arguments)],
                            finish_reason="tool_calls", usage=Usage(prompt_tokens, new_tokens),
                            latency_s=time.perf_counter() - start, model=self.name)  # fmt: skip

    def _answer(
        self, question: str, results: list[tuple[str, str]], max_tokens: int, start: float
    ) -> ChatResponse:
        if results:
            facts = "\n".join(f"The {name} tool returned: {content}" for name, content in results)
            content = (
                f"Question: {question}\n{facts}\nAnswer the question in one sentence, stating that result."
            )
        else:
            content = question
        reply = self.chat_model.chat([{"role": "user", "content": content}], max_tokens=min(max_tokens, 96))
        reply.latency_s = time.perf_counter() - start
        return reply


def _tool_results_since(messages: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(tool name, content) of the tool messages after the last user message."""
    results: list[tuple[str, str]] = []
    for m in messages:
        if m["role"] == "user":
            results = []
        elif m["role"] == "tool":
            results.append((m.get("name", "tool"), m["content"]))
    return results


def _first_object(text: str) -> str:
    depth = 0
    for i, ch in enumerate(text):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0 and ch == "}":
            return text[: i + 1]
    return text
