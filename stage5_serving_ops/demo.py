"""`make demo`'s stage 5: the whole loop of operating a model, in a few minutes on a CPU.

1. start vLLM on a free loopback port (stopped at the end, on Ctrl-C, SIGTERM, SIGHUP, or by the
   watchdog if this process is killed);
2. load: the same prompts sent by 1 user (one after another) and by 8 users (all at once), every
   request traced, priced and held by the budget guard; the throughput of both, measured here;
3. one RAG request traced span by span (retrieval, LLM, calculator tool: what `--otlp` sends to
   Phoenix; traced, not priced); then stage 3's own pipeline answers a few golden questions through this server
   (`python -m stage3_retrieval export-eval --base-url ...`), its records written to a file;
4. spend per route, and the RAG request's trace as a tree;
5. Ragas on stage 3's records and the gate's verdict.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shared.console import BadInput, console, show, table

BUDGET_USD = 0.01
ONE_USER_REQUESTS = 4  # the first prompts, one after another
RAG_QUESTIONS = 3


def run_demo(args: argparse.Namespace) -> int:
    from shared.chat import OpenAIChatModel
    from stage5_serving_ops.bench import load_prompts
    from stage5_serving_ops.costs import (
        BudgetGuard,
        Ledger,
        load_prices,
        price_for,
        prompt_token_counter,
        summarise,
    )
    from stage5_serving_ops.dataset import load_dataset
    from stage5_serving_ops.gate import gate, load_baseline, load_thresholds
    from stage5_serving_ops.launch import running_server, server_config
    from stage5_serving_ops.phoenix import traced_rag_request
    from stage5_serving_ops.pipeline import DEFAULT, export, prepare, records_path
    from stage5_serving_ops.provenance import provenance
    from stage5_serving_ops.ragas_metrics import evaluate_set
    from stage5_serving_ops.tracing import Tracing, read_traces, render_tree

    if args.requests < 1:
        raise BadInput(f"--requests must be at least 1, got {args.requests}")
    prices = load_prices()
    prepare(DEFAULT, args.model)  # stage 3's index, built before the server takes a core
    count_tokens = prompt_token_counter(args.model)
    tracing = Tracing(otlp_endpoint=args.otlp)
    guard = BudgetGuard(BUDGET_USD, Ledger())
    recorded: list[dict[str, Any]] = []
    with running_server(server_config(args)) as server:
        model = OpenAIChatModel(server.config.served_name, server.base_url, args.api_key)
        price = price_for(prices, model.name)

        def ask(messages: list[dict[str, str]], route: str, max_tokens: int = 64) -> Any:
            reservation = guard.reserve(price, count_tokens(messages), max_tokens)  # refused: never sent
            try:
                response = tracing.chat(model, messages, route=route, max_tokens=max_tokens, temperature=0.0)
            except BaseException:
                guard.release(reservation)
                raise
            recorded.append(guard.settle(reservation, response.usage.prompt_tokens, response.usage.completion_tokens,
                                         route))  # fmt: skip
            return response

        def load(prompts: list[str], users: int, route: str) -> tuple[list[Any], float]:
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=users) as pool:
                responses = list(pool.map(lambda p: ask([{"role": "user", "content": p}], route), prompts))
            return responses, time.perf_counter() - start

        prompts = load_prompts()[: args.requests]
        ask([{"role": "user", "content": "Hi"}], "warm-up", max_tokens=4)  # the first request's set-up
        rates = {}
        for users, batch in ((1, prompts[:ONE_USER_REQUESTS]), (len(prompts), prompts)):
            responses, wall = load(batch, users, f"{users}-user")
            tokens = sum(r.usage.completion_tokens for r in responses)
            rates[users] = tokens / wall
            console.print(f"{users} user(s), {len(batch)} requests: {tokens} tokens in {wall:.1f} s = "
                          f"{rates[users]:.1f} tok/s")  # fmt: skip
        if len(rates) == 2:
            console.print(f"batching: {len(prompts)} users get {rates[len(prompts)] / rates[1]:.2f}x the tokens per "
                          "second of one, from the same server in the same run")  # fmt: skip
        console.print(f"[dim]{prompts[0]}[/dim] -> {responses[0].text.strip()[:160]}")

        # one RAG request with a retrieval, an LLM and a tool span (the trace `--otlp` shows in Phoenix);
        # traced but not priced: it does not go through the budget guard
        console.print(f"traced RAG request: {traced_rag_request(tracing, model)[:160]}")
        out = records_path(DEFAULT).with_name("demo.jsonl")
        with tracing.span(
            "rag.stage3_export", "CHAIN", **{"input.value": f"{RAG_QUESTIONS} golden questions"}
        ) as span:
            export(
                DEFAULT, out, server.base_url, server.config.served_name, args.api_key, limit=RAG_QUESTIONS
            )
            records = load_dataset(out)
            span.set_attribute("output.value", f"{len(records)} records in {out}")
        tracing.shutdown()

    summary = summarise(recorded)
    show(table(f"this demo's spend: {summary['requests']} requests, ${summary['usd']:.6f} (budget ${BUDGET_USD})",
               ["route", "requests", "prompt tok", "completion tok", "USD/request"],
               [(name, int(r["requests"]), int(r["prompt_tokens"]), int(r["completion_tokens"]),
                 f"{r['usd_per_request']:.8f}") for name, r in summary["by_route"].items()]))  # fmt: skip
    console.print(f"price: {price.source}; model: {provenance(args.model)['label']}")
    over = [e for e in recorded if e.get("over_reservation_usd")]
    console.print(f"budget guard: {len(recorded)} requests reserved before sending and settled after; "
                  + (f"[red]{len(over)} cost more than reserved[/red]" if over else "none cost more than reserved"))  # fmt: skip
    traces = list(read_traces(tracing.path).values())
    show(render_tree(traces[-2] if len(traces) > 1 else traces[-1]))  # the traced RAG request

    for record in records:
        console.print(f"[dim]{record['question']}[/dim] -> {record['answer'][:160]}")
    result = evaluate_set(records)
    failures = gate(result, load_thresholds(), load_baseline())
    show(table(f"Ragas on stage 3's answers to {len(records)} golden questions (no LLM judge)", ["metric", "mean"],
               [(k, "-" if v is None else f"{v:.3f}") for k, v in result["metrics"].items()]))  # fmt: skip
    verdict = "passes" if not failures else "fails on " + ", ".join(f["metric"] for f in failures)
    console.print(f"on these {len(records)} questions the gate {verdict}; its thresholds were measured on "
                  f"{load_thresholds()['baseline'].get('records', '?')} (`python -m stage5_serving_ops eval` runs that)")  # fmt: skip
    return 0
