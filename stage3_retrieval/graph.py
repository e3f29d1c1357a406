"""GraphRAG: an entity graph over the corpus, for questions about how things relate.

Similarity search finds chunks that look like the question. A relational question ("which
statements can catch what `raise ... from` produces?") needs facts from several places joined by
what they mention in common. GraphRAG makes that structure explicit:

    entities     the names the corpus is about, read by rules: keywords and identifiers quoted as
                 code ("nonlocal", `heapq`), dunder methods (__enter__), exception classes
                 (ZeroDivisionError), built-in functions, standard-library modules
    edges        two entities mentioned in the same chunk (weight: in how many chunks), and each
                 entity to the topic it appears in (the cross-reference the docs' structure gives)
    communities  Louvain clustering of the graph: groups of entities mentioned together, with their
                 central entities and the topics they come from, a map of the corpus by subject
                 (communities.py summarises each one and searches the summaries: global search)
    local search the query's entities, expanded to their strongest neighbours; chunks are ranked by
                 how many of those entities they mention (the query's own count most)

Extraction by rules is fast, offline and predictable; with a larger model, asking it to extract
entities and relations per chunk is the usual next step (and costs one LLM call per chunk).
"""

from __future__ import annotations

import builtins
import keyword
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx

from stage3_retrieval.ingest import STDLIB_MODULES, Chunk

QUOTED = re.compile(r"[\"`']{1,2}([A-Za-z_][A-Za-z0-9_.]*)(?:\(\))?[\"`']{1,2}")
DUNDER = re.compile(r"\b__[a-z][a-z0-9_]*__\b")
EXCEPTION = re.compile(r"\b[A-Z][A-Za-z]*(?:Error|Exception|Warning|Exit|Interrupt|Iteration)\b")
DOTTED = re.compile(
    r"\b[a-z_][a-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+"
)  # heapq.nsmallest, concurrent.futures.Future
KEYWORDS = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) - {"_"}
BUILTIN_NAMES = frozenset(
    n for n in dir(builtins) if not n.startswith("_") and callable(getattr(builtins, n))
)
MODULES = frozenset(STDLIB_MODULES)
MAX_ENTITIES_PER_CHUNK = 40
# Louvain's resolution: above 1 it prefers smaller communities. At 1 the ~480-entity graph falls into
# ~11 groups of up to ~70 entities, too broad for a four-sentence summary to speak for; at 2, ~17.
RESOLUTION = 2.0
# Entity names that are also everyday English: in a query they count only when quoted as code.
COMMON_WORDS = frozenset(
    """and as case class copy else false filter for format from help if in input is iter list
map match next none not object open or pass print property queue random range return round set string
time true type with all any id hash len min max sum zip""".split()
)


def kind_of(name: str) -> str | None:
    if name in KEYWORDS:
        return "keyword"
    if DUNDER.fullmatch(name):
        return "dunder"
    if EXCEPTION.fullmatch(name) and name in BUILTIN_NAMES:
        return "exception"
    if name in BUILTIN_NAMES:
        return "builtin"
    if name in MODULES or name.split(".")[0] in MODULES:
        return "module"
    return None


def extract_entities(text: str) -> list[str]:
    """Entities in order of first mention. Plain English words count only when quoted as code.

    Example: extract_entities('The "with" statement calls __enter__; see "contextlib".')
             -> ["with", "__enter__", "contextlib"]
    """
    found: dict[str, None] = {}
    candidates = [(m.start(), m.group(1)) for m in QUOTED.finditer(text)]
    candidates += [(m.start(), m.group()) for m in DUNDER.finditer(text)]
    candidates += [(m.start(), m.group()) for m in EXCEPTION.finditer(text)]
    candidates += [(m.start(), m.group()) for m in DOTTED.finditer(text)]
    for _, name in sorted(candidates):
        name = name.rstrip(".")
        if "." in name:  # json.dumps -> the module json; concurrent.futures.Future -> concurrent.futures
            parts = name.split(".")
            module = next(
                (".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in MODULES),
                None,
            )
            name = module or name
        if kind_of(name):
            found.setdefault(name, None)
    return list(found)


def query_entities(query: str, graph: nx.Graph) -> list[str]:
    """Entities a natural-language query mentions: code-quoted ones, plus bare words that are entity names."""
    found = dict.fromkeys(e for e in extract_entities(query) if e in graph)
    for word in re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", query):
        for candidate in (word, word.lower()):
            if (
                candidate in graph
                and graph.nodes[candidate].get("kind") != "topic"
                and candidate not in COMMON_WORDS
            ):
                found.setdefault(candidate, None)
    return list(found)


@dataclass
class EntityGraph:
    graph: nx.Graph
    postings: dict[str, list[str]]  # entity -> chunk ids that mention it
    communities: list[dict[str, Any]]

    @classmethod
    def build(cls, chunks: Iterable[Chunk], seed: int = 0) -> EntityGraph:
        graph = nx.Graph()
        postings: dict[str, list[str]] = defaultdict(list)
        topic_counts: dict[str, Counter] = defaultdict(Counter)
        for chunk in chunks:
            entities = extract_entities(chunk.text)[:MAX_ENTITIES_PER_CHUNK]
            if chunk.source == "stdlib-docs" and chunk.topic not in entities:
                entities.insert(0, chunk.topic)  # a module's own docs are about that module, named or not
            topic = f"topic:{chunk.source}/{chunk.topic}"
            graph.add_node(topic, kind="topic")
            for i, entity in enumerate(entities):
                graph.add_node(entity, kind=kind_of(entity))
                postings[entity].append(chunk.id)
                topic_counts[entity][chunk.topic] += 1
                _bump(graph, entity, topic)
                for other in entities[i + 1 :]:
                    _bump(graph, entity, other)
        communities = []
        entity_nodes = graph.subgraph(n for n, k in graph.nodes(data="kind") if k != "topic")
        for i, members in enumerate(
            nx.community.louvain_communities(entity_nodes, weight="weight", resolution=RESOLUTION, seed=seed)
        ):
            if len(members) < 2:
                continue
            by_degree = sorted(members, key=lambda n: (-entity_nodes.degree(n, weight="weight"), n))
            topics: Counter = Counter()
            for member in members:
                topics.update(topic_counts[member])
            communities.append({"id": i, "size": len(members), "central": by_degree[:8], "members": by_degree,
                                "topics": [t for t, _ in topics.most_common(5)]})  # fmt: skip
        for c in communities:
            for member in c["central"]:
                graph.nodes[member]["community"] = c["id"]
        return cls(graph, dict(postings), sorted(communities, key=lambda c: (-c["size"], c["id"])))

    def neighbours(self, entity: str, n: int = 5) -> list[tuple[str, int]]:
        if entity not in self.graph:
            return []
        edges = [
            (o, d["weight"])
            for o, d in self.graph[entity].items()
            if self.graph.nodes[o].get("kind") != "topic"
        ]
        return sorted(edges, key=lambda x: (-x[1], x[0]))[:n]

    def local_search(self, query: str, k: int = 5, expand: int = 5) -> dict[str, Any]:
        """Chunks that mention the query's entities and their strongest neighbours, best first."""
        seeds = query_entities(query, self.graph)
        weights: dict[str, float] = {e: 1.0 for e in seeds}
        for entity in seeds:
            for other, _ in self.neighbours(entity, expand):
                weights.setdefault(other, 0.3)
        scores: Counter = Counter()
        for entity, weight in weights.items():
            for chunk_id in self.postings.get(entity, []):
                scores[chunk_id] += weight / (
                    1 + 0.002 * len(self.postings[entity])
                )  # rarer entities count more
        return {"entities": seeds, "expanded": [e for e in weights if e not in seeds],
                "chunks": [{"id": c, "score": round(s, 4)} for c, s in scores.most_common(k)],
                "communities": [c for c in self.communities if set(c["central"]) & set(seeds)][:3]}  # fmt: skip

    def related(self, a: str, b: str) -> bool:
        return self.graph.has_edge(a, b)


def _bump(graph: nx.Graph, a: str, b: str) -> None:
    if a == b:
        return
    if graph.has_edge(a, b):
        graph[a][b]["weight"] += 1
    else:
        graph.add_edge(a, b, weight=1)


def build_graph(chunks: Sequence[Chunk]) -> EntityGraph:
    return EntityGraph.build(chunks)
