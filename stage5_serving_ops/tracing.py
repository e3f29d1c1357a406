"""Tracing: following one request through every step it took, so a bad answer can be traced to its cause.

A *trace* is one request's story; it is made of *spans*, each a timed step (a retrieval, a chat call)
with attributes, nested by parent. When an answer is wrong, the trace says whether retrieval brought
the wrong chunks (look at the retriever span's document ids), whether the prompt was cut (token
counts), or whether the model alone went astray, and how long each part took.

We record spans with OpenTelemetry (the vendor-neutral standard) and name the attributes in the
OpenInference convention that LLM observability tools (Arize Phoenix among them) understand:

    openinference.span.kind   LLM | RETRIEVER | TOOL | CHAIN
    llm.model_name, llm.token_count.prompt / completion / total, llm.invocation_parameters
    input.value, output.value
    retrieval.documents.N.document.id / .score
    tool.name, tool.parameters

Spans go to a local JSONL file (`artifacts/stage5/traces.jsonl`): no server needed, `traces` prints
them as trees. To browse them in Phoenix instead, start it in its own environment (`make phoenix`)
and run `demo --otlp http://127.0.0.1:6006/v1/traces` (or set OTEL_EXPORTER_OTLP_TRACES_ENDPOINT).

    python -m stage5_serving_ops traces --last 3
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import BadInput


def default_trace_path() -> Path:
    return paths.artifacts_dir() / "stage5" / "traces.jsonl"


def span_to_dict(span: Any) -> dict[str, Any]:
    context, parent = span.get_span_context(), span.parent
    return {"name": span.name, "trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}",
            "parent_id": f"{parent.span_id:016x}" if parent else None, "start": span.start_time / 1e9,
            "duration_ms": (span.end_time - span.start_time) / 1e6, "status": span.status.status_code.name,
            "attributes": dict(span.attributes or {})}  # fmt: skip


def make_exporter(path: Path) -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonlSpanExporter(SpanExporter):
        """Appends each finished span as one JSON line (one write per span: a crash cuts at most one)."""

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(span_to_dict(s)) + "\n" for s in spans))
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    return JsonlSpanExporter()


class Tracing:
    """A tracer writing to a JSONL file, and to an OTLP endpoint (Phoenix) when given one."""

    def __init__(
        self, path: Path | None = None, otlp_endpoint: str | None = None, service: str = "llm-roadmap"
    ):
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        self.path = Path(path or default_trace_path())
        self.service = service
        # Phoenix files spans under the project their resource names (its "default" otherwise)
        self.provider = TracerProvider(resource=Resource.create({"service.name": service,
                                                                 "openinference.project.name": service}))  # fmt: skip
        self.provider.add_span_processor(SimpleSpanProcessor(make_exporter(self.path)))
        endpoint = otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        if endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self.tracer = self.provider.get_tracer("stage5_serving_ops")

    @contextmanager
    def span(self, name: str, kind: str = "CHAIN", **attributes: Any) -> Iterator[Any]:
        with self.tracer.start_as_current_span(name) as span:
            span.set_attribute("openinference.span.kind", kind)
            for key, value in attributes.items():
                span.set_attribute(key, value)
            yield span

    def chat(self, model: Any, messages: list[dict[str, Any]], route: str = "default", **kwargs: Any) -> Any:
        """`model.chat(messages, **kwargs)` inside an LLM span carrying the model, tokens and latency."""
        from opentelemetry.trace import Status, StatusCode

        with self.span("chat", "LLM", **{"llm.model_name": model.name, "route": route,
                                         "llm.invocation_parameters": json.dumps(kwargs, default=str),
                                         "input.value": messages[-1].get("content", "") if messages else ""}) as span:  # fmt: skip
            start = time.perf_counter()
            try:
                response = model.chat(messages, **kwargs)
            except Exception as e:
                span.set_status(Status(StatusCode.ERROR, str(e)[:200]))
                raise
            span.set_attribute("output.value", response.text)
            span.set_attribute("llm.token_count.prompt", response.usage.prompt_tokens)
            span.set_attribute("llm.token_count.completion", response.usage.completion_tokens)
            span.set_attribute("llm.token_count.total", response.usage.total_tokens)
            span.set_attribute("latency_ms", (time.perf_counter() - start) * 1000)
            return response

    def retrieval(
        self, query: str, documents: Sequence[tuple[Any, ...]] | Callable[[str], Sequence[tuple[Any, ...]]]
    ) -> Any:
        """A RETRIEVER span. `documents`: the (id, score, ...) tuples already found, or a search function
        called inside the span (so that the span times it); either way they are recorded and returned."""
        with self.span("retrieve", "RETRIEVER", **{"input.value": query}) as span:
            found = documents(query) if callable(documents) else documents
            for i, (doc_id, score, *_) in enumerate(found):
                span.set_attribute(f"retrieval.documents.{i}.document.id", str(doc_id))
                span.set_attribute(f"retrieval.documents.{i}.document.score", float(score))
            return found

    def tool(self, name: str, function: Callable[..., Any], arguments: dict[str, Any]) -> Any:
        """`function(**arguments)` inside a TOOL span carrying the tool's name, arguments and result."""
        from opentelemetry.trace import Status, StatusCode

        with self.span(name, "TOOL", **{"tool.name": name, "tool.parameters": json.dumps(arguments),
                                        "input.value": json.dumps(arguments)}) as span:  # fmt: skip
            try:
                result = function(**arguments)
            except Exception as e:
                span.set_status(Status(StatusCode.ERROR, str(e)[:200]))
                raise
            span.set_attribute(
                "output.value", json.dumps(result, default=str) if not isinstance(result, str) else result
            )
            return result

    def shutdown(self) -> None:
        self.provider.shutdown()


def read_traces(path: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """Spans grouped by trace id, traces in the order they started."""
    path = Path(path or default_trace_path())
    if not path.is_file():
        raise BadInput(
            f"no traces at {path}: run `python -m stage5_serving_ops demo` (or any traced call) first"
        )
    traces: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            span = json.loads(line)
        except json.JSONDecodeError:
            continue
        traces.setdefault(span["trace_id"], []).append(span)
    return dict(sorted(traces.items(), key=lambda item: min(s["start"] for s in item[1])))


SHOWN = ("llm.model_name", "route", "llm.token_count.prompt", "llm.token_count.completion", "input.value",
         "output.value")  # fmt: skip


def render_tree(spans: list[dict[str, Any]]) -> Any:
    """A rich Tree of one trace: each span with its duration and the attributes worth reading."""
    from rich.markup import escape
    from rich.tree import Tree

    def label(span: dict[str, Any]) -> str:
        attrs = span["attributes"]
        shown = [f"{k.removeprefix('llm.')}={escape(str(attrs[k]))[:80]!s}" for k in SHOWN if k in attrs]
        docs = [attrs[k] for k in sorted(attrs) if k.endswith(".document.id")]
        if docs:
            shown.append(f"documents={', '.join(str(d)[:12] for d in docs)}")
        status = "" if span["status"] != "ERROR" else " [red]ERROR[/red]"
        kind = attrs.get("openinference.span.kind", "")
        return f"[bold]{span['name']}[/bold] ({kind}, {span['duration_ms']:.0f} ms){status}  " + "  ".join(
            shown
        )

    by_parent: dict[str | None, list[dict[str, Any]]] = {}
    ids = {s["span_id"] for s in spans}
    for span in sorted(spans, key=lambda s: s["start"]):
        parent = span["parent_id"] if span["parent_id"] in ids else None
        by_parent.setdefault(parent, []).append(span)
    tree = Tree(f"trace {spans[0]['trace_id'][:16]}")

    def add(node: Any, parent: str | None) -> None:
        for span in by_parent.get(parent, []):
            add(node.add(label(span)), span["span_id"])

    add(tree, None)
    return tree
