"""Grammars for tool calls: what the model is allowed to write, and proof that it fits.

SmolLM2-135M was never trained to call tools: asked for JSON it invents tool names and writes
"adabu_adabu" where a title should be. A grammar takes those choices away. At every decoding step
a token mask (xgrammar) allows only the tokens that keep the output inside the grammar, so what
comes out is, by construction, one call to a listed tool with arguments its schema accepts:

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "23*47"}}
    </tool_call>

The grammar here is an xgrammar *structural tag*: one tag per allowed tool (its begin string fixes
the tool's name, its content is the tool's JSON schema as a grammar), `stop_after_first`, so
exactly one call.
The same JSON goes to two places: in process it is compiled into the mask that decoding.py
applies; over HTTP it is sent to vLLM as `response_format={"type": "structural_tag", ...}` and
vLLM applies the identical grammar on the server. "Answer in words" is a candidate like the tools,
a pseudo-tool named `answer` with no arguments, so choosing to answer is also a choice inside
the grammar (the answer itself is then written freely, see agent.py).

Two things make a grammar-constrained call *good*, not just valid, and safe to run:

1. **Grounding.** A free `"type": "string"` still lets a small model write nonsense, so each free
   string is limited to an `enum` of the 1-3 word spans of what the user wrote ("Lisbon", "Ada
   Lovelace"; up to 8 words for a text such as a note): the model only chooses which span. Numbers are limited to the numbers in the
   conversation (the user's words and the tool results, so a second call can use the first one's
   result). Enums are narrowed to the values the user mentions. Strings never come from tool
   results: an injected instruction cannot become an argument.
2. **Bounds.** A grammar that allows an endless string lets greedy decoding run out of tokens in
   the middle of one, leaving a call that is not even JSON (it happened: `"1250*100% + 387*100% -
   ...` until the budget ran out). Here every string has a bounded shape (an enum, `maxLength`, or
   a pattern whose repetitions are all bounded), numbers are enums or bounded integers, the separators
   are fixed (`", "`, `": "`), so the longest text the grammar allows can be computed:
   `call_token_budget` counts its bytes, and no token is shorter than a byte. Generation with that
   many tokens cannot be cut mid-call.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from typing import Any

from stage2_prompting_tools.routing import DIRECT_ANSWER

CALL_BEGIN = '<tool_call>\n{"name": "'  # then the tool's name
CALL_ARGUMENTS = '", "arguments": '  # then the arguments object
CALL_END = "}\n</tool_call>"
ANSWER_SPEC = {"type": "function", "function": {
    "name": DIRECT_ANSWER, "description": "Answer the user in words, with no tool.",
    "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}}  # fmt: skip
MAX_NUMBERS = 24  # at most this many numbers from the conversation become a number's enum
INTEGER_BOUND = 10**9  # a number the conversation does not mention: an integer of at most 10 digits
MAX_ITEMS = 4  # arrays get at most this many items
LONG_SPAN_WORDS = 8  # a text argument (a string with maxLength) is a span of up to this many words
WHITESPACE = 1  # slack for a space around each separator (the grammar fixes them: ", " and ": ")


# --------------------------------------------------------------------------------------------
# Grounding: the schema narrowed to what the conversation says


def message_spans(text: str, max_words: int = 3) -> list[str]:
    """Every run of 1..max_words consecutive words of the message, punctuation trimmed.

    Example: "Weather in Lisbon?" -> ["Weather", "Weather in", "Weather in Lisbon", "in", "in Lisbon", "Lisbon"]
    """
    words = re.findall(r"[\w'().&/-]+", text)
    spans: list[str] = []
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


def request_text(messages: Sequence[dict[str, Any]], turns: int = 2) -> str:
    """The user's request: the last `turns` user messages, so a follow-up ("and in Paris?") keeps
    its context. Router and grounding both read this."""
    users = [m["content"] for m in messages if m["role"] == "user" and isinstance(m.get("content"), str)]
    return "\n".join(users[-turns:])


def conversation_numbers(messages: Sequence[dict[str, Any]]) -> list[int | float]:
    """The numbers in the user's messages and in tool results, in order of appearance, no repeats.

    Example: [user "Convert 5 mi to km", tool "5 mi = 8.0467 km"] -> [5, 8.0467]
    """
    numbers: list[int | float] = []
    for m in messages:
        if m["role"] in ("user", "tool") and isinstance(m.get("content"), str):
            for text in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?", m["content"]):
                value = float(text) if "." in text else int(text)
                if value not in numbers and abs(value) < INTEGER_BOUND:
                    numbers.append(value)
    return numbers[-MAX_NUMBERS:]


def grounded_schema(parameters: dict[str, Any], messages: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The tool's schema narrowed to the conversation, and bounded everywhere.

    Example: "How much is 250 USD in EUR?" -> amount in [250]; from/to_currency in ["USD", "EUR"]
    """
    request = request_text(messages)
    context = {"spans": message_spans(request), "long_spans": message_spans(request, LONG_SPAN_WORDS),
               "words": re.findall(r"[\w/]+", request),
               "numbers": conversation_numbers(messages)}  # fmt: skip
    return _ground(copy.deepcopy(parameters), context)


def _ground(schema: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    # EXERCISE stage2.ground_schema: enum -> the values of 3+ characters the request mentions (if any); a string without a pattern -> enum of the request's spans (up to 8 words when it has a maxLength); number/integer -> enum of the conversation's numbers (integers only for integer), else bounded integer; array -> maxItems; object -> every property grounded and required
    schema.pop("default", None)
    kind = schema.get("type")
    if "enum" in schema:
        words = context["words"]
        mentioned = sorted({v for v in schema["enum"] if isinstance(v, str) and len(v) >= 3 and v in words},
                           key=words.index)  # fmt: skip
        if mentioned:
            schema["enum"] = mentioned
    elif kind == "string" and "pattern" not in schema and context["spans"]:
        # a free string: a span of the request; a longer text (maxLength), a longer span of it
        limit = schema.get("maxLength")
        schema["enum"] = ([s for s in context["long_spans"] if len(s) <= limit] or context["long_spans"][:1]
                          if limit else context["spans"])  # fmt: skip
    elif kind == "string" and "pattern" not in schema:
        schema["maxLength"] = min(schema.get("maxLength", 64), 64)  # nothing to ground in: a short string
    elif kind in ("number", "integer"):
        numbers = [n for n in context["numbers"] if kind == "number" or isinstance(n, int)]
        if numbers:
            schema["enum"] = numbers
        else:
            schema.update(type="integer", minimum=-INTEGER_BOUND, maximum=INTEGER_BOUND)
    elif kind == "array":
        schema["maxItems"] = min(schema.get("maxItems", MAX_ITEMS), MAX_ITEMS)
        schema["items"] = _ground(schema.get("items", {"type": "string"}), context)
    elif kind == "object":
        properties = schema.get("properties", {})
        for name, prop in properties.items():
            properties[name] = _ground(prop, context)
        schema["required"] = list(properties)  # a complete call: every argument given
        schema["additionalProperties"] = False
    return schema
    # END EXERCISE


def grounded_tools(
    specs: Sequence[dict[str, Any]], messages: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """OpenAI tool specs with grounded parameters (what the grammar, and a server, will enforce)."""
    out = []
    for spec in specs:
        fn = spec["function"]
        out.append(
            {
                "type": "function",
                "function": {**fn, "parameters": grounded_schema(fn["parameters"], messages)},
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# The grammar: one tag per allowed tool, exactly one call


def call_format(tools: Sequence[dict[str, Any]], text_tokens: int | None = None) -> dict[str, Any]:
    """The structural tag for one call to one of `tools`, as JSON (what vLLM's response_format takes).

    With `text_tokens`, the alternative "words, no call" is allowed too (tool_choice="auto"): any text
    without "<tool_call>" in it, at most that many tokens.
    """
    tags = [{"type": "tag", "begin": f"{CALL_BEGIN}{t['function']['name']}{CALL_ARGUMENTS}",
             "content": {"type": "grammar", "grammar": json_grammar(t["function"]["parameters"])},
             "end": CALL_END} for t in tools]  # fmt: skip
    calls: dict[str, Any] = {"type": "tags_with_separator", "tags": tags, "separator": "",
                             "at_least_one": True, "stop_after_first": True}  # fmt: skip
    if text_tokens is None:
        return {"type": "structural_tag", "format": calls}
    words = {"type": "any_text", "excludes": ["<tool_call>"], "max_tokens": text_tokens}
    return {"type": "structural_tag", "format": {"type": "or", "elements": [calls, words]}}


def json_grammar(schema: dict[str, Any]) -> str:
    """The schema as an EBNF grammar (xgrammar's converter) with fixed separators, `{"a": 1, "b": 2}`:
    no optional whitespace, so nothing about the layout is left to the model."""
    import xgrammar

    return str(xgrammar.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False))


def call_token_budget(tools: Sequence[dict[str, Any]]) -> int:
    """Tokens enough for the longest call the grammar allows (plus the end-of-sequence token)."""
    longest = max(len(f"{CALL_BEGIN}{t['function']['name']}{CALL_ARGUMENTS}".encode()) + len(CALL_END.encode())
                  + max_json_bytes(t["function"]["parameters"]) for t in tools)  # fmt: skip
    return longest + 1


class Unbounded(ValueError):
    """A schema (or pattern) that allows arbitrarily long text: no token budget can hold it."""


def max_json_bytes(schema: dict[str, Any], where: str = "arguments") -> int:
    """The most UTF-8 bytes of any JSON text the grammar allows for `schema` (whitespace included).

    Example: {"type": "object", "properties": {"city": {"enum": ["Lisbon", "Paris"]}}} -> 2+8+2+8+4 = 24
    """
    ws = 2 * WHITESPACE  # a whitespace run may sit on each side of a separator
    if "const" in schema:
        return _json_bytes(schema["const"])
    if "enum" in schema:
        return max(_json_bytes(v) for v in schema["enum"])
    kind = schema.get("type")
    if kind == "boolean":
        return 5
    if kind == "null":
        return 4
    if kind == "integer" and "minimum" in schema and "maximum" in schema:
        return max(len(str(int(schema["minimum"]))), len(str(int(schema["maximum"]))))
    if kind == "string" and "pattern" in schema:
        return 2 + max_regex_bytes(schema["pattern"])
    if kind == "string" and "maxLength" in schema:
        return 2 + 4 * int(
            schema["maxLength"]
        )  # the grammar's string characters exclude escapes; 4-byte UTF-8
    if kind == "array" and "maxItems" in schema:
        item = max_json_bytes(schema.get("items", {}), f"{where}[]")
        return 2 + ws + int(schema["maxItems"]) * (item + 1 + ws)
    if kind == "object":
        properties = schema.get("properties", {})
        if schema.get("additionalProperties", True) is not False and not properties:
            raise Unbounded(f"{where}: an object that allows any properties has no bound")
        return 2 + ws + sum(_json_bytes(k) + 1 + ws + max_json_bytes(v, f"{where}.{k}") + 1 + ws
                            for k, v in properties.items())  # fmt: skip
    raise Unbounded(f"{where}: {json.dumps(schema)[:80]} allows text of any length")


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode())


def max_regex_bytes(pattern: str) -> int:
    """The most UTF-8 bytes a string matching `pattern` can have (escaped as JSON), from the regex's parse tree.

    Example: r"^[0-9]{1,10}(\\.[0-9]{1,4})?$" -> 15 ; r"^[a-z]+$" -> Unbounded
    """
    from re import _constants as c
    from re import _parser as parser

    def char_bytes(items: list[tuple[Any, Any]]) -> int:
        worst = 1
        for op, arg in items:
            if op in (c.NEGATE, c.CATEGORY):
                return 6  # may match any character, a quote or a control character: "\\u0000"
            high = arg[1] if op is c.RANGE else arg
            worst = max(worst, 2 if chr(high) in '"\\' else len(chr(high).encode()))
        return worst

    def walk(tree: Any) -> int:
        total = 0
        for op, arg in tree:
            if op is c.LITERAL:
                total += char_bytes([(op, arg)])
            elif op is c.IN:
                total += char_bytes(arg)
            elif op in (c.ANY, c.NOT_LITERAL):
                total += 6
            elif op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
                low, high, sub = arg
                if high is c.MAXREPEAT:
                    raise Unbounded(f"pattern {pattern!r} has an unbounded repetition (*, + or {{n,}})")
                total += high * walk(sub)
            elif op is c.SUBPATTERN:
                total += walk(arg[-1])
            elif op is c.BRANCH:
                total += max(walk(branch) for branch in arg[1])
            elif op is c.AT:
                continue
            else:
                raise Unbounded(f"pattern {pattern!r}: cannot bound {op}")
        return total

    return walk(parser.parse(pattern))


def decision_tools(shortlist: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The candidates the model chooses among: the shortlisted tools and "answer"."""
    return [*shortlist, ANSWER_SPEC]
