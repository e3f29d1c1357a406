"""The stage README's measured tables, written from reports/stage3_retrieval.json (never by hand).

The same convention as `make figures` for the top README: each table sits between two HTML
comments, `<!-- figures:NAME:start -->` and `<!-- figures:NAME:end -->`, and is regenerated from
the report the bench wrote. A table whose section is missing from the report says so.

    python -m stage3_retrieval figures            # rewrite the tables in stage3_retrieval/README.md
    python -m stage3_retrieval figures --check    # exit 1 if the README differs from the report
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import BadInput

README = Path(__file__).parent / "README.md"


def f3(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def modes_table(rows: list[dict[str, Any]], label: str = "mode") -> list[str]:
    out = [f"| {label} | hit@5 | MRR@10 | nDCG@10 | p50 ms | p95 ms |", "|---|---|---|---|---|---|"]
    out += [f"| {r['mode']} | {f3(r['hit@5'])} | {f3(r['mrr@10'])} | {f3(r['ndcg@10'])} | {r['p50_ms']:.0f} | "
            f"{r['p95_ms']:.0f} |" for r in rows]  # fmt: skip
    return out


def retrieval(r: dict[str, Any]) -> list[str]:
    splits = {"test": r["modes"], "dev": r["modes_dev"], "held-out": r["modes_heldout"]}
    out = ["| mode | " + " | ".join(f"MRR@10 {s} (n={rows[0]['n']})" for s, rows in splits.items()) +
           " | hit@5 test | p50 ms | p95 ms |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    by = {s: {m["mode"]: m for m in rows} for s, rows in splits.items()}
    for mode in by["test"]:
        t = by["test"][mode]
        out.append(f"| {mode} | " + " | ".join(f3(by[s][mode]["mrr@10"]) for s in splits) +
                   f" | {f3(t['hit@5'])} | {t['p50_ms']:.0f} | {t['p95_ms']:.0f} |")  # fmt: skip
    return out


def route_filter(r: dict[str, Any]) -> list[str]:
    rf = r["route_filter"]
    out = ["| mode | filter | MRR@10 test | hit@5 test |", "|---|---|---|---|"]
    base = {m["mode"]: m for m in r["modes"]}
    for mode in ("dense", "rerank"):
        out.append(f"| {mode} | none | {f3(base[mode]['mrr@10'])} | {f3(base[mode]['hit@5'])} |")
        out += [
            f"| {mode} | {x['filter']} | {f3(x['mrr@10'])} | {f3(x['hit@5'])} |"
            for x in rf["rows"]
            if x["mode"] == mode
        ]
    held = {m["mode"]: m for m in r["modes_heldout"]}
    out.append("")
    out.append("| held-out | " + " | ".join(f"{x['mode']} {f3(held[x['mode']]['mrr@10'])} -> routed {f3(x['mrr@10'])}"
                                           for x in r["route_filter_heldout"]) + " |")  # fmt: skip
    out.append("|---|---|---|")
    return out


def chunkers(r: dict[str, Any]) -> list[str]:
    out = ["| chunker | chunks | mode | MRR@10 dev | MRR@10 test | hit@5 test |", "|---|---|---|---|---|---|"]
    counts = {"structured": r["index"]["chunks"], "fixed": r["index_fixed"]["chunks"]}
    rows = {(x["chunker"], x["split"], x["mode"]): x for x in r["chunkers"]}
    for chunker in ("structured", "fixed"):
        for mode in ("dense", "hybrid", "rerank"):
            dev, test = rows[(chunker, "dev", mode)], rows[(chunker, "test", mode)]
            out.append(f"| {chunker} | {counts[chunker]} | {mode} | {f3(dev['mrr@10'])} | {f3(test['mrr@10'])} | "
                       f"{f3(test['hit@5'])} |")  # fmt: skip
    return out


def answers(r: dict[str, Any]) -> list[str]:
    a = r["answers"]
    out = ["| pipeline | similarity | ROUGE-L | context recall | context hit | cited | citation precision | "
           "refused, in scope | refused, out of scope | p50 s | p95 s |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    rows = list(a["pipelines"].items())
    if r.get("answers_fixed"):
        rows += [(f"{name}, fixed windows", p) for name, p in r["answers_fixed"]["pipelines"].items()]
    for name, p in rows:
        out.append(f"| {name} | {f3(p['similarity'])} | {f3(p['rouge_l'])} | {f3(p['context_recall'])} | "
                   f"{f3(p['context_hit'])} | {pct(p['cited'])} | {f3(p['citation_precision'])} | {pct(p['refused'])} | "
                   f"{pct(p['out_of_scope']['refused'])} | {p['p50_s']:.1f} | {p['p95_s']:.1f} |")  # fmt: skip
    return out


def reflection(r: dict[str, Any]) -> list[str]:
    x = r["answers"].get("reflection")
    if not x:
        return ["(no reflection figures in the report)"]
    return [f"- questions through the loop: {x['questions']}; judged \"not enough\" on the first round: "
            f"{pct(x['judged_not_enough_first'])}, and of those the first round already held a relevant chunk: "
            f"{pct(x['first_round_had_relevant_when_judged_not_enough'])}",
            f"- the judge's verdict agreed with the labels (sufficient = a relevant chunk was shown): "
            f"{pct(x['judge_agrees_with_labels'])}",
            f"- rewrites: {x['rewrites']}; a rewritten round retrieved a relevant chunk: "
            f"{pct(x['rewrite_retrieved_relevant'])} (one the first round lacked: "
            f"{pct(x['rewrite_retrieved_relevant_first_lacked'])}); no round judged enough: "
            f"{pct(x['exhausted']) if 'exhausted' in x else 'not recorded'}; answered \"I don't know\": {pct(x['gave_up'])}",
            f"- mean rounds {x['mean_rounds']:.2f}; extra rounds cost {x['extra_round_seconds_mean']:.1f} s a question "
            f"on average; the loop took {x['extra_seconds_vs_hybrid_rerank_p50']:.1f} s (p50) and "
            f"{x['extra_seconds_vs_hybrid_rerank_p95']:.1f} s (p95) longer than hybrid+rerank"]  # fmt: skip


def global_search(r: dict[str, Any]) -> list[str]:
    g = r["global"]
    out = [
        f"| search (n={g['n']}) | similarity to reference | topic recall | p50 s | p95 s |",
        "|---|---|---|---|---|",
    ]
    out += [f"| {name} | {f3(m['similarity'])} | {f3(m['topic_recall'])} | {m['p50_s']:.1f} | {m['p95_s']:.1f} |"
            for name, m in g["modes"].items()]  # fmt: skip
    return out


def vectors(r: dict[str, Any]) -> list[str]:
    v = r["vectors"]
    out = [f"| index ({v['vectors']} vectors, {v['queries']} queries) | recall@10 vs exact | p50 ms | p95 ms | "
           "build s | size |", "|---|---|---|---|---|---|"]  # fmt: skip
    for x in v["rows"]:
        build = "-" if x["build_s"] is None else f"{x['build_s']:.3f}"
        out.append(f"| {x['index']} | {f3(x['recall@10'])} | {x['p50_ms']:.3f} | {x['p95_ms']:.3f} | {build} | "
                   f"{x['bytes'] / 1e6:.1f} MB |")  # fmt: skip
    return out


def rerankers(r: dict[str, Any]) -> list[str]:
    x = r["rerankers"]
    out = [f"| reranker (hybrid's top {x['depth']}, {x['n']} dev questions) | MRR@10 | hit@5 | s per query |",
           "|---|---|---|---|"]  # fmt: skip
    out += [f"| {row['reranker']} | {f3(row['mrr@10'])} | {f3(row['hit@5'])} | {row['seconds_per_query']:.2f} |"
            for row in x["rows"]]  # fmt: skip
    return out


def langchain(r: dict[str, Any]) -> list[str]:
    ours = {m["mode"]: m for m in r["modes"]}
    rows = [{**ours[m], "mode": f"hybrid.py: {m}"} for m in ("bm25", "dense", "hybrid")] + r["langchain"]
    return modes_table(rows, "retriever (test)")


def index_build(r: dict[str, Any]) -> list[str]:
    i, f = r["index"], r["index_fixed"]
    parts = ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in i["seconds"].items())
    return [f"- structured: {i['chunks']} chunks, {i['communities']} communities, built cold in "
            f"{i['build_seconds']:.0f} s ({parts}); rebuilt with the embedding cache warm in "
            f"{i['rebuild']['build_seconds']:.1f} s",
            f"- fixed windows: {f['chunks']} chunks in {f['build_seconds']:.0f} s "
            f"({f['embedding_cache']['misses']} embedded, {f['embedding_cache']['hits']} from the cache)",
            f"- routing on {r['routing']['n']} test queries: {pct(r['routing']['accuracy'])} "
            f"(" + ", ".join(f"{k} {pct(v)}" for k, v in r["routing"]["per_route"].items()) + ")"]  # fmt: skip


SECTIONS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "retrieval": retrieval, "route-filter": route_filter, "chunkers": chunkers, "answers": answers,
    "reflection": reflection, "global": global_search, "vectors": vectors, "langchain": langchain,
    "rerankers": rerankers,
    "index": index_build,
}  # fmt: skip


def render(text: str, report: dict[str, Any] | None) -> str:
    for name, make in SECTIONS.items():
        start, end = f"<!-- figures:{name}:start -->", f"<!-- figures:{name}:end -->"
        if start not in text:
            continue
        try:
            body = (
                make(report)
                if report
                else [
                    "not measured yet: run `make bench` (or `python -m stage3_retrieval bench`), then `python -m stage3_retrieval figures`"
                ]
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            body = [f"reports/stage3_retrieval.json lacks what this table needs ({e!r}): rerun the bench"]
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
        replacement = "\n".join([start, *body, end])
        text = pattern.sub(lambda _m, new=replacement: new, text)
    return text


def readme_text(text: str, reports: Path) -> str:
    """What `make figures` (shared/figures.py) writes: the tables from reports/, or the text as it is
    while there is no report yet."""
    path = reports / "stage3_retrieval.json"
    if not path.is_file():
        return text
    try:
        return render(text, json.loads(path.read_text()))
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read {path}: {e}") from None


def update_readme(readme: Path = README, report_path: Path | None = None, check: bool = False) -> bool:
    """Rewrite (or with `check`, only compare) the README's tables; True if they differ from the report."""
    report_path = report_path or paths.reports_dir() / "stage3_retrieval.json"
    try:
        report = json.loads(report_path.read_text())
    except FileNotFoundError:
        report = None
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read {report_path}: {e}") from None
    old = readme.read_text(encoding="utf-8")
    new = render(old, report)
    if new != old and not check:
        paths.atomic_write_text(readme, new)
    return new != old
