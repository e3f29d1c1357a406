"""`make demo`'s stage 5: the whole loop of operating a model, in about two minutes on a CPU.

1. start vLLM on a free loopback port;
2. send a burst of concurrent requests, each traced and priced, behind a budget guard;
3. answer one question with retrieval (MiniLM over the eval set's contexts) inside one trace;
4. print throughput, spend per route and that trace as a tree;
5. score the served model's retrieval-augmented answers with Ragas and show the gate's verdict;
6. stop the server (also on Ctrl-C or an error).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shared.console import BadInput, console, show, table

BUDGET_USD = 0.01


def retrieve(question: str, passages: list[tuple[str, str]], k: int = 2) -> list[tuple[str, float, str]]:
    """The k passages most similar to the question by MiniLM cosine: (id, score, text)."""
    from shared.models import load_embedder

    embedder = load_embedder()
    vectors = embedder.encode([question] + [text for _, text in passages], normalize_embeddings=True)
    scores = vectors[1:] @ vectors[0]
    best = scores.argsort()[::-1][:k]
    return [(passages[i][0], float(scores[i]), passages[i][1]) for i in best]


def rag_prompt(question: str, contexts: list[str]) -> list[dict[str, str]]:
    joined = "\n\n".join(contexts)
    return [{"role": "user", "content": f"Answer from the context in one or two sentences.\n\nContext:\n{joined}\n\n"
             f"Question: {question}"}]  # fmt: skip


def run_demo(args: argparse.Namespace) -> int:
    from shared.chat import OpenAIChatModel
    from stage5_serving_ops.bench import load_prompts
    from stage5_serving_ops.cli import server_config, start_server
    from stage5_serving_ops.costs import BudgetGuard, Ledger, load_prices, price_for, summarise
    from stage5_serving_ops.evals import DEFAULT_DATASET, evaluate_set, gate, load_dataset, load_thresholds
    from stage5_serving_ops.tracing import Tracing, read_traces, render_tree

    if args.requests < 1:
        raise BadInput(f"--requests must be at least 1, got {args.requests}")
    prices = load_prices()
    server = start_server(server_config(args))
    tracing = Tracing(otlp_endpoint=args.otlp)
    ledger = Ledger()
    guard = BudgetGuard(BUDGET_USD, ledger)
    recorded: list[dict[str, Any]] = []
    try:
        model = OpenAIChatModel(server.config.served_name, server.base_url, args.api_key)
        price = price_for(prices, model.name)

        def ask(messages: list[dict[str, str]], route: str, max_tokens: int = 64) -> Any:
            prompt_tokens = (
                sum(len(m["content"]) for m in messages) // 3
            )  # a generous estimate before sending
            guard.check(price, prompt_tokens, max_tokens)
            response = tracing.chat(model, messages, route=route, max_tokens=max_tokens, temperature=0.0)
            recorded.append(
                ledger.record(price, response.usage.prompt_tokens, response.usage.completion_tokens, route)
            )
            return response

        prompts = load_prompts()[: args.requests]
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
            responses = list(pool.map(lambda p: ask([{"role": "user", "content": p}], "chat"), prompts))
        wall = time.perf_counter() - start
        tokens = sum(r.usage.completion_tokens for r in responses)
        console.print(f"{len(prompts)} concurrent requests: {tokens} tokens in {wall:.1f} s = {tokens / wall:.1f} tok/s "
                      f"(vs ~14 tok/s for one user on 2 CPU cores)")  # fmt: skip
        console.print(f"[dim]{prompts[0]}[/dim] -> {responses[0].text.strip()[:160]}")

        records = load_dataset(DEFAULT_DATASET)
        passages = [
            (f"{r.get('id', i)}#{j}", text)
            for i, r in enumerate(records)
            for j, text in enumerate(r["contexts"])
        ]
        scored = []
        for record in records[:3]:
            with tracing.span("rag", "CHAIN", **{"input.value": record["question"]}) as span:
                hits = tracing.retrieval(record["question"], lambda q: retrieve(q, passages))
                contexts = [text for _, _, text in hits]
                answer = ask(rag_prompt(record["question"], contexts), "rag", max_tokens=80).text.strip()
                span.set_attribute("output.value", answer)
            scored.append({**record, "contexts": contexts, "answer": answer})
        tracing.shutdown()
    finally:
        server.stop()

    summary = summarise(recorded)
    show(table(f"this demo's spend: {summary['requests']} requests, ${summary['usd']:.6f} (budget ${BUDGET_USD})",
               ["route", "requests", "prompt tok", "completion tok", "USD/request"],
               [(name, int(r["requests"]), int(r["prompt_tokens"]), int(r["completion_tokens"]),
                 f"{r['usd_per_request']:.8f}") for name, r in summary["by_route"].items()]))  # fmt: skip
    console.print(f"price: {price.source}")
    last = list(read_traces(tracing.path).values())[-1]
    show(render_tree(last))

    result = evaluate_set(scored)
    failures = gate(result, load_thresholds())
    show(table("Ragas on 3 served RAG answers (no LLM judge)", ["metric", "mean"],
               [(k, "-" if v is None else f"{v:.3f}") for k, v in result["metrics"].items()]))  # fmt: skip
    verdict = "passes" if not failures else "fails on " + ", ".join(f["metric"] for f in failures)
    console.print(
        f"the evaluation gate {verdict} (`python -m stage5_serving_ops eval` exits 1 when it fails)"
    )
    return 0
