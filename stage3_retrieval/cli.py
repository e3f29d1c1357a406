"""Stage 3's commands: index, search, route, graph, ask, eval, export-eval.

python -m stage3_retrieval index
python -m stage3_retrieval search "What does __slots__ do?" --mode hybrid
python -m stage3_retrieval route "How do I bake bread?"
python -m stage3_retrieval graph "Which statements catch what raise ... from produces?"
python -m stage3_retrieval ask "How do I pick the few smallest items of a big list efficiently?"
python -m stage3_retrieval eval --split test
python -m stage3_retrieval eval --split dev --tune
python -m stage3_retrieval export-eval reports/stage3_records.jsonl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import BadInput, console, print_json, progress, run_cli, show, table
from shared.models import DEFAULT_CHAT_MODEL
from stage3_retrieval.hybrid import MODES


def open_index(args: argparse.Namespace) -> Any:
    from stage3_retrieval.index import CorpusIndex

    return CorpusIndex.load(args.index)


def cmd_index(args: argparse.Namespace) -> int:
    from stage3_retrieval.index import CorpusIndex, build_index, default_index_dir

    path = Path(args.index or default_index_dir())
    if not args.rebuild and (path / "manifest.json").is_file():
        try:
            index = CorpusIndex.load(path)
        except Exception as e:  # damaged: say so and rebuild
            console.print(f"[yellow]{e}; rebuilding[/]")
        else:
            return report_index(index, args.json, "already built (use --rebuild to rebuild)")
    with progress() as bar:
        task = bar.add_task("loading and chunking", total=None)

        def chunked(n: int) -> None:
            bar.update(task, description="embedding chunks", total=n, completed=0)

        index = build_index(path, chunker=args.chunker, on_chunks=chunked,
                            on_embedded=lambda n: bar.advance(task, n))  # fmt: skip
    return report_index(index, args.json, "built")


def report_index(index: Any, as_json: bool, what: str) -> int:
    m = index.manifest
    if as_json:
        print_json({"path": str(index.path), **m})
        return 0
    show(
        table(
            f"index {what}: {index.path}",
            ["source", "chunks"],
            [*m["sources"].items(), ("total", m["chunks"])],
        )
    )
    console.print(
        f"chunker {m['chunker']}, embeddings {m['embedding_model']}, built in {m['build_seconds']:.0f} s"
    )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from stage3_retrieval.hybrid import Retriever

    if not args.query.strip():
        raise BadInput("the query is empty")
    if args.k < 1:
        raise BadInput(f"--k must be at least 1, got {args.k}")
    index = open_index(args)
    hits = Retriever(index).search(args.query, args.mode, args.k)
    results = [h.to_dict(index) for h in hits]
    if args.json:
        print_json(results)
        return 0
    show(table(f"{args.mode}: {args.query}", ["#", "score", "source/topic", "title", "id"],
               [(i + 1, f"{r['score']:.3f}", f"{r['source']}/{r['topic']}", r["title"][:50], r["id"])
                for i, r in enumerate(results)]))  # fmt: skip
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    from stage3_retrieval.router import SemanticRouter

    if not args.query.strip():
        raise BadInput("the query is empty")
    router = SemanticRouter(index=open_index(args))
    decision = router.route(args.query)
    if args.json:
        print_json(decision.to_dict())
    else:
        scores = ", ".join(f"{k} {v:.2f}" for k, v in decision.scores.items())
        console.print(f"[bold]{decision.name}[/] (best {decision.score:.2f}; threshold "
                      f"{router.threshold:.2f}; {scores})")  # fmt: skip
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from stage3_retrieval.graph import build_graph

    index = open_index(args)
    graph = build_graph(list(index.chunks.values()))
    result = graph.local_search(args.query, k=args.k)
    for row in result["chunks"]:
        chunk = index.chunks[row["id"]]
        row.update(source=chunk.source, topic=chunk.topic, title=chunk.title)
    if args.json:
        print_json({**result, "nodes": graph.graph.number_of_nodes(), "edges": graph.graph.number_of_edges()})
        return 0
    console.print(f"graph: {graph.graph.number_of_nodes()} nodes, {graph.graph.number_of_edges()} edges, "
                  f"{len(graph.communities)} communities")  # fmt: skip
    console.print(f"query entities: {', '.join(result['entities']) or '(none found)'}; "
                  f"expanded with: {', '.join(result['expanded']) or '-'}")  # fmt: skip
    for c in result["communities"]:
        console.print(f"community {c['id']} ({c['size']} entities): {c['summary']}")
    show(table("chunks by entity overlap", ["score", "source/topic", "title", "id"],
               [(r["score"], f"{r['source']}/{r['topic']}", r["title"][:50], r["id"]) for r in result["chunks"]]))  # fmt: skip
    return 0


def build_rag(args: argparse.Namespace) -> Any:
    from shared.chat import open_chat_model
    from stage3_retrieval.hybrid import Retriever
    from stage3_retrieval.reflect import SelfReflectiveRAG
    from stage3_retrieval.router import SemanticRouter

    if args.max_rounds < 1:
        raise BadInput(f"--max-rounds must be at least 1, got {args.max_rounds}")
    index = open_index(args)
    chat_model = open_chat_model(args.model, args.base_url, args.api_key)
    return SelfReflectiveRAG(Retriever(index), chat_model, SemanticRouter(index=index),
                             max_rounds=args.max_rounds, mode=getattr(args, "mode", None))  # fmt: skip


def cmd_ask(args: argparse.Namespace) -> int:
    if not args.question.strip():
        raise BadInput("the question is empty")
    result = build_rag(args).ask(args.question)
    if args.json:
        print_json(result.to_dict())
        return 0
    console.print(f"route: {result.route}")
    for i, r in enumerate(result.rounds, 1):
        console.print(f"round {i} ({r.strategy}): P(yes) {r.p_yes:.2f}, similarity {r.similarity:.2f} -> "
                      f"{'sufficient' if r.sufficient else 'not enough'}; chunks {', '.join(r.chunk_ids)}")  # fmt: skip
        if r.strategy != "original":
            console.print(f"  query: {r.query[:160]}")
    print(result.answer)
    if result.citations:
        print("sources: " + ", ".join(result.citations))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from stage3_retrieval.evaluate import evaluate_modes, evaluate_routing, load_golden, plot_modes, tune
    from stage3_retrieval.hybrid import Retriever

    index = open_index(args)
    if args.tune:
        if args.split != "dev":
            raise BadInput(
                "--tune works on the dev split only: tuning on test would make its numbers meaningless"
            )
        with progress(transient=True) as bar:
            task = bar.add_task("tuning on dev", total=3 * len(load_golden("dev")))
            tuned = tune(Retriever(index), on_row=lambda: bar.advance(task))
        if args.json:
            print_json(tuned)
        else:
            console.print(f"fusion: {tuned['fusion']} (dev MRR@10 {tuned['fusion_dev']['mrr@10']:.3f}); rerank: "
                          f"{tuned['rerank']}; router threshold {tuned['router']['threshold']}")  # fmt: skip
        return 0
    with progress(transient=True) as bar:
        task = bar.add_task(f"evaluating on {args.split}", total=len(MODES) * len(load_golden(args.split)))
        results = evaluate_modes(Retriever(index), args.split, on_row=lambda: bar.advance(task))
    routing = evaluate_routing(index, args.split)
    plot = plot_modes(results, Path(args.plot) if args.plot else paths.reports_dir() / f"stage3_eval_{args.split}.png",
                      f"retrieval on the {args.split} split (n={results[0]['n']})")  # fmt: skip
    if args.json:
        print_json({"split": args.split, "modes": results, "routing": routing, "plot": str(plot)})
        return 0
    show(table(f"retrieval on {args.split} (n={results[0]['n']})", ["mode", "hit@1", "hit@5", "MRR@10", "nDCG@10",
                                                                     "p50 ms", "p95 ms"],
               [(r["mode"], *(f"{r[m]:.3f}" for m in ("hit@1", "hit@5", "mrr@10", "ndcg@10")),
                 f"{r['p50_ms']:.0f}", f"{r['p95_ms']:.0f}") for r in results]))  # fmt: skip
    console.print(f"routing accuracy {routing['accuracy']:.0%} on {routing['n']} queries "
                  f"(threshold {routing['threshold']}): " + ", ".join(f"{k} {v:.0%}" for k, v in routing["per_route"].items()))  # fmt: skip
    console.print(f"plot: {plot}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Index build time (fresh, model cached) and every mode on the test split -> reports/stage3_retrieval.json."""
    import json
    import tempfile

    from shared.models import load_embedder
    from stage3_retrieval.dense import release_clients
    from stage3_retrieval.evaluate import evaluate_modes, evaluate_routing, load_golden, plot_modes
    from stage3_retrieval.hybrid import Retriever, load_tuned
    from stage3_retrieval.index import build_index

    load_embedder()  # the target is build time once the model is cached and loaded
    with tempfile.TemporaryDirectory() as tmp, progress(transient=True) as bar:
        task = bar.add_task("building a fresh index", total=None)
        index = build_index(Path(tmp) / "index", on_chunks=lambda n: bar.update(task, total=n),
                            on_embedded=lambda n: bar.advance(task, n))  # fmt: skip
        task = bar.add_task("every mode on test", total=len(MODES) * len(load_golden("test")))
        results = evaluate_modes(Retriever(index), "test", on_row=lambda: bar.advance(task))
        routing = evaluate_routing(index, "test")
        manifest = index.manifest
        release_clients()
    report = {"index": manifest, "modes": results, "routing": routing, "tuned": load_tuned()}
    plot = plot_modes(results, paths.reports_dir() / "stage3_retrieval.png",
                      f"retrieval on the test split (n={results[0]['n']})")  # fmt: skip
    out = paths.atomic_write_text(
        paths.reports_dir() / "stage3_retrieval.json", json.dumps(report, indent=2) + "\n"
    )
    if args.json:
        print_json(report)
        return 0
    show(table(f"retrieval on test (n={results[0]['n']})", ["mode", "hit@5", "MRR@10", "nDCG@10", "p50 ms", "p95 ms"],
               [(r["mode"], *(f"{r[m]:.3f}" for m in ("hit@5", "mrr@10", "ndcg@10")), f"{r['p50_ms']:.0f}",
                 f"{r['p95_ms']:.0f}") for r in results]))  # fmt: skip
    console.print(f"index: {manifest['chunks']} chunks built in {manifest['build_seconds']:.0f} s; routing accuracy "
                  f"{routing['accuracy']:.0%}; wrote {out} and {plot}")  # fmt: skip
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from stage3_retrieval.evaluate import export_records, load_golden

    rows = load_golden(args.split)[: args.limit]
    rag = build_rag(args)
    with progress(transient=True) as bar:
        task = bar.add_task("answering the golden questions", total=len(rows))
        n = export_records(rag, rows, Path(args.file), on_row=lambda: bar.advance(task))
    console.print(f"wrote {n} records to {args.file}")
    return 0


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=DEFAULT_CHAT_MODEL, help="registry name, hub id, directory or served name"
    )
    p.add_argument("--base-url", default=None, help="an OpenAI-compatible server")
    p.add_argument("--api-key", default=None)
    p.add_argument("--max-rounds", type=int, default=3, help="retrieve-judge-rewrite rounds at most")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stage3_retrieval", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--index", type=Path, default=None, help="index directory (default: under artifacts/)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="build the Chroma and BM25 indexes over the three sources")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--chunker", choices=("structured", "fixed"), default="structured")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_index)

    p = sub.add_parser("search", help="search the index")
    p.add_argument("query")
    p.add_argument("--mode", choices=MODES, default="hybrid")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_search)

    p = sub.add_parser("route", help="which source a query goes to (or out of scope)")
    p.add_argument("query")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_route)

    p = sub.add_parser("graph", help="GraphRAG local search: entities, neighbours, communities, chunks")
    p.add_argument("query")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_graph)

    p = sub.add_parser("ask", help="the self-reflective RAG: route, retrieve, judge, rewrite, answer")
    p.add_argument("question")
    add_model_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_ask)

    p = sub.add_parser("eval", help="hit@k, MRR@10, nDCG@10 and latency for every mode; routing accuracy")
    p.add_argument("--split", choices=("dev", "test"), default="test")
    p.add_argument("--tune", action="store_true", help="choose fusion, reranker and router threshold on dev")
    p.add_argument(
        "--plot", default=None, help="where to write the PNG (default reports/stage3_eval_SPLIT.png)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser(
        "bench", help="index build time and every mode on test -> reports/stage3_retrieval.json"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_bench)

    p = sub.add_parser("export-eval", help="question/contexts/answer/reference JSONL for stage 5's Ragas")
    p.add_argument("file")
    p.add_argument("--split", choices=("dev", "test"), default="test")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--mode", choices=MODES, default=None, help="retrieval mode (default: the tuned one)")
    add_model_flags(p)
    p.set_defaults(handler=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


def entry() -> int:
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(entry())
