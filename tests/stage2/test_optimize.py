"""optimize.py: DSPy over shared.chat, optimizers, saved programs, and the accuracy table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shared.chat import ChatResponse, Usage
from shared.console import BadInput
from stage2_prompting_tools.optimize import (
    INTENTS,
    SHOTS,
    chat_lm,
    evaluate,
    hand_written_program,
    load_program,
    optimize,
    predict,
    save_program,
    zero_shot_program,
)
from stage2_prompting_tools.prompts import load_intents

TRAIN = load_intents("train")
LABEL_OF = {r["text"]: r["intent"] for r in load_intents()}


def reply(intent: str) -> str:
    return f"[[ ## intent ## ]]\n{intent}\n\n[[ ## completed ## ]]"


class FakeChatModel:
    """A shared.chat model whose reply is a function of the last user message; records each call."""

    name = "fake"

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def chat(self, messages, **kwargs) -> ChatResponse:
        self.calls.append({"messages": list(messages), **kwargs})
        text = self.answer(messages[-1]["content"])
        return ChatResponse(text, [], "stop", Usage(prompt_tokens=10, completion_tokens=5), 0.0, self.name)


def message_of(user_content: str) -> str:
    """The input text inside a ChatAdapter user message ("[[ ## message ## ]]\\n...")."""
    return next(text for text in LABEL_OF if text in user_content)


def test_the_lm_adapter_round_trips_a_call():
    fake = FakeChatModel(lambda content: "Hello back")
    assert chat_lm(fake)("Hello?") == ["Hello back"]
    call = fake.calls[0]
    assert call["messages"][-1] == {"role": "user", "content": "Hello?"}
    assert call["temperature"] == 0.0 and call["max_tokens"] > 0


def test_a_program_renders_the_signature_and_parses_the_reply():
    fake = FakeChatModel(lambda content: reply("shipping"))
    assert predict(zero_shot_program(), chat_lm(fake), "Where is my parcel?") == "shipping"
    messages = fake.calls[0]["messages"]
    assert messages[0]["role"] == "system" and "intent" in messages[0]["content"]
    assert all(i in messages[0]["content"] for i in INTENTS), "the allowed intents are in the prompt"
    assert "Where is my parcel?" in messages[-1]["content"]


@pytest.mark.parametrize("text", ["billing", reply("refund"), "[[ ## answer ## ]]\nbilling"])
def test_a_reply_that_does_not_parse_into_an_intent_is_none(text):
    assert predict(zero_shot_program(), chat_lm(FakeChatModel(lambda c: text)), "hi") is None


def test_hand_written_demos_become_chat_turns():
    program = hand_written_program(TRAIN)
    assert [d.intent for d in program.demos] == list(INTENTS)
    fake = FakeChatModel(lambda content: reply("billing"))
    predict(program, chat_lm(fake), "I was charged twice")
    roles = [m["role"] for m in fake.calls[0]["messages"]]
    assert roles == ["system"] + ["user", "assistant"] * len(INTENTS) + ["user"]


def test_labeled_few_shot_is_seeded():
    lm = chat_lm(FakeChatModel(lambda c: reply("billing")))
    one, two = optimize(lm, TRAIN, "labeled"), optimize(lm, TRAIN, "labeled")
    assert len(one.demos) == SHOTS and [d.message for d in one.demos] == [d.message for d in two.demos]


def test_bootstrap_keeps_only_traces_the_metric_accepts():
    """The model is right only about billing: every bootstrapped demo is a billing one."""
    fake = FakeChatModel(lambda c: reply("billing" if LABEL_OF[message_of(c)] == "billing" else "shipping"))
    program = optimize(chat_lm(fake), TRAIN, "bootstrap", max_bootstrapped=2)
    bootstrapped = [d for d in program.demos if d.get("augmented")]
    assert len(program.demos) == SHOTS and len(bootstrapped) == 2
    assert {d.intent for d in bootstrapped} == {"billing"} and fake.calls


def test_save_and_load_keep_the_demos(tmp_path):
    program = hand_written_program(TRAIN)
    path = save_program(program, tmp_path / "p.json", optimizer="hand")
    loaded = load_program(path)
    assert [(d["message"], d["intent"]) for d in loaded.demos] == [
        (d.message, d.intent) for d in program.demos
    ]
    assert json.loads(path.read_text())["optimizer"] == "hand"


@pytest.mark.parametrize("content, message", [(None, "no saved program"), ("{", "not valid JSON"),
                                              ('{"format": "x"}', "not a saved intent program")])  # fmt: skip
def test_a_bad_program_file_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "p.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BadInput, match=message):
        load_program(path)


def test_accuracy_comes_from_the_predictions():
    rows = load_intents("dev")[:6]
    fake = FakeChatModel(lambda c: reply(LABEL_OF[message_of(c)]) if "password" not in c else "no idea")
    result = evaluate(zero_shot_program(), chat_lm(fake), rows)
    expected = [r["intent"] if "password" not in r["text"] else None for r in rows]
    assert result["predictions"] == expected
    assert result["accuracy"] == sum(e is not None for e in expected) / 6


@pytest.mark.parametrize("argv, message", [(["optimize", "--optimizer", "magic"], "unknown optimizer"),
                                           (["classify", "--program", "/nonexistent.json", "hi"],
                                            "no saved program")])  # fmt: skip
def test_cli_bad_input_exits_2(argv, message):
    run = subprocess.run(
        [sys.executable, "-m", "stage2_prompting_tools", *argv], capture_output=True, text=True
    )
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr


@pytest.mark.slow
def test_real_model_optimizes_saves_reloads_and_predicts_the_same(chat_model, tmp_path):
    lm = chat_lm(chat_model)
    program = optimize(lm, TRAIN[:24], "bootstrap", max_bootstrapped=2, shots=3)
    rows = load_intents("dev")[:4]
    before = evaluate(program, lm, rows)
    assert all(p is None or p in INTENTS for p in before["predictions"])
    reloaded = load_program(save_program(program, tmp_path / "p.json"))
    assert evaluate(reloaded, lm, rows)["predictions"] == before["predictions"]


def test_knn_demos_are_the_nearest_training_examples_and_survive_a_reload(tmp_path):
    fake = FakeChatModel(lambda content: reply("shipping"))
    program = optimize(chat_lm(fake), TRAIN, "knn", shots=3)
    predict(program, chat_lm(fake), "My parcel has not arrived and the tracking has not moved for a week.")
    shown = [m["content"] for m in fake.calls[-1]["messages"] if m["role"] == "assistant"]
    assert len(shown) == 3 and sum("shipping" in s for s in shown) >= 2, (
        "the neighbours of a shipping question"
    )
    reloaded = load_program(save_program(program, tmp_path / "knn.json", optimizer="knn"))
    predict(reloaded, chat_lm(fake), "My parcel has not arrived and the tracking has not moved for a week.")
    assert fake.calls[-1]["messages"] == fake.calls[-2]["messages"]
