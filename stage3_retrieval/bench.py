"""Stage 3's benchmark: everything the README reports, measured in one run, written to reports/.

    python -m stage3_retrieval bench                   # all of it (answers included: long on 2 cores)
    python -m stage3_retrieval bench --skip-answers    # retrieval, chunkers, FAISS, LangChain only
    python -m stage3_retrieval figures                 # rewrite the README's tables from the report

Run it alone on the machine (`flock -x` in a shared one): the latencies are wall-clock.

Sections of reports/stage3_retrieval.json:

    index        a cold build of the structured index (empty embedding cache) with the time of each
                 part; `rebuild` the same build again with the cache warm
    modes        every search mode on test (the retrieval table), `modes_dev`, `modes_heldout`
    route_filter rerank and dense on test with the route filter: by the router, and by the true
                 source (what a perfect router would give)
    chunkers     fixed windows against structured chunks: dense, hybrid and rerank on dev and test
    routing      routing accuracy on the routing set's test split
    vectors      FAISS flat / HNSW / IVF against Chroma (vectors.py)
    rerankers    no reranker, MaxSim and the chat model as a relevance judge, on a quarter of dev
    langchain    the hybrid retriever in LangChain on test (langchain_hybrid.py)
    answers      the answer table on test (answers.py), the reflection figures, refusal accuracy,
                 and `answers_fixed`: the default pipeline over the fixed-window index
    global       local, global and global+local search on the global questions
    tuned        the settings the pipeline ran with (data/tuned.json)
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import console, progress

REPORT = "stage3_retrieval.json"
RETRIEVAL_MODES = ("dense", "hybrid", "rerank")


def build_timed(bar: Any, path: Path, chunker: str, cache: Any) -> Any:
    from stage3_retrieval.index import build_index

    task = bar.add_task(f"building the {chunker} index", total=None)
    index = build_index(path, chunker=chunker, cache=cache, on_chunks=lambda n: bar.update(task, total=n),
                        on_embedded=lambda n: bar.advance(task, n))  # fmt: skip
    bar.remove_task(task)
    return index


def retrieval(report: dict[str, Any], index: Any, fixed: Any, bar: Any) -> None:
    from stage3_retrieval.evaluate import (
        evaluate_mode,
        evaluate_modes,
        evaluate_routing,
        load_golden,
        routed_sources,  # fmt: skip
        true_sources,
    )
    from stage3_retrieval.hybrid import MODES, Retriever

    retriever = Retriever(index)
    sizes = {s: len(load_golden(s)) for s in ("dev", "test", "heldout")}
    task = bar.add_task(
        "retrieval: every mode on dev, test, held-out", total=len(MODES) * sum(sizes.values())
    )
    for split, key in (("test", "modes"), ("dev", "modes_dev"), ("heldout", "modes_heldout")):
        report[key] = evaluate_modes(retriever, split, on_row=lambda: bar.advance(task))
    rows = load_golden("test")
    routed, true = routed_sources(index, rows), true_sources(rows)
    report["route_filter"] = {
        "routed_out_of_scope": sum(v == "out_of_scope" for v in routed.values()),
        "rows": [{**evaluate_mode(retriever, rows, mode, sources=sources), "filter": label}
                 for label, sources in (("router", routed), ("true source", true)) for mode in ("dense", "rerank")]}  # fmt: skip
    heldout = load_golden("heldout")
    report["route_filter_heldout"] = [{**evaluate_mode(retriever, heldout, mode, sources=routed_sources(index, heldout)),
                                       "filter": "router"} for mode in ("dense", "rerank")]  # fmt: skip
    fixed_retriever = Retriever(fixed)
    report["chunkers"] = [{**evaluate_mode(r, load_golden(split), mode), "chunker": chunker, "split": split}
                          for chunker, r in (("structured", retriever), ("fixed", fixed_retriever))
                          for split in ("dev", "test") for mode in RETRIEVAL_MODES]  # fmt: skip
    report["routing"] = evaluate_routing(index, "test")
    bar.remove_task(task)


def frameworks(report: dict[str, Any], index: Any, bar: Any) -> None:
    from stage3_retrieval.evaluate import load_golden
    from stage3_retrieval.langchain_hybrid import evaluate_langchain
    from stage3_retrieval.vectors import compare_indexes

    rows = load_golden("test")
    report["vectors"] = compare_indexes(index, [r["question"] for r in load_golden()])
    task = bar.add_task("LangChain's hybrid on test", total=5 * len(rows))
    report["langchain"] = evaluate_langchain(index, rows, on_row=lambda: bar.advance(task))
    bar.remove_task(task)


def answers(report: dict[str, Any], index: Any, fixed: Any, bar: Any, limit: int | None,
            model: str | None) -> None:  # fmt: skip
    from shared.chat import open_chat_model
    from stage3_retrieval.answers import PIPELINES, MemoChat, compare_global, compare_pipelines
    from stage3_retrieval.evaluate import load_golden
    from stage3_retrieval.hybrid import Retriever
    from stage3_retrieval.router import load_routes

    rows = load_golden("test")[:limit]
    out_of_scope = [r["query"] for r in load_routes("test") if r["route"] == "out_of_scope"][:limit]
    chat = MemoChat(open_chat_model(model))
    task = bar.add_task("answers on test", total=len(PIPELINES) * (len(rows) + len(out_of_scope)))
    report["answers"] = compare_pipelines(Retriever(index), chat, rows, out_of_scope,
                                          on_step=lambda _: bar.advance(task))  # fmt: skip
    bar.remove_task(task)
    task = bar.add_task("answers on test, fixed-window index", total=len(rows) + len(out_of_scope))
    report["answers_fixed"] = compare_pipelines(Retriever(fixed), MemoChat(chat.inner), rows, out_of_scope,
                                                pipelines=("hybrid+rerank",), on_step=lambda _: bar.advance(task))  # fmt: skip
    bar.remove_task(task)
    task = bar.add_task("global questions", total=None)
    report["global"] = compare_global(Retriever(index), chat, on_step=lambda _: bar.advance(task))
    bar.remove_task(task)


def run_bench(skip_answers: bool = False, limit: int | None = None, model: str | None = None,
              on_done: Callable[[str], None] | None = None) -> tuple[dict[str, Any], Path]:  # fmt: skip
    from shared.models import load_embedder
    from stage3_retrieval.dense import EmbeddingCache, release_clients
    from stage3_retrieval.evaluate import plot_modes
    from stage3_retrieval.hybrid import load_tuned

    load_embedder()  # the target is build time once the model is cached and loaded
    report: dict[str, Any] = {"tuned": load_tuned()}
    with tempfile.TemporaryDirectory() as tmp, progress(transient=True) as bar:
        cold = EmbeddingCache(Path(tmp) / "embeddings")  # empty: every chunk is embedded
        index = build_timed(bar, Path(tmp) / "index", "structured", cold)
        report["index"] = index.manifest
        start = time.perf_counter()
        rebuilt = build_timed(bar, Path(tmp) / "index-again", "structured", cold)
        report["index"]["rebuild"] = {"build_seconds": time.perf_counter() - start,
                                      "embedding_cache": rebuilt.manifest["embedding_cache"]}  # fmt: skip
        fixed = build_timed(bar, Path(tmp) / "index-fixed", "fixed", cold)
        report["index_fixed"] = fixed.manifest
        retrieval(report, index, fixed, bar)
        frameworks(report, index, bar)
        rerankers(report, index, bar)
        if not skip_answers:
            answers(report, index, fixed, bar, limit, model)
        release_clients()
    plot = plot_modes(report["modes"], paths.reports_dir() / "stage3_retrieval.png",
                      f"retrieval on the test split (n={report['modes'][0]['n']})")  # fmt: skip
    report["plot"] = str(plot)
    out = paths.atomic_write_text(
        paths.reports_dir() / REPORT, json.dumps(report, indent=2, default=str) + "\n"
    )
    console.print(f"wrote {out} and {plot}")
    return report, out


def rerankers(report: dict[str, Any], index: Any, bar: Any, every: int = 4, depth: int = 8) -> None:
    """MaxSim against the chat model as a relevance judge (rerank.LLMReranker), and no reranker, over
    hybrid's top `depth` on every `every`-th dev question (the LLM costs one forward pass per candidate)."""
    from stage3_retrieval.evaluate import average, judge_ranking, load_golden, relevant_of
    from stage3_retrieval.hybrid import Retriever
    from stage3_retrieval.rerank import LLMReranker, make_reranker

    rows = load_golden("dev")[::every]
    retriever, chunks = Retriever(index), index.chunks
    scorers = {"maxsim": make_reranker("maxsim"), "llm": LLMReranker()}
    per: dict[str, list[dict[str, float]]] = {"none": [], **{k: [] for k in scorers}}
    seconds: dict[str, float] = {k: 0.0 for k in scorers}
    task = bar.add_task(f"rerankers on {len(rows)} dev questions", total=len(rows))
    for row in rows:
        hits = retriever.search(row["question"], "hybrid", 20)
        head = [h.id for h in hits]
        per["none"].append(
            judge_ranking([(chunks[c].source, chunks[c].topic) for c in head[:10]], relevant_of(row))
        )
        for name, scorer in scorers.items():
            start = time.perf_counter()
            scores = scorer.score(row["question"], [chunks[c].searchable() for c in head[:depth]])
            seconds[name] += time.perf_counter() - start
            order = [head[i] for i in sorted(range(depth), key=lambda i: -scores[i])] + head[depth:]
            per[name].append(
                judge_ranking([(chunks[c].source, chunks[c].topic) for c in order[:10]], relevant_of(row))
            )
        bar.advance(task)
    bar.remove_task(task)
    report["rerankers"] = {"split": "dev", "n": len(rows), "depth": depth,
                           "rows": [{"reranker": k, **average(v), "seconds_per_query": seconds.get(k, 0.0) / len(rows)}
                                    for k, v in per.items()]}  # fmt: skip
