"""One way to talk to a chat model, whether it runs in this process or behind an HTTP API.

Every stage asks a model things: stage 2 runs a tool loop, stage 3 asks it to judge its context,
stage 5 serves it. They all speak through this small interface, modelled on the OpenAI chat API
because that is what every serving stack (vLLM, TGI, llama.cpp, OpenAI itself) speaks:

    model.chat(messages, tools=..., max_tokens=..., temperature=..., top_p=..., seed=..., stop=...)
        -> ChatResponse(text, tool_calls, finish_reason, usage, latency_s)
    model.stream(messages, ...) -> yields text deltas as they are produced

Two backends:
- `LocalChatModel`: Transformers in this process. The model's own chat template renders the
  messages, `generate` decodes, and usage is counted from the actual token ids.
- `OpenAIChatModel`: the official `openai` client against any OpenAI-compatible `base_url`.

It is deliberately thin. Sampling, KV caches, constrained decoding and tool loops are what the
stages teach, so they are built there, on top of this, not hidden in here.

    python -c "from shared.chat import LocalChatModel; \
        print(LocalChatModel().chat([{'role': 'user', 'content': 'What is the capital of France?'}]).text)"
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from shared.console import BadInput, WorkFailed, one_line
from shared.models import DEFAULT_CHAT_MODEL, resolve

Message = dict[str, Any]  # {"role": "user", "content": "..."} as in the OpenAI API


class ChatError(WorkFailed):
    """A chat request failed (HTTP error, unreachable server); the message is one clear line."""


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class ToolCall:
    name: str
    arguments: str  # the raw JSON text the model produced: parsing it may fail, and that is data
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:12]}")


@dataclass
class ChatResponse:
    text: str
    tool_calls: list[ToolCall]
    finish_reason: str  # "stop" | "length" | "tool_calls"
    usage: Usage
    latency_s: float
    model: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ChatModel(Protocol):
    name: str

    def chat(self, messages: Sequence[Message], **kwargs: Any) -> ChatResponse: ...

    def stream(self, messages: Sequence[Message], **kwargs: Any) -> Iterator[str]: ...


def validate_sampling(max_tokens: int, temperature: float, top_p: float) -> None:
    if max_tokens < 1:
        raise BadInput(f"max_tokens must be at least 1, got {max_tokens}")
    if temperature < 0:
        raise BadInput(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise BadInput(f"top_p must be in (0, 1], got {top_p}")


def cut_at_stop(text: str, stop: Sequence[str] | None) -> tuple[str, bool]:
    """OpenAI semantics: the text ends before the first stop string, which is not included."""
    cuts = [i for s in stop or () if s and (i := text.find(s)) >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


# Models trained for tools (Qwen, Hermes, SmolLM3) wrap calls in these tags; SmolLM2-135M was not
# trained for it, which is why stage 2 adds constrained decoding on top.
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """Split `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks out of a reply."""
    calls = []
    for block in _TOOL_CALL.findall(text):
        try:
            obj = json.loads(block)
            name, args = str(obj.get("name", "")), obj.get("arguments", {})
            calls.append(ToolCall(name=name, arguments=args if isinstance(args, str) else json.dumps(args)))
        except (json.JSONDecodeError, AttributeError):
            calls.append(ToolCall(name="", arguments=block))  # malformed: the caller reports it
    return _TOOL_CALL.sub("", text).strip() if calls else text, calls


# --------------------------------------------------------------------------------------------
# In process, with Transformers


class LocalChatModel:
    """A chat model loaded in this process (CPU by default, the GPU when one is there)."""

    def __init__(self, model: str = DEFAULT_CHAT_MODEL, *, device: str | None = None, dtype: Any = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        self.name = str(model)
        self.path = resolve(model, kind="chat")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or (torch.bfloat16 if self.device == "cuda" else torch.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype).to(self.device).eval()
        if self.tokenizer.chat_template is None:
            raise BadInput(f"{self.path} has no chat template; use an instruct model")

    def encode(self, messages: Sequence[Message], tools: list[dict] | None = None) -> list[int]:
        """The exact token ids the model sees: the chat template plus the assistant prompt."""
        if not messages:
            raise BadInput("messages is empty; give at least one user message")
        return list(
            self.tokenizer.apply_chat_template(
                list(messages), tools=tools, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )

    def _generate_kwargs(
        self,
        prompt_ids: list[int],
        max_tokens: int,
        temperature: float,
        top_p: float,
        stop: Sequence[str] | None,
    ) -> dict[str, Any]:
        import torch

        if len(prompt_ids) + max_tokens > self.model.config.max_position_embeddings:
            raise BadInput(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceeds the context "
                f"of {self.model.config.max_position_embeddings} tokens"
            )
        kwargs: dict[str, Any] = {
            "input_ids": torch.tensor([prompt_ids], device=self.device),
            "attention_mask": torch.ones(1, len(prompt_ids), dtype=torch.long, device=self.device),
            "max_new_tokens": max_tokens,
            "do_sample": temperature > 0,
            "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        }
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        else:  # greedy: unset the sampling defaults the model's generation_config may carry
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if stop:
            kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        return kwargs

    def chat(
        self,
        messages: Sequence[Message],
        *,
        tools: list[dict] | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> ChatResponse:
        import torch

        validate_sampling(max_tokens, temperature, top_p)
        start = time.perf_counter()
        prompt_ids = self.encode(messages, tools)
        kwargs = self._generate_kwargs(prompt_ids, max_tokens, temperature, top_p, stop)
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            output = self.model.generate(**kwargs)
        new_ids = output[0, len(prompt_ids) :].tolist()
        text, stopped = cut_at_stop(self.tokenizer.decode(new_ids, skip_special_tokens=True), stop)
        ended_on_eos = bool(new_ids) and new_ids[-1] == self.tokenizer.eos_token_id
        finish = "stop" if (stopped or ended_on_eos or len(new_ids) < max_tokens) else "length"
        calls: list[ToolCall] = []
        if tools:
            text, calls = parse_tool_calls(text)
            finish = "tool_calls" if calls else finish
        return ChatResponse(
            text=text,
            tool_calls=calls,
            finish_reason=finish,
            usage=Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(new_ids)),
            latency_s=time.perf_counter() - start,
            model=self.name,
        )

    def stream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
        tools: list[dict] | None = None,
    ) -> Iterator[str]:
        """Yield text deltas as `generate` produces them; they join to `chat(...).text`."""
        import torch
        from transformers import TextIteratorStreamer

        validate_sampling(max_tokens, temperature, top_p)
        prompt_ids = self.encode(messages, tools)
        kwargs = self._generate_kwargs(prompt_ids, max_tokens, temperature, top_p, stop)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.random.fork_rng(devices=[]), torch.inference_mode():
                    if seed is not None:
                        torch.manual_seed(seed)
                    self.model.generate(**kwargs, streamer=streamer)
            except BaseException as e:  # surfaced in the caller's thread below
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        # Hold back enough characters that a stop string split across two deltas is still caught.
        hold = max((len(s) for s in stop or ()), default=1) - 1
        text, sent = "", 0
        for delta in streamer:
            text += delta
            cut, stopped = cut_at_stop(text, stop)
            safe = len(cut) if stopped else max(sent, len(text) - hold)
            if safe > sent:
                yield text[sent:safe]
                sent = safe
            if stopped:
                break
        else:
            if len(text) > sent:
                yield text[sent:]
        thread.join()
        if errors:
            raise ChatError(f"generation failed: {one_line(errors[0])}")


# --------------------------------------------------------------------------------------------
# Over HTTP, with the official OpenAI client


class OpenAIChatModel:
    """Any OpenAI-compatible server: vLLM (stage 5), OpenAI, a local llama.cpp, ..."""

    def __init__(self, model: str, base_url: str, api_key: str | None = None, timeout: float = 120.0):
        import openai

        self.name = model
        self.base_url = base_url
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
            timeout=timeout,
            max_retries=0,  # a course should show failures, not hide them behind retries
        )

    def _request(
        self,
        messages: Sequence[Message],
        tools: list[dict] | None,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        stop: Sequence[str] | None,
        tool_choice: Any = None,
        response_format: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        validate_sampling(max_tokens, temperature, top_p)
        request: dict[str, Any] = {
            "model": self.name,
            "messages": list(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
        }
        if tools:
            request["tools"] = tools
        if (
            tool_choice is not None
        ):  # "auto" | "required" | "none" | {"type": "function", "function": {"name": ...}}
            request["tool_choice"] = tool_choice
        if response_format is not None:  # e.g. {"type": "json_schema", ...}; vLLM also takes "structural_tag"
            request["response_format"] = response_format
        if seed is not None:
            request["seed"] = seed
        if stop:
            request["stop"] = list(stop)
        return request

    def _error(self, e: Exception) -> ChatError:
        import openai

        if isinstance(e, openai.APIStatusError):
            detail = e.message
            try:
                detail = e.response.json().get("error", {}).get("message", detail) or detail
            except Exception:
                pass
            return ChatError(f"{self.base_url} answered HTTP {e.status_code}: {one_line(detail)}")
        if isinstance(e, openai.APIConnectionError):
            return ChatError(f"could not reach {self.base_url} ({one_line(e)}); is the server running?")
        return ChatError(f"request to {self.base_url} failed: {one_line(e)}")

    def chat(
        self,
        messages: Sequence[Message],
        *,
        tools: list[dict] | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
        tool_choice: Any = None,
        response_format: dict[str, Any] | None = None,
    ) -> ChatResponse:
        import openai

        request = self._request(messages, tools, max_tokens, temperature, top_p, seed, stop, tool_choice,
                                response_format)  # fmt: skip
        start = time.perf_counter()
        try:
            completion = self.client.chat.completions.create(**request)
        except openai.OpenAIError as e:
            raise self._error(e) from None
        choice = completion.choices[0]
        calls = [
            ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments or "{}")
            for c in choice.message.tool_calls or []
            if c.type == "function"
        ]
        usage = completion.usage
        return ChatResponse(
            text=choice.message.content or "",
            tool_calls=calls,
            finish_reason=choice.finish_reason or "stop",
            usage=Usage(usage.prompt_tokens, usage.completion_tokens) if usage else Usage(),
            latency_s=time.perf_counter() - start,
            model=completion.model or self.name,
        )

    def stream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
        tools: list[dict] | None = None,
    ) -> Iterator[str]:
        import openai

        request = self._request(messages, tools, max_tokens, temperature, top_p, seed, stop)
        try:
            for chunk in self.client.chat.completions.create(**request, stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        except openai.OpenAIError as e:
            raise self._error(e) from None


def open_chat_model(
    model: str | None = None, base_url: str | None = None, api_key: str | None = None
) -> LocalChatModel | OpenAIChatModel:
    """What a stage's `--model` / `--base-url` / `--api-key` flags build.

    With a base URL the model name is passed to the server as is (vLLM's --served-model-name);
    without one, the model is resolved and loaded in this process.
    """
    if base_url:
        return OpenAIChatModel(model or DEFAULT_CHAT_MODEL, base_url, api_key)
    return LocalChatModel(model or DEFAULT_CHAT_MODEL)


# --------------------------------------------------------------------------------------------
# CLI: python -m shared.chat [--model M | --base-url URL] [--stream] QUESTION


def main(argv: list[str] | None = None) -> int:
    import argparse

    from shared.console import console, print_json

    parser = argparse.ArgumentParser(
        prog="python -m shared.chat", description="Ask a chat model one question."
    )
    parser.add_argument("question")
    parser.add_argument(
        "--model", default=None, help=f"registry name, hub id or directory (default {DEFAULT_CHAT_MODEL})"
    )
    parser.add_argument(
        "--base-url", default=None, help="an OpenAI-compatible server instead of the in-process model"
    )
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    parser.add_argument("--json", action="store_true", help="print the whole response as JSON")
    args = parser.parse_args(argv)
    if not args.question.strip():
        raise BadInput("the question is empty")
    model = open_chat_model(args.model, args.base_url, args.api_key)
    messages = [{"role": "user", "content": args.question}]
    options = {"max_tokens": args.max_tokens, "temperature": args.temperature}
    if args.stream and not args.json:
        console.print(f"[dim]{model.name}>[/] ", end="")
        for delta in model.stream(messages, **options):
            print(delta, end="", flush=True)
        print()
        return 0
    response = model.chat(messages, **options)
    if args.json:
        print_json(response.to_dict())
    else:
        print(response.text)
        console.print(
            f"[dim]{response.usage.prompt_tokens} prompt + {response.usage.completion_tokens} completion "
            f"tokens in {response.latency_s:.2f} s ({response.finish_reason})[/]"
        )
    return 0


if __name__ == "__main__":
    from shared.console import run_cli

    raise SystemExit(run_cli(main))
