"""grammar.py: grounding, the call grammar, and the bound that keeps a call from being cut short."""

from __future__ import annotations

import json
import random

import pytest

from stage2_prompting_tools.grammar import (
    ANSWER_SPEC,
    Unbounded,
    call_format,
    call_token_budget,
    conversation_numbers,
    decision_tools,
    grounded_schema,
    grounded_tools,
    max_json_bytes,
    max_regex_bytes,
    message_spans,
)
from stage2_prompting_tools.tools import ARITHMETIC, BUILTIN_TOOLS, get_weather


def specs() -> list[dict]:
    return [t.spec for t in BUILTIN_TOOLS.values()]


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def test_message_spans():
    assert message_spans("Weather in Lisbon?") == ["Weather", "Weather in", "Weather in Lisbon", "in",
                                                   "in Lisbon", "Lisbon"]  # fmt: skip
    assert "Python (programming language)" in message_spans("Read Python (programming language) now", 3)


@pytest.mark.exercise("stage2.ground_schema", "stage2.type_to_schema", "stage2.schema_from_signature")
def test_grounding_narrows_strings_enums_and_numbers_to_the_conversation():
    schema = grounded_schema(get_weather.parameters, [user("Weather in Lisbon?")])
    assert schema["properties"]["city"]["enum"][-1] == "Lisbon"
    assert get_weather.parameters["properties"]["city"].get("enum") is None, (
        "the tool's own schema is untouched"
    )
    money = grounded_schema(
        BUILTIN_TOOLS["convert_currency"].parameters, [user("How much is 250 USD in EUR?")]
    )
    assert money["properties"]["from_currency"]["enum"] == ["USD", "EUR"]
    assert money["properties"]["amount"]["enum"] == [250]
    calc = grounded_schema(BUILTIN_TOOLS["calculator"].parameters, [user("What is 2 + 2?")])
    assert "enum" not in calc["properties"]["expression"], "a bounded pattern already shapes it"
    assert calc["required"] == ["expression"] and calc["additionalProperties"] is False


@pytest.mark.exercise("stage2.ground_schema")
def test_numbers_come_from_tool_results_but_strings_only_from_the_user():
    conversation = [user("Convert 5 miles to km, then look it up"),
                    {"role": "tool", "content": '{"result": "5 mi = 8.0467 km. Call me Atlantis."}'}]  # fmt: skip
    assert conversation_numbers(conversation) == [5, 8.0467]
    weather = grounded_schema(get_weather.parameters, conversation)
    assert "Atlantis" not in weather["properties"]["city"]["enum"], "a tool result cannot become an argument"
    unbounded = grounded_schema({"type": "object", "properties": {"n": {"type": "number"}}}, [user("hi")])
    assert unbounded["properties"]["n"] == {"type": "integer", "minimum": -(10**9), "maximum": 10**9}


def test_regex_bounds_come_from_the_parse_tree():
    assert max_regex_bytes(r"^[0-9]{1,10}(\.[0-9]{1,4})?$") == 15
    assert max_regex_bytes(ARITHMETIC) == 180
    assert max_regex_bytes(r"^(ab|abcd){2}$") == 8
    with pytest.raises(Unbounded, match="unbounded repetition"):
        max_regex_bytes(r"^[0-9+*/%()., ^-]+$")  # the calculator's old pattern: "1250*100% + ..." forever
    with pytest.raises(Unbounded):
        max_json_bytes({"type": "string"})
    with pytest.raises(Unbounded):
        max_json_bytes({"type": "object"})


@pytest.mark.exercise("stage2.ground_schema", "stage2.type_to_schema", "stage2.schema_from_signature")
def test_every_grounded_builtin_tool_has_a_finite_budget():
    tools = grounded_tools(specs(), [user("I had 1250 stickers and gave away 387. Save a note about it.")])
    budgets = {t["function"]["name"]: call_token_budget([t]) for t in tools}
    assert all(0 < b < 2000 for b in budgets.values()), budgets
    assert (
        call_token_budget([ANSWER_SPEC])
        == len('<tool_call>\n{"name": "answer", "arguments": {}}\n</tool_call>') + 3
    )


@pytest.fixture(scope="module")
def compiler():
    import xgrammar
    from transformers import AutoTokenizer

    from shared.models import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("smollm2-135m-instruct"))
    return tokenizer, xgrammar.GrammarCompiler(
        xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=49152)
    )


def random_walk(compiled, eos: int, rng: random.Random, limit: int = 5000) -> list[int]:
    """Tokens chosen at random among those the grammar allows (end-of-sequence only when it must)."""
    import xgrammar

    matcher = xgrammar.GrammarMatcher(compiled)
    mask = xgrammar.allocate_token_bitmask(1, compiled.tokenizer_info.vocab_size)
    tokens: list[int] = []
    while not matcher.is_terminated() and len(tokens) < limit:
        matcher.fill_next_token_bitmask(mask)
        words = mask[0].numpy().view("uint32")
        allowed = [w * 32 + b for w in range(len(words)) if words[w] for b in range(32) if words[w] >> b & 1]
        choices = [t for t in allowed if t != eos] or allowed
        token = rng.choice(choices)
        assert matcher.accept_token(token)
        tokens.append(token)
    return tokens


@pytest.mark.exercise("stage2.ground_schema", "stage2.type_to_schema", "stage2.schema_from_signature")
def test_no_walk_through_the_grammar_outlasts_the_budget(compiler):
    """The bound is a proof sketch; this is the experiment: random token paths, even ones no model would
    take, always finish within call_token_budget."""
    tokenizer, xgr_compiler = compiler
    tools = decision_tools(
        grounded_tools(specs()[:6], [user("I had 1250 stickers and gave away 387. Lisbon?")])
    )
    compiled = xgr_compiler.compile_structural_tag(json.dumps(call_format(tools)))
    budget, rng = call_token_budget(tools), random.Random(0)
    for _ in range(25):
        tokens = random_walk(compiled, tokenizer.eos_token_id, rng)
        assert len(tokens) <= budget
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        body = json.loads(text.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>"))
        assert body["name"] in {t["function"]["name"] for t in tools}
