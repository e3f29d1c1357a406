"""Console output shared by every command of the course.

The contract every command keeps: machine-readable output (`--json`) goes to stdout and nothing else
does; logs, tables meant for eyes, and progress bars go to stderr. Exit codes: 0 success, 1 the
work failed, 2 bad usage or bad input, always with one clear line and never a traceback.

A command raises `BadInput` (exit 2) or `WorkFailed` (exit 1) with a message written for the
learner, and `run_cli` turns it into that one line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

# stderr: everything for humans. stdout stays clean for --json and for piping.
console = Console(stderr=True, highlight=False)


class CourseError(Exception):
    """An error with a message meant for the learner; `exit_code` says which kind."""

    exit_code = 1


class BadInput(CourseError):
    """Bad usage or bad input: the learner can fix the command line or the file."""

    exit_code = 2


class WorkFailed(CourseError):
    """The input was fine but the work failed (a server died, a model would not load)."""

    exit_code = 1


def one_line(message: object) -> str:
    """Collapse a message to one line; exceptions from libraries can span many."""
    text = " ".join(str(message).split())
    return text if len(text) <= 400 else text[:397] + "..."


def error(message: object) -> None:
    console.print(f"[bold red]error:[/] {one_line(message)}", soft_wrap=True)


def print_json(obj: Any) -> None:
    """Write one JSON document to stdout (the only thing a --json command prints there)."""
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    t = Table(title=title, show_lines=False)
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    return t


def show(renderable: Any) -> None:
    console.print(renderable)


@contextmanager
def progress(transient: bool = False) -> Iterator[Progress]:
    """A rich progress display on stderr: `with progress() as p: task = p.add_task("x", total=n)`."""
    columns = (
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=transient) as p:
        yield p


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command's `main`, turning course errors and Ctrl-C into one line and an exit code."""
    try:
        return int(main(argv) or 0)
    except CourseError as e:
        error(e)
        return e.exit_code
    except KeyboardInterrupt:
        error("interrupted")
        return 130
