"""Stage 3's commands: index, search, route, graph, ask, eval, bench, export-eval, figures.

python -m stage3_retrieval index [--chunker fixed]
python -m stage3_retrieval search "What does __slots__ do?" --mode hybrid
python -m stage3_retrieval route "How do I bake bread?"
python -m stage3_retrieval graph "Which statements catch what raise ... from produces?"
python -m stage3_retrieval graph --global "What kinds of statements can change the flow of control?"
python -m stage3_retrieval ask "How do I pick the few smallest items of a big list efficiently?"
python -m stage3_retrieval eval --split test
python -m stage3_retrieval eval --answers --split test --limit 20
python -m stage3_retrieval eval --split dev --tune [--install]
python -m stage3_retrieval export-eval reports/stage3_records.jsonl [--mode bm25] [--chunker fixed]
python -m stage3_retrieval bench
python -m stage3_retrieval figures
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

SPLITS = ("dev", "test", "heldout")


def open_index(args: argparse.Namespace, build_if_missing: bool = False) -> Any:
    """The index `--index` names, else the one for `--chunker`; built first (once) if asked and missing."""
    from stage3_retrieval.index import CorpusIndex, build_index, default_index_dir

    chunker = getattr(args, "chunker", "structured")
    path = Path(args.index or default_index_dir(chunker))
    if build_if_missing and not (path / "manifest.json").is_file():
        console.print(f"no {chunker} index at {path} yet: building it once")
        with progress(transient=True) as bar:
            task = bar.add_task(f"building the {chunker} index", total=None)
            return build_index(path, chunker=chunker, on_chunks=lambda n: bar.update(task, total=n),
                               on_embedded=lambda n: bar.advance(task, n))  # fmt: skip
    return CorpusIndex.load(path)


def cmd_index(args: argparse.Namespace) -> int:
    from stage3_retrieval.index import CorpusIndex, build_index, default_index_dir

    path = Path(args.index or default_index_dir(args.chunker))
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
    cache = m.get("embedding_cache") or {}
    console.print(f"chunker {m['chunker']}, embeddings {m['embedding_model']}, {m['communities']} communities, "
                  f"built in {m['build_seconds']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in m['seconds'].items())}; "
                  f"embedding cache: {cache.get('hits', 0)} hits, {cache.get('misses', 0)} embedded)")  # fmt: skip
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from stage3_retrieval.hybrid import Retriever

    if not args.query.strip():
        raise BadInput("the query is empty")
    if args.k < 1:
        raise BadInput(f"--k must be at least 1, got {args.k}")
    index = open_index(args)
    hits = Retriever(index).search(args.query, args.mode, args.k, source=args.source)
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

    if not args.query.strip():
        raise BadInput("the query is empty")
    index = open_index(args)
    if args.global_search:
        from shared.chat import open_chat_model
        from stage3_retrieval.communities import GlobalSearch

        found = GlobalSearch(
            index.communities, open_chat_model(args.model, args.base_url, args.api_key)
        ).answer(args.query)
        if args.json:
            print_json(found.to_dict())
            return 0
        for cid, point in zip(found.communities, found.points, strict=False):
            console.print(f"community {cid}: {point}")
        print(found.answer)
        return 0
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
    summaries = {c["id"]: c["summary"] for c in index.communities}
    for c in result["communities"]:
        console.print(
            f"community {c['id']} ({c['size']} entities): {summaries.get(c['id'], ', '.join(c['central']))}"
        )
    show(table("chunks by entity overlap", ["score", "source/topic", "title", "id"],
               [(r["score"], f"{r['source']}/{r['topic']}", r["title"][:50], r["id"]) for r in result["chunks"]]))  # fmt: skip
    return 0


def build_rag(args: argparse.Namespace, chat_model: Any = None) -> Any:
    from shared.chat import open_chat_model
    from stage3_retrieval.hybrid import Retriever
    from stage3_retrieval.reflect import SelfReflectiveRAG
    from stage3_retrieval.router import SemanticRouter

    if args.max_rounds < 1:
        raise BadInput(f"--max-rounds must be at least 1, got {args.max_rounds}")
    index = open_index(args, build_if_missing=args.chunker != "structured")
    chat_model = chat_model or open_chat_model(args.model, args.base_url, args.api_key)
    return SelfReflectiveRAG(Retriever(index), chat_model, SemanticRouter(index=index), max_rounds=args.max_rounds,
                             mode=args.mode, route_filter=False if args.no_route_filter else None,
                             reflect=not args.no_reflect,
                             on_exhausted="unknown" if args.give_up else "first-round")  # fmt: skip


def cmd_ask(args: argparse.Namespace) -> int:
    if not args.question.strip():
        raise BadInput("the question is empty")
    result = build_rag(args).ask(args.question)
    if args.json:
        print_json(result.to_dict())
        return 0
    console.print(f"route: {result.route}")
    for i, r in enumerate(result.rounds, 1):
        verdict = "not judged" if r.p_yes is None else (f"P(yes) {r.p_yes:.2f}, similarity {r.similarity:.2f} -> "
                                                        f"{'sufficient' if r.sufficient else 'not enough'}")  # fmt: skip
        console.print(f"round {i} ({r.strategy}): {verdict}; chunks {', '.join(r.chunk_ids)}")
        if r.strategy != "original":
            console.print(f"  query: {r.query[:160]}")
    print(result.answer)
    if result.citations:
        print("sources: " + ", ".join(result.citations))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from stage3_retrieval.evaluate import evaluate_modes, evaluate_routing, load_golden, plot_modes
    from stage3_retrieval.hybrid import Retriever

    if args.answers:
        return eval_answers(args)
    index = open_index(args)
    if args.tune:
        from stage3_retrieval.tune import tune

        if args.split != "dev":
            raise BadInput(
                "--tune works on the dev split only: tuning on test would make its numbers meaningless"
            )
        with progress(transient=True) as bar:
            task = bar.add_task("tuning on dev", total=4 * len(load_golden("dev")))
            tuned = tune(Retriever(index), on_row=lambda: bar.advance(task), copy_to_package=args.install)
        from stage3_retrieval.tune import summary, tuned_path

        if args.json:
            print_json(tuned)
        else:
            console.print(summary(tuned))
            console.print(f"wrote {tuned_path()}" + (" and copied it to the package's data/tuned.json" if args.install
                                                     else "; --install copies it where the pipeline reads it"))  # fmt: skip
        return 0
    if args.install:
        raise BadInput("--install goes with --tune")
    with progress(transient=True) as bar:
        task = bar.add_task(f"evaluating on {args.split}", total=len(MODES) * len(load_golden(args.split)))
        results = evaluate_modes(Retriever(index), args.split, on_row=lambda: bar.advance(task))
    routing = evaluate_routing(index, "test" if args.split == "heldout" else args.split)
    plot = plot_modes(results, Path(args.plot) if args.plot else paths.reports_dir() / f"stage3_eval_{args.split}.png",
                      f"retrieval on the {args.split} split (n={results[0]['n']})")  # fmt: skip
    if args.json:
        print_json({"split": args.split, "modes": results, "routing": routing, "plot": str(plot)})
        return 0
    show(table(f"retrieval on {args.split} (n={results[0]['n']})", ["mode", "hit@1", "hit@5", "MRR@10", "nDCG@10",
                                                                     "p50 ms", "p95 ms"],
               [(r["mode"], *(f"{r[m]:.3f}" for m in ("hit@1", "hit@5", "mrr@10", "ndcg@10")),
                 f"{r['p50_ms']:.0f}", f"{r['p95_ms']:.0f}") for r in results]))  # fmt: skip
    console.print(f"routing accuracy {routing['accuracy']:.0%} on {routing['n']} queries of {routing['split']} "
                  f"(threshold {routing['threshold']}): " + ", ".join(f"{k} {v:.0%}" for k, v in routing["per_route"].items()))  # fmt: skip
    console.print(f"plot: {plot}")
    return 0


def eval_answers(args: argparse.Namespace) -> int:
    import json

    from shared.chat import open_chat_model
    from stage3_retrieval.answer_metrics import AnswerScorer
    from stage3_retrieval.answers import PIPELINES, compare_pipelines
    from stage3_retrieval.evaluate import load_golden
    from stage3_retrieval.hybrid import Retriever
    from stage3_retrieval.router import load_routes

    if args.tune:
        raise BadInput("--tune tunes retrieval; answers are compared, not tuned")
    if args.limit is not None and args.limit < 1:
        raise BadInput(f"--limit must be at least 1, got {args.limit}")
    index = open_index(args, build_if_missing=args.chunker != "structured")
    rows = load_golden(args.split)[: args.limit]
    route_split = "test" if args.split == "heldout" else args.split
    oos = [r["query"] for r in load_routes(route_split) if r["route"] == "out_of_scope"][: args.limit]
    scorer = AnswerScorer(args.judge_base_url, args.judge_model, args.judge_api_key)
    chat = open_chat_model(args.model, args.base_url, args.api_key)
    with progress(transient=True) as bar:
        task = bar.add_task(f"answering {args.split} with {len(PIPELINES)} pipelines",
                            total=len(PIPELINES) * (len(rows) + len(oos)))  # fmt: skip
        report = compare_pipelines(
            Retriever(index), chat, rows, oos, scorer=scorer, on_step=lambda _: bar.advance(task)
        )
    report.update(split=args.split, chunker=index.manifest["chunker"])
    out = paths.atomic_write_text(
        paths.reports_dir() / f"stage3_answers_{args.split}.json", json.dumps(report, indent=2) + "\n"
    )
    if args.json:
        print_json(report)
        return 0
    show(answer_table(report, f"answers on {args.split} (n={report['n']}, {report['chunker']} chunks)"))
    if "reflection" in report:
        r = report["reflection"]
        console.print(f"reflection: judged 'not enough' on round 1 for {r['judged_not_enough_first']:.0%}; "
                      f"rewrites {r['rewrites']}, of which retrieved a relevant chunk "
                      f"{(r['rewrite_retrieved_relevant'] or 0):.0%}; gave up {r['gave_up']:.0%}; extra rounds "
                      f"{(r['extra_round_seconds_mean'] or 0):.1f} s a question on average")  # fmt: skip
    console.print(f"wrote {out}")
    return 0


def answer_table(report: dict[str, Any], title: str) -> Any:
    def fmt(value: float | None, spec: str = ".3f") -> str:
        return "-" if value is None else format(value, spec)

    return table(title, ["pipeline", "similarity", "ROUGE-L", "ctx recall", "ctx hit", "cited", "cite prec",
                         "refused (in scope)", "refused (out of scope)", "p50 s", "p95 s"],
                 [(name, fmt(p["similarity"]), fmt(p["rouge_l"]), fmt(p["context_recall"]), fmt(p["context_hit"]),
                   fmt(p["cited"], ".0%"), fmt(p["citation_precision"]), fmt(p["refused"], ".0%"),
                   fmt(p["out_of_scope"]["refused"], ".0%"), fmt(p["p50_s"], ".1f"), fmt(p["p95_s"], ".1f"))
                  for name, p in report["pipelines"].items()])  # fmt: skip


def cmd_bench(args: argparse.Namespace) -> int:
    from stage3_retrieval.bench import run_bench

    if args.limit is not None and args.limit < 1:
        raise BadInput(f"--limit must be at least 1, got {args.limit}")
    report, _ = run_bench(skip_answers=args.skip_answers, limit=args.limit, model=args.model)
    if args.json:
        print_json(report)
        return 0
    show(table(f"retrieval on test (n={report['modes'][0]['n']})", ["mode", "hit@5", "MRR@10", "nDCG@10", "p50 ms",
                                                                     "p95 ms"],
               [(r["mode"], *(f"{r[m]:.3f}" for m in ("hit@5", "mrr@10", "ndcg@10")), f"{r['p50_ms']:.0f}",
                 f"{r['p95_ms']:.0f}") for r in report["modes"]]))  # fmt: skip
    if "answers" in report:
        show(answer_table(report["answers"], "answers on test"))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from stage3_retrieval.evaluate import load_golden
    from stage3_retrieval.export import export_records

    if args.limit is not None and args.limit < 1:
        raise BadInput(f"--limit must be at least 1, got {args.limit}")
    rows = load_golden(args.split)[: args.limit]
    rag = build_rag(args)
    settings = {"chunker": rag.retriever.index.manifest["chunker"], "model": args.model, "split": args.split}
    with progress(transient=True) as bar:
        task = bar.add_task("answering the golden questions", total=len(rows))
        n = export_records(rag, rows, Path(args.file), settings, on_row=lambda: bar.advance(task))
    console.print(f"wrote {n} records to {args.file}")
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from stage3_retrieval.figures import update_readme

    changed = update_readme(check=args.check)
    if args.check:
        console.print("stage 3 README figures " + ("differ from reports/" if changed else "are up to date"))
        return 1 if changed else 0
    console.print("stage 3 README figures " + ("updated" if changed else "already up to date"))
    return 0


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=DEFAULT_CHAT_MODEL, help="registry name, hub id, directory or served name"
    )
    p.add_argument("--base-url", default=None, help="an OpenAI-compatible server")
    p.add_argument("--api-key", default=None)


def add_pipeline_flags(p: argparse.ArgumentParser) -> None:
    """What changes the pipeline: also how a regression is made on purpose (stage 5's gate must catch it)."""
    add_model_flags(p)
    p.add_argument("--max-rounds", type=int, default=3, help="retrieve-judge-rewrite rounds at most")
    p.add_argument("--mode", choices=MODES, default=None, help="search mode (default: as tuned on dev)")
    p.add_argument(
        "--chunker",
        choices=("structured", "fixed"),
        default="structured",
        help="which index: structure-aware chunks or fixed windows (built once if missing)",
    )
    p.add_argument("--no-route-filter", action="store_true", help="route only to refuse; search every source")
    p.add_argument(
        "--no-reflect", action="store_true", help="answer from the first retrieval, without judging"
    )
    p.add_argument("--give-up", action="store_true",
                   help="say \"I don't know\" when no round is judged enough (default: answer from the first round)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stage3_retrieval", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--index", type=Path, default=None, help="index directory (default: under artifacts/)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="build the Chroma and BM25 indexes and the community summaries")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--chunker", choices=("structured", "fixed"), default="structured")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_index)

    p = sub.add_parser("search", help="search the index")
    p.add_argument("query")
    p.add_argument("--mode", choices=MODES, default="hybrid")
    p.add_argument("--k", type=int, default=5)
    p.add_argument(
        "--source",
        choices=("python-reference", "stdlib-docs", "course-docs"),
        default=None,
        help="search only this source (what the route filter does)",
    )
    p.add_argument("--chunker", choices=("structured", "fixed"), default="structured")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_search)

    p = sub.add_parser("route", help="which source a query goes to (or out of scope)")
    p.add_argument("query")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_route)

    p = sub.add_parser(
        "graph", help="GraphRAG: local search (entities, neighbours, chunks) or --global search"
    )
    p.add_argument("query")
    p.add_argument("--k", type=int, default=5)
    p.add_argument(
        "--global",
        dest="global_search",
        action="store_true",
        help="map over the nearest community summaries and reduce to an answer (uses the model)",
    )
    add_model_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_graph)

    p = sub.add_parser("ask", help="the self-reflective RAG: route, retrieve, judge, rewrite, answer")
    p.add_argument("question")
    add_pipeline_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_ask)

    p = sub.add_parser(
        "eval", help="retrieval metrics for every mode; --answers: answer metrics per pipeline"
    )
    p.add_argument("--split", choices=SPLITS, default="test")
    p.add_argument(
        "--tune", action="store_true", help="choose fusion, route filter, reranker, router threshold on dev"
    )
    p.add_argument(
        "--install", action="store_true", help="with --tune: copy the result to the package's data/"
    )
    p.add_argument("--answers", action="store_true", help="run every pipeline and score its answers")
    p.add_argument("--limit", type=int, default=None, help="with --answers: the first N questions")
    p.add_argument(
        "--judge-base-url", default=None, help="with --answers: a server for Ragas' LLM-judged faithfulness"
    )
    p.add_argument("--judge-model", default=None)
    p.add_argument("--judge-api-key", default=None)
    add_model_flags(p)
    p.add_argument("--chunker", choices=("structured", "fixed"), default="structured")
    p.add_argument(
        "--plot", default=None, help="where to write the PNG (default reports/stage3_eval_SPLIT.png)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("bench", help="everything the README reports -> reports/stage3_retrieval.json")
    p.add_argument(
        "--skip-answers", action="store_true", help="retrieval, chunkers, FAISS and LangChain only"
    )
    p.add_argument("--limit", type=int, default=None, help="answer only the first N test questions")
    p.add_argument("--model", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_bench)

    p = sub.add_parser(
        "export-eval", help="id/question/contexts/answer/reference/reference_contexts/meta JSONL for stage 5"
    )
    p.add_argument("file")
    p.add_argument("--split", choices=SPLITS, default="test")
    p.add_argument("--limit", type=int, default=None)
    add_pipeline_flags(p)
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser(
        "figures", help="rewrite the README's measured tables from reports/stage3_retrieval.json"
    )
    p.add_argument("--check", action="store_true", help="only say whether the README is up to date")
    p.set_defaults(handler=cmd_figures)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


def entry() -> int:
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(entry())
