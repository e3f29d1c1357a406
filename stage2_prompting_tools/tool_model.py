"""The in-process tool-calling model: SmolLM2 with OpenAI's tool semantics, kept by a grammar.

agent.py talks to a model through one method, the OpenAI chat API's:

    chat(messages, tools=[...], tool_choice=...) -> ChatResponse(text, tool_calls)

    tool_choice="required"                  exactly one call, to one of `tools`
    tool_choice={"type": "function", "function": {"name": N}}   exactly one call, to N
    tool_choice="auto"                      a call to one of `tools`, or words with no call
    tool_choice="none" (or no tools)        words

A served model (served.py) answers the same call over HTTP; this class answers it in process. It
renders the conversation with the tools chat template (shared.chat_templates), compiles the
grammar for the allowed calls (grammar.call_format: the same JSON the server is sent), and decodes
under it (decoding.py). The calls it returns are therefore always one call, to an allowed tool,
with arguments the given schema accepts, and never cut short: the token budget comes from the
grammar's longest call (grammar.call_token_budget). Decoding is greedy (temperature is ignored).

`constrain=False` is the ablation: the same prompt and budget, free generation, and whatever
<tool_call> block comes out is parsed (often none, or not JSON). README section 6 measures both.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from typing import Any

import torch

from shared.chat import ChatResponse, LocalChatModel, ToolCall, Usage, parse_tool_calls
from shared.chat_templates import tool_chat_template
from stage2_prompting_tools.decoding import constrained_greedy
from stage2_prompting_tools.grammar import call_format, call_token_budget


def allowed_tools(tools: Sequence[dict[str, Any]], tool_choice: Any) -> list[dict[str, Any]]:
    """The tools a tool_choice lets the model call (a named choice: that one, which must be listed)."""
    if isinstance(tool_choice, dict):
        name = tool_choice["function"]["name"]
        chosen = [t for t in tools if t["function"]["name"] == name]
        if not chosen:
            raise ValueError(f"tool_choice names {name!r}, which is not in tools")
        return chosen
    return list(tools)


class ConstrainedToolModel:
    def __init__(self, model: LocalChatModel | str = "smollm2-135m-instruct", constrain: bool = True,
                 jump_forward: bool = True):  # fmt: skip
        self.chat_model = model if isinstance(model, LocalChatModel) else LocalChatModel(model)
        self.tokenizer, self.model = self.chat_model.tokenizer, self.chat_model.model
        self.name = f"{self.chat_model.name}+grammar" if constrain else f"{self.chat_model.name}+free"
        self.constrain, self.jump_forward = constrain, jump_forward
        self.template = tool_chat_template(self.tokenizer)  # None: the model's own renders tools
        self.forward_passes = self.forced_tokens = 0  # counters for the benchmark

    @functools.cached_property
    def compiler(self) -> Any:
        import xgrammar

        info = xgrammar.TokenizerInfo.from_huggingface(
            self.tokenizer, vocab_size=self.model.config.vocab_size
        )
        return xgrammar.GrammarCompiler(info)

    def encode(self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None) -> list[int]:
        """The token ids the model reads: the conversation through the tools chat template."""
        return list(self.tokenizer.apply_chat_template(list(messages), tools=list(tools) if tools else None,
                                                       chat_template=self.template, add_generation_prompt=True,
                                                       tokenize=True, return_dict=False))  # fmt: skip

    def chat(self, messages: Sequence[dict[str, Any]], *, tools: list[dict] | None = None, tool_choice: Any = "auto",
             max_tokens: int = 256, temperature: float = 0.0, **kwargs: Any) -> ChatResponse:  # fmt: skip
        start = time.perf_counter()
        if not tools or tool_choice == "none":
            return self._words(messages, max_tokens, start)
        allowed = allowed_tools(tools, tool_choice)
        words = tool_choice == "auto"
        budget = call_token_budget(allowed) + (max_tokens if words else 0)
        prompt_ids = self.encode(messages, tools)
        if self.constrain:
            grammar = call_format(allowed, text_tokens=max_tokens if words else None)
            compiled = self.compiler.compile_structural_tag(json.dumps(grammar))
            out = constrained_greedy(self.model, self.tokenizer, prompt_ids, compiled, budget,
                                     jump_forward=self.jump_forward, stop_when_complete=not words)  # fmt: skip
            new, finish = out.tokens, out.finish_reason
            self.forward_passes += out.forward_passes
            self.forced_tokens += out.forced
        else:
            new, finish = self._free(prompt_ids, budget)
        text, calls = parse_tool_calls(self.tokenizer.decode(new, skip_special_tokens=True))
        if len(calls) > 1:  # only the free ablation can write two; one call per step, like the grammar
            calls = calls[:1]
        return ChatResponse(text=text, tool_calls=calls, finish_reason="tool_calls" if calls else finish,
                            usage=Usage(len(prompt_ids), len(new)), latency_s=time.perf_counter() - start,
                            model=self.name)  # fmt: skip

    def _words(self, messages: Sequence[dict[str, Any]], max_tokens: int, start: float) -> ChatResponse:
        prompt_ids = self.encode(messages, None)
        new, finish = self._free(prompt_ids, max_tokens)
        return ChatResponse(text=self.tokenizer.decode(new, skip_special_tokens=True).strip(), tool_calls=[],
                            finish_reason=finish, usage=Usage(len(prompt_ids), len(new)),
                            latency_s=time.perf_counter() - start, model=self.name)  # fmt: skip

    @torch.inference_mode()
    def _free(self, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], str]:
        ids = torch.tensor([prompt_ids], device=self.model.device)
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                  do_sample=False, temperature=None, top_p=None, top_k=None,
                                  pad_token_id=self.tokenizer.eos_token_id)  # fmt: skip
        new = out[0, len(prompt_ids) :].tolist()
        finish = "stop" if new and new[-1] == self.tokenizer.eos_token_id else "length"
        return [t for t in new if t != self.tokenizer.eos_token_id], finish


def first_call(reply: ChatResponse) -> ToolCall | None:
    return reply.tool_calls[0] if reply.tool_calls else None
