"""Loading and chunking: the text a retriever can find is only as good as the pieces it is cut into.

Three sources, all real text that ships with Python or with this course:

    python-reference   the Python Language Reference (pydoc_data.topics: 79 topics such as
                       "nonlocal", "try", "specialnames"); topic = the pydoc key
    stdlib-docs        the docstrings of 60 standard-library modules and their public functions and
                       classes; topic = the module name
    course-docs        this course's own stage READMEs; topic = the package name

Two ways to cut a document into chunks, compared in evaluate.py:

    fixed        windows of `size` characters overlapping by `overlap`, cut at whitespace. Simple,
                 predictable, blind: a window can start mid-sentence and mix two sections.
    structured   paragraphs packed into chunks up to `max_chars`, never across a heading; each
                 chunk is titled by its document and its current heading. Pieces follow the
                 author's structure, so a chunk tends to be about one thing.

Every chunk carries `source`, `topic`, `title`, `position` and an id derived from its content (and
where it comes from), so indexing the same text twice gives the same ids: an upsert, not a duplicate.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from shared.console import console
from shared.paths import REPO_ROOT

SOURCES = ("python-reference", "stdlib-docs", "course-docs")
STDLIB_MODULES = (
    "abc", "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "concurrent.futures",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "doctest", "enum", "fnmatch",
    "fractions", "functools", "glob", "gzip", "hashlib", "heapq", "hmac", "http.client", "inspect",
    "itertools", "json", "logging", "math", "multiprocessing", "operator", "os", "pathlib", "pickle",
    "queue", "random", "re", "secrets", "shutil", "socket", "sqlite3", "statistics", "string", "struct",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "time", "timeit", "traceback", "typing",
    "unittest", "urllib.parse", "uuid", "warnings", "weakref", "zipfile",
)  # fmt: skip
COURSE_PACKAGES = ("stage1_foundations", "stage2_prompting_tools")


@dataclass(frozen=True)
class Document:
    source: str
    topic: str
    title: str
    text: str


@dataclass(frozen=True)
class Chunk:
    id: str
    source: str
    topic: str
    title: str
    position: int
    text: str

    def metadata(self) -> dict[str, str | int]:
        return {"source": self.source, "topic": self.topic, "title": self.title, "position": self.position}

    def to_dict(self) -> dict[str, str | int]:
        return asdict(self)

    def searchable(self) -> str:
        """What the indexes see: the title carries the context a chunk cut from a section loses."""
        return f"{self.title}\n\n{self.text}"


# ---------------------------------------------------------------------------------------------
# Loaders


def load_python_reference() -> Iterator[Document]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        text = topics[key]
        first = text.strip().splitlines()[0] if text.strip() else key
        yield Document("python-reference", key, first.strip(), text)


def module_text(name: str) -> str:
    """The module's docstring, then one '## module.member' section per public function or class."""
    module = importlib.import_module(name)
    parts = [f"# {name}\n\n{inspect.getdoc(module) or ''}"]
    public = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    for member_name in sorted(set(public)):
        member = getattr(module, member_name, None)
        if not (inspect.isclass(member) or inspect.isroutine(member)):
            continue
        home = str(getattr(member, "__module__", "") or "")
        if not home.lstrip("_").startswith(name.split(".")[0]):
            # re-exported from elsewhere (typing's re-exports of abc are not typing's). The C
            # accelerator of a module is its own: heapq.heappush lives in _heapq, bisect's in _bisect.
            continue
        doc = inspect.getdoc(member)
        if doc:
            parts.append(f"## {name}.{member_name}\n\n{doc}")
    return "\n\n".join(parts)


def load_stdlib_docs(modules: Iterable[str] = STDLIB_MODULES) -> Iterator[Document]:
    for name in modules:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated members warn on access
            try:
                text = module_text(name)
            except ImportError as e:
                console.print(f"[yellow]skipped[/] stdlib module {name}: {e}")
                continue
        yield Document("stdlib-docs", name, name, text)


def load_course_docs(root: Path = REPO_ROOT, packages: Iterable[str] = COURSE_PACKAGES) -> Iterator[Document]:
    for package in packages:
        path = root / package / "README.md"
        if not path.is_file():
            console.print(f"[yellow]skipped[/] {path}: not found")
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        title = next(
            (line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("# ")), package
        )
        yield Document("course-docs", package, title, text)


LOADERS: dict[str, Callable[[], Iterable[Document]]] = {
    "python-reference": load_python_reference,
    "stdlib-docs": load_stdlib_docs,
    "course-docs": load_course_docs,
}


def load_documents(sources: Iterable[str] = SOURCES) -> list[Document]:
    documents = []
    for source in sources:
        if source not in LOADERS:
            raise ValueError(f"unknown source {source!r}; choose from {', '.join(SOURCES)}")
        for doc in LOADERS[source]():
            if not doc.text or not doc.text.strip():
                console.print(f"[yellow]skipped[/] {doc.source}/{doc.topic}: empty document")
                continue
            documents.append(doc)
    return documents


# ---------------------------------------------------------------------------------------------
# Chunking


def chunk_id(source: str, topic: str, text: str) -> str:
    return hashlib.sha256(f"{source}\x00{topic}\x00{text}".encode()).hexdigest()[:16]


def make_chunk(doc: Document, position: int, text: str, title: str | None = None) -> Chunk:
    return Chunk(
        chunk_id(doc.source, doc.topic, text), doc.source, doc.topic, title or doc.title, position, text
    )


def windows(text: str, size: int, overlap: int) -> list[str]:
    """Windows of about `size` characters, overlapping by about `overlap`, cut at whitespace.

    Example: windows("a b c d e f", 5, 2) -> ["a b c", "c d e", "e f"]
    """
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError(f"need size > 0 and 0 <= overlap < size, got size={size}, overlap={overlap}")
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    out, i = [], 0
    while i < len(words):
        j = i
        while j + 1 < len(words) and words[j + 1][1] - words[i][0] <= size:
            j += 1
        out.append(text[words[i][0] : words[j][1]])
        if j + 1 >= len(words):
            break
        # the next window starts at the first word that begins within `overlap` chars of this one's end
        nxt = j + 1
        while nxt - 1 > i and words[j][1] - words[nxt - 1][0] <= overlap:
            nxt -= 1
        i = nxt
    return out


def chunk_fixed(doc: Document, size: int = 800, overlap: int = 150) -> list[Chunk]:
    return [make_chunk(doc, i, piece) for i, piece in enumerate(windows(doc.text, size, overlap))]


UNDERLINE = re.compile(r"^([*=\-~^#])\1{2,}\s*$")
MARKDOWN_HEADING = re.compile(r"^(#{1,4})\s+(.+)$")


def sections(text: str) -> list[tuple[str | None, list[str]]]:
    """Split into (heading, paragraphs). Headings: markdown '#' lines and reST-style underlined lines."""
    lines = text.splitlines()
    out: list[tuple[str | None, list[str]]] = [(None, [])]
    paragraph: list[str] = []
    in_code = False

    def flush() -> None:
        if paragraph and "".join(paragraph).strip():
            out[-1][1].append("\n".join(paragraph).strip("\n"))
        paragraph.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            in_code = not in_code
        heading = None
        if not in_code:
            markdown = MARKDOWN_HEADING.match(line)
            if markdown:
                heading = markdown.group(2).strip()
            elif (
                line.strip()
                and i + 1 < len(lines)
                and UNDERLINE.match(lines[i + 1])
                and not UNDERLINE.match(line)
            ):
                heading, i = line.strip(), i + 1
        if heading is not None:
            flush()
            out.append((heading, []))
        elif not line.strip() and not in_code:
            flush()
        else:
            paragraph.append(line)
        i += 1
    flush()
    return [(h, ps) for h, ps in out if ps]


def chunk_structured(doc: Document, max_chars: int = 1000) -> list[Chunk]:
    """Paragraphs packed up to `max_chars` within one section; an oversized paragraph is windowed."""
    chunks: list[Chunk] = []
    for heading, paragraphs in sections(doc.text):
        title = doc.title if heading in (None, doc.title) else f"{doc.title} > {heading}"
        current: list[str] = []
        pieces = [p for para in paragraphs for p in (windows(para, max_chars, 100) if len(para) > max_chars
                                                      else [para])]  # fmt: skip
        for piece in pieces:
            if current and sum(len(c) + 2 for c in current) + len(piece) > max_chars:
                chunks.append(make_chunk(doc, len(chunks), "\n\n".join(current), title))
                current = []
            current.append(piece)
        if current:
            chunks.append(make_chunk(doc, len(chunks), "\n\n".join(current), title))
    return chunks


CHUNKERS: dict[str, Callable[[Document], list[Chunk]]] = {
    "structured": chunk_structured,
    "fixed": chunk_fixed,
}


def chunk_documents(documents: Iterable[Document], chunker: str = "structured") -> list[Chunk]:
    if chunker not in CHUNKERS:
        raise ValueError(f"unknown chunker {chunker!r}; choose from {', '.join(CHUNKERS)}")
    seen: dict[str, Chunk] = {}
    for doc in documents:
        for chunk in CHUNKERS[chunker](doc):
            seen.setdefault(chunk.id, chunk)  # identical text in one topic is one chunk
    return list(seen.values())
