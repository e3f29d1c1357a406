"""router.py, graph.py, reflect.py, evaluate.py: routing, the entity graph, the reflection loop, metrics."""

from __future__ import annotations

import pytest

from shared.chat import ChatResponse, Usage
from stage3_retrieval.context import Context, cite
from stage3_retrieval.evaluate import judge_ranking, load_golden
from stage3_retrieval.graph import build_graph, extract_entities
from stage3_retrieval.reflect import ANSWER, GIVE_UP, REFUSAL, UNKNOWN, SelfReflectiveRAG, next_step
from stage3_retrieval.router import OUT_OF_SCOPE, SemanticRouter, choose_route, load_routes, routing_accuracy


@pytest.mark.exercise("stage3.rank_metrics")
def test_metrics_on_a_hand_made_ranking():
    m = judge_ranking([("r", "a"), ("r", "b"), ("r", "a")], {("r", "b")})
    assert (
        m["hit@1"] == 0
        and m["hit@5"] == 1
        and m["mrr@10"] == 0.5
        and m["ndcg@10"] == pytest.approx(0.6309, abs=1e-4)
    )
    perfect = judge_ranking([("r", "a"), ("r", "b")], {("r", "a"), ("r", "b")})
    assert perfect["ndcg@10"] == pytest.approx(1.0)
    assert judge_ranking([("r", "a"), ("r", "a")], {("r", "a"), ("r", "z")})["ndcg@10"] < 1, (
        "a topic counts once"
    )
    assert judge_ranking([], {("r", "a")})["mrr@10"] == 0


def test_the_golden_set_is_labelled_with_real_topics(corpus_index):
    from stage3_retrieval.answers import load_global_questions

    rows = load_golden()
    assert len(rows) >= 240 and {r["split"] for r in rows} == {"dev", "test", "heldout"}
    assert len({r["id"] for r in rows}) == len(rows)
    known = {(c.source, c.topic) for c in corpus_index.chunks.values()}
    assert all((r["source"], t) in known for r in rows + load_global_questions() for t in r["relevant"])


ROUTING_FLOOR = 0.75


@pytest.mark.exercise("stage3.route_threshold")
def test_the_best_route_wins_only_above_the_threshold():
    scores = {"python-reference": 0.62, "stdlib-docs": 0.41, "course-docs": 0.2}
    assert choose_route(scores, 0.4) == "python-reference"
    assert choose_route({**scores, "stdlib-docs": 0.7}, 0.4) == "stdlib-docs"
    assert choose_route(scores, 0.62) == "python-reference", "a score at the threshold clears it"
    assert choose_route(scores, 0.65) == OUT_OF_SCOPE


@pytest.fixture(scope="module")
def router(corpus_index):
    return SemanticRouter(index=corpus_index)


@pytest.mark.exercise("stage3.route_threshold")
def test_router_sends_labelled_queries_to_their_source(router):
    rows = load_routes("test")
    assert routing_accuracy(router, rows) >= ROUTING_FLOOR
    in_scope = [r for r in rows if r["route"] != OUT_OF_SCOPE]
    assert routing_accuracy(router, in_scope) >= ROUTING_FLOOR


@pytest.mark.parametrize(
    "query", ["What is a good recipe for banana bread?", "Who won the football world cup in 2018?"]
)
@pytest.mark.exercise("stage3.route_threshold")
def test_router_refuses_out_of_scope(router, query):
    decision = router.route(query)
    assert decision.name == OUT_OF_SCOPE and not decision.in_scope


def test_entities_are_read_from_code_like_mentions():
    assert extract_entities('The "with" statement calls __enter__; see "contextlib".') == [
        "with",
        "__enter__",
        "contextlib",
    ]
    assert extract_entities("for the sake of it, with or without") == [], "plain English is not an entity"
    assert "ZeroDivisionError" in extract_entities("raises ZeroDivisionError when dividing by zero")


@pytest.fixture(scope="module")
def graph(corpus_index):
    return build_graph(list(corpus_index.chunks.values()))


def test_the_graph_links_known_related_entities(graph):
    assert graph.related("__enter__", "__exit__")
    assert graph.related("try", "except") and graph.related("raise", "BaseException")
    assert "__exit__" in [n for n, _ in graph.neighbours("__enter__", 10)]
    assert len(graph.communities) >= 5 and all(len(c["members"]) >= 2 for c in graph.communities)


def test_local_search_gathers_context_for_a_relational_question(corpus_index, graph):
    result = graph.local_search('Which clauses can catch what "raise" ... "from" produces?', k=8)
    assert "raise" in result["entities"] and result["expanded"]
    topics = {corpus_index.chunks[c["id"]].topic for c in result["chunks"]}
    assert topics & {"raise", "try", "exceptions"}


class FakeChat:
    name = "fake"

    def __init__(self, reply="Use heapq.nsmallest, which returns the n smallest items of the iterable."):
        self.prompts, self.reply = [], reply

    def chat(self, messages, **kwargs):
        self.prompts.append(messages[-1]["content"])
        return ChatResponse(self.reply, [], "stop", Usage(prompt_tokens=5, completion_tokens=5), 0.0, "fake")


class ScriptedJudge:
    def __init__(self, *answers):
        self.answers, self.calls, self.contexts = list(answers), 0, []

    def __call__(self, question, context):
        self.calls += 1
        self.contexts.append(context)
        return self.answers.pop(0) if self.answers else 0.0


QUESTION = "How do I pick the few smallest items of a big list efficiently?"


@pytest.mark.exercise("stage3.reflect_decision")
def test_the_reflection_decision_needs_the_judge_and_the_retrieval_to_agree():
    assert next_step(0.9, 0.6, 0, 3) == ANSWER and next_step(0.5, 0.3, 2, 3, min_similarity=0.3) == ANSWER
    assert next_step(0.9, 0.1, 0, 3) == "hyde", "a confident judge on a weak retrieval is not enough"
    assert next_step(0.2, 0.9, 1, 3) == "expand", "the strategies take turns"
    assert next_step(0.2, 0.9, 2, 3) == GIVE_UP and next_step(0.4, 0.9, 0, 1) == GIVE_UP, "no rounds left"
    assert next_step(0.2, 0.9, 2, 5) == "hyde"


@pytest.mark.exercise("stage3.rrf", "stage3.reflect_decision")
def test_reflection_rewrites_and_stops_at_max_rounds(retriever, graph):
    judge = ScriptedJudge(0.0, 0.0, 0.0, 0.0)
    rag = SelfReflectiveRAG(retriever, FakeChat(), judge=judge, graph=graph, max_rounds=3, mode="hybrid",
                            on_exhausted="unknown")  # fmt: skip
    result = rag.ask(QUESTION)
    assert judge.calls == 3 and [r.strategy for r in result.rounds] == ["original", "hyde", "expand"]
    assert result.answer == UNKNOWN and result.citations == []
    assert result.rounds[1].query.startswith(QUESTION) and result.rounds[1].query != QUESTION
    assert [s["step"] for s in result.trace].count("rewrite") == 2


@pytest.mark.exercise("stage3.rrf", "stage3.reflect_decision")
def test_by_default_an_exhausted_loop_answers_from_the_first_round(retriever, graph):
    chat, judge = FakeChat(), ScriptedJudge(0.0, 0.0, 0.0)
    result = SelfReflectiveRAG(retriever, chat, judge=judge, graph=graph, max_rounds=3, mode="hybrid").ask(
        QUESTION
    )
    assert judge.calls == 3 and not any(r.sufficient for r in result.rounds)
    assert result.context is judge.contexts[0] and result.context.ids == result.rounds[0].chunk_ids
    assert judge.contexts[0].prompt() in chat.prompts[-1], (
        "the answer is written from the first round's passages"
    )
    answer_step = [s for s in result.trace if s["step"] == "answer"]
    assert len(answer_step) == 1 and answer_step[0]["exhausted"] and answer_step[0]["from_round"] == 1
    with pytest.raises(ValueError, match="on_exhausted"):
        SelfReflectiveRAG(retriever, chat, judge=judge, on_exhausted="maybe")


@pytest.mark.exercise("stage3.rrf", "stage3.reflect_decision")
def test_reflection_answers_with_citations_once_sufficient(retriever, graph):
    rag = SelfReflectiveRAG(retriever, FakeChat(), judge=ScriptedJudge(0.1, 0.9), graph=graph, max_rounds=3,
                            mode="hybrid")  # fmt: skip
    result = rag.ask(QUESTION)
    assert len(result.rounds) == 2 and result.rounds[-1].sufficient
    assert result.citations and set(result.citations) <= set(result.rounds[-1].chunk_ids)
    assert all(c in retriever.index.chunks for c in result.citations) and result.contexts


@pytest.mark.exercise("stage3.route_threshold")
def test_out_of_scope_is_refused_without_retrieval(retriever, router):
    judge = ScriptedJudge()
    result = SelfReflectiveRAG(retriever, FakeChat(), router, judge=judge).ask(
        "What is a good recipe for banana bread?"
    )
    assert result.answer == REFUSAL and result.rounds == [] and judge.calls == 0
    assert [s["step"] for s in result.trace] == ["route"]


@pytest.mark.exercise("stage3.rrf", "stage3.reflect_decision")
def test_one_context_is_judged_answered_cited_and_exported(retriever, graph):
    chat, judge = FakeChat(), ScriptedJudge(0.9)
    result = SelfReflectiveRAG(retriever, chat, judge=judge, graph=graph, mode="hybrid").ask(QUESTION)
    judged = judge.contexts[-1]
    assert result.context is judged and result.contexts == list(judged.passages) and len(judged.passages) == 3
    assert judged.prompt() in chat.prompts[-1], "the answerer reads exactly what the judge read"
    assert all(p.startswith(c.title) for p, c in zip(judged.passages, judged.chunks, strict=True))
    assert set(result.citations) <= set(judged.ids)


def test_citations_need_support_and_can_be_empty(corpus_index):
    nonlocal_chunks = [c for c in corpus_index.chunks.values() if c.topic == "nonlocal"][:1]
    heap_chunks = [c for c in corpus_index.chunks.values() if c.topic == "heapq"][:2]
    context = Context.of(heap_chunks + nonlocal_chunks)
    cited = cite(
        "The nonlocal statement makes a name refer to the binding in the enclosing function scope.", context
    )
    assert cited and corpus_index.chunks[cited[0]].topic == "nonlocal"
    assert cite("The capital of France is Paris.", context) == [], "an unsupported answer cites nothing"
    assert cite("", context) == []


@pytest.mark.exercise("stage3.rrf", "stage3.reflect_decision", "stage3.route_threshold")
def test_the_route_filters_what_the_pipeline_retrieves(retriever, router):
    rag = SelfReflectiveRAG(
        retriever, FakeChat(), router, judge=ScriptedJudge(0.9), route_filter=True, mode="hybrid"
    )
    result = rag.ask("How do I remove every file and folder under a directory tree?")
    assert result.route == "stdlib-docs" and {c.source for c in result.context.chunks} == {"stdlib-docs"}
    assert [s for s in result.trace if s["step"] == "retrieve"][0]["source"] == "stdlib-docs"


@pytest.mark.exercise("stage3.rrf", "stage3.reflect_decision")
def test_export_records_keep_the_contract(corpus_index, retriever, tmp_path):
    import json

    from stage3_retrieval.export import FIELDS, export_records

    rows = [r for r in load_golden("test") if r["id"] in ("g002", "g057")]
    rag = SelfReflectiveRAG(retriever, FakeChat(), judge=ScriptedJudge(0.9, 0.9), mode="hybrid")
    assert export_records(rag, rows, tmp_path / "out.jsonl", {"chunker": "structured"}) == 2
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    for row, rec in zip(rows, records, strict=True):
        assert tuple(rec) == FIELDS and rec["id"] == row["id"] and rec["reference"] == row["answer"]
        assert rec["contexts"] and all(isinstance(c, str) for c in rec["contexts"])
        assert 1 <= len(rec["reference_contexts"]) <= 3
        topics = {(c.source, c.topic) for c in corpus_index.chunks.values()
                  if any(c.text in ref for ref in rec["reference_contexts"])}  # fmt: skip
        assert topics & {(row["source"], t) for t in row["relevant"]}, (
            "reference contexts come from relevant topics"
        )
        assert rec["meta"]["mode"] == "hybrid" and rec["meta"]["chunker"] == "structured"


def test_community_summaries_are_stored_and_searched(corpus_index):
    from stage3_retrieval.communities import GlobalSearch

    communities = corpus_index.communities
    assert len(communities) >= 5 and all(c["summary"] and c["chunk_ids"] for c in communities)
    assert all(i in corpus_index.chunks for c in communities for i in c["chunk_ids"])
    chat = FakeChat("Loops can be left early with break or restarted with continue.")
    found = GlobalSearch(communities, chat, top=3).answer(
        "What kinds of statements can change the flow of control?"
    )
    assert len(found.communities) == 3 and len(chat.prompts) == 4, "three maps, one reduce"
    assert all(p in chat.prompts[-1] for p in found.points), "the reduce step reads every mapped point"
    control = next(c for c in communities if "break" in c["central"])
    assert control["id"] in found.communities, "the control-flow community is among the nearest"


@pytest.mark.exercise("stage3.rrf", "stage3.route_threshold")
def test_answer_evaluation_compares_pipelines_on_the_same_questions(retriever):
    from stage3_retrieval.answers import compare_pipelines

    rows = [r for r in load_golden("test") if r["id"] in ("g002", "g057")]
    report = compare_pipelines(retriever, FakeChat(), rows, ["What is a good recipe for banana bread?"],
                               pipelines=("naive", "hybrid+rerank"))  # fmt: skip
    naive, full = report["pipelines"]["naive"], report["pipelines"]["hybrid+rerank"]
    assert naive["n"] == full["n"] == 2 and 0.0 <= naive["similarity"] <= 1.0
    assert naive["out_of_scope"]["refused"] == 0.0 and full["out_of_scope"]["refused"] == 1.0
    assert all(0.0 <= full[m] <= 1.0 for m in ("context_recall", "context_hit", "rouge_l"))
    assert (
        report["settings"]["naive"]["mode"] == "dense" and report["settings"]["hybrid+rerank"]["route_filter"]
    )


@pytest.mark.slow
@pytest.mark.exercise("stage3.rrf", "stage3.reflect_decision", "stage3.route_threshold")
def test_ask_on_the_real_model_answers_the_demo_question(corpus_index, chat_model, router):
    from stage3_retrieval.hybrid import Retriever

    rag = SelfReflectiveRAG(Retriever(corpus_index), chat_model, router, max_rounds=2)
    result = rag.ask(QUESTION)
    assert result.route == "stdlib-docs" and 1 <= len(result.rounds) <= 2
    assert all(0.0 <= r.p_yes <= 1.0 for r in result.rounds)
    assert "nsmallest" in result.answer and "```" not in result.answer, result.answer
    assert result.citations and corpus_index.chunks[result.citations[0]].topic == "heapq"


@pytest.mark.slow
@pytest.mark.exercise("stage3.route_threshold")
def test_export_eval_on_the_real_model_with_a_regression_flag(corpus_index, tmp_path):
    import json
    import subprocess
    import sys

    from stage3_retrieval.export import FIELDS

    out = tmp_path / "records.jsonl"
    run = subprocess.run([sys.executable, "-m", "stage3_retrieval", "--index", str(corpus_index.path), "export-eval",
                          str(out), "--limit", "1", "--mode", "bm25", "--no-reflect"],
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr[-500:]
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert tuple(record) == FIELDS and record["id"] == load_golden("test")[0]["id"]
    assert (
        record["meta"]["mode"] == "bm25" and record["meta"]["reflect"] is False and record["answer"].strip()
    )
    assert record["contexts"] and record["reference_contexts"]


def test_the_judge_over_a_server_reads_p_yes_from_the_first_tokens_logprobs():
    import math
    from types import SimpleNamespace as NS

    from stage3_retrieval.reflect import ModelJudge

    class Completions:
        def __init__(self, top):
            self.top, self.requests = top, []

        def create(self, **request):
            self.requests.append(request)
            top = [NS(token=t, logprob=math.log(p)) for t, p in self.top]
            return NS(choices=[NS(logprobs=NS(content=[NS(token=self.top[0][0], top_logprobs=top)]))])

    def served(top):
        completions = Completions(top)
        return NS(name="served", client=NS(chat=NS(completions=completions))), completions

    context = Context(("passage",), ())
    model, completions = served([("The", 0.5), (" Yes", 0.3), ("yes", 0.1), ("No", 0.1)])
    assert ModelJudge(model)("q", context) == pytest.approx(0.8), (
        "a reply that opens 'The' still has a P(yes)"
    )
    assert completions.requests[0]["max_tokens"] == 1 and completions.requests[0]["logprobs"] is True
    assert ModelJudge(served([("The", 0.9)])[0])("q", context) == 0.0, (
        "neither yes nor no among the top tokens"
    )
