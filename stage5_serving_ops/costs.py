"""What a request costs: token accounting, a price table, and a budget guard.

Every OpenAI-compatible response carries `usage`: prompt (input) tokens and completion (output)
tokens. Cost is arithmetic on those two numbers:

    cost = prompt_tokens * price_in + completion_tokens * price_out

Hosted APIs publish price_in and price_out per million tokens (output costs more: each output
token is a full decode step, while a prompt is processed in one parallel prefill). For a model you
serve yourself there is no price list, only a bill for the hardware per hour. Turn it into a price
per token with the throughput you measured on it:

    price_out = usd_per_hour / 3600 / output_tokens_per_second      (input: a fraction of that)

which is why batching matters for money, not only for speed: the same machine at 1.5x the
throughput makes every token 1.5x cheaper. The table lives in `data/prices.toml`; the local
throughput comes from the last `bench` report when there is one.

A budget guard must hold when requests run at once, which is exactly when a budget is spent fastest.
"Check the spend, send, record the cost" does not: eight requests sent together all read the same
spend before any of them has recorded its cost, and all eight pass. So the guard *reserves*:

    reserve   under a lock: worst = prompt + max_tokens of output at the price; refuse if
              spent + reserved + worst > budget, else reserved += worst          (before sending)
    settle    under the same lock: record the real cost from `usage`, spent += real,
              reserved -= worst                                                   (after the answer)
    release   the request failed before it cost anything: reserved -= worst

A request can never cost more than its reservation (the output stops at max_tokens and the prompt
was counted before sending), so at every moment spent + reserved bounds what can have been spent,
and the budget is never passed. What was reserved and not used comes back at settle. This is the
same pattern as a card payment's authorisation (hold the maximum) and capture (charge the real
amount). The lock is a thread lock: the guard protects one process. Processes that share one budget
need the reservation in shared storage (a database row updated in a transaction, Redis INCRBYFLOAT).

    python -m stage5_serving_ops cost            # the price table and the ledger's spend per route and model
"""

from __future__ import annotations

import json
import os
import threading
import time
import tomllib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shared import paths
from shared.console import BadInput, WorkFailed

PRICES_PATH = Path(__file__).parent / "data" / "prices.toml"
INPUT_TOKEN_WEIGHT = 0.1  # local prefill: roughly ten prompt tokens go through in the time of one decode step


class BudgetExceeded(WorkFailed):
    """The request was refused before it was sent: it could push spend past the budget."""


@dataclass(frozen=True)
class Price:
    model: str
    usd_per_input_token: float
    usd_per_output_token: float
    source: str  # how the figure was obtained, in words
    example: bool = False  # an illustrative figure, not a quote

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        if prompt_tokens < 0 or completion_tokens < 0:
            raise BadInput(f"token counts cannot be negative ({prompt_tokens}, {completion_tokens})")
        # EXERCISE stage5.cost_per_request: input tokens at the input price plus output tokens at the output price
        return prompt_tokens * self.usd_per_input_token + completion_tokens * self.usd_per_output_token
        # END EXERCISE


def measured_throughput(model: str, reports: Path | None = None) -> float | None:
    """The best output tokens/s the last serving bench measured for this model, if it measured one."""
    path = (reports or paths.reports_dir()) / "stage5_serving.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if report.get("model") != model:
        return None
    rates = [
        level.get("output_tokens_per_s") or 0 for level in report.get("levels", []) if not level.get("errors")
    ]
    return max(rates, default=0) or None


def _number(table: dict[str, Any], key: str, where: str) -> float:
    value = table.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise BadInput(f"{where}: {key} must be a positive number, got {value!r}")
    return float(value)


def load_prices(
    path: Path = PRICES_PATH, reports: Path | None = None, use_measured: bool = True
) -> dict[str, Price]:
    try:
        config = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise BadInput(f"cannot read the price table {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"{path} is not valid TOML: {e}") from None
    prices: dict[str, Price] = {}
    for model, entry in config.get("local", {}).items():
        where = f"{path} [local.{model}]"
        per_hour = _number(entry, "usd_per_hour", where)
        rate, source = _number(entry, "tokens_per_second", where), "configured throughput"
        measured = measured_throughput(model, reports) if use_measured else None
        if measured:
            rate, source = measured, "throughput measured by the last bench"
        # EXERCISE stage5.local_price: dollars per output token = dollars per hour / seconds per hour / tokens per second
        out = per_hour / 3600 / rate
        # END EXERCISE
        prices[model] = Price(model, out * INPUT_TOKEN_WEIGHT, out, f"{entry.get('hardware', 'local')} at "
                              f"${per_hour:.2f}/h, {rate:.1f} tok/s ({source})", bool(entry.get("example")))  # fmt: skip
    for model, entry in config.get("hosted", {}).items():
        where = f"{path} [hosted.{model}]"
        prices[model] = Price(model, _number(entry, "usd_per_million_input", where) / 1e6,
                              _number(entry, "usd_per_million_output", where) / 1e6, "hosted price list",
                              bool(entry.get("example")))  # fmt: skip
    if not prices:
        raise BadInput(f"{path} prices no model: add a [local.NAME] or [hosted.NAME] table")
    return prices


def price_for(prices: dict[str, Price], model: str) -> Price:
    if model not in prices:
        raise BadInput(
            f"no price for model {model!r} in the price table; priced: {', '.join(sorted(prices))}"
        )
    return prices[model]


def default_ledger_path() -> Path:
    return paths.artifacts_dir() / "stage5" / "costs.jsonl"


class Ledger:
    """Every priced request, one JSON line each (appended whole, so a crash loses at most the last)."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path or default_ledger_path())

    def record(self, price: Price, prompt_tokens: int, completion_tokens: int, route: str = "default",
               request_id: str = "") -> dict[str, Any]:  # fmt: skip
        entry = {"time": time.time(), "model": price.model, "route": route, "request_id": request_id,
                 "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "usd": price.cost(prompt_tokens, completion_tokens)}  # fmt: skip
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f:  # appends, and can read the last byte
            # a line cut short by a crash has no newline: end it first, or this entry would join it and be lost too
            size, cut_short = f.seek(0, os.SEEK_END), False
            if size:
                f.seek(size - 1)
                cut_short = f.read(1) != b"\n"
            f.write((("\n" if cut_short else "") + json.dumps(entry) + "\n").encode())
        return entry

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: skip it, keep the rest
        return rows

    def spent(self) -> float:
        return sum(e["usd"] for e in self.entries())

    def summary(self) -> dict[str, Any]:
        return summarise(self.entries())


def summarise(entries: list[dict[str, Any]]) -> dict[str, Any]:
    def group(key: str) -> dict[str, dict[str, float]]:
        totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for e in entries:
            row = totals[e[key]]
            row["requests"] += 1
            row["prompt_tokens"] += e["prompt_tokens"]
            row["completion_tokens"] += e["completion_tokens"]
            row["usd"] += e["usd"]
        return {
            name: {**row, "usd_per_request": row["usd"] / row["requests"]} for name, row in totals.items()
        }

    total = sum(e["usd"] for e in entries)
    return {"requests": len(entries), "usd": total, "usd_per_request": total / len(entries) if entries else 0.0,
            "by_route": group("route"), "by_model": group("model")}  # fmt: skip


@dataclass
class Reservation:
    """The worst case held for one request until `settle` or `release`."""

    price: Price
    worst_usd: float
    open: bool = True


class BudgetGuard:
    """Reserve the worst case before a request, settle the real cost after (see the module's essay).

    reservation = guard.reserve(price, prompt_tokens, max_tokens)     # BudgetExceeded: not sent
    response = send(...)
    guard.settle(reservation, response.usage.prompt_tokens, response.usage.completion_tokens, route)
    """

    def __init__(self, budget_usd: float, ledger: Ledger):
        if budget_usd <= 0:
            raise BadInput(f"the budget must be positive, got {budget_usd}")
        self.budget_usd, self.ledger = budget_usd, ledger
        self.spent_usd = ledger.spent()  # what the ledger already holds counts against the budget
        self.reserved_usd = 0.0
        self._lock = threading.Lock()

    def reserve(self, price: Price, prompt_tokens: int, max_tokens: int) -> Reservation:
        """Hold the request's worst-case cost; raise BudgetExceeded (and hold nothing) if it could pass the budget."""
        # EXERCISE stage5.budget_guard: under the lock, worst = the cost of prompt_tokens in and max_tokens out; refuse if spent + reserved + worst > budget, else add it to reserved
        worst = price.cost(prompt_tokens, max_tokens)
        with self._lock:
            if self.spent_usd + self.reserved_usd + worst > self.budget_usd:
                raise BudgetExceeded(f"refused: ${self.spent_usd:.6f} spent + ${self.reserved_usd:.6f} held for "
                                     f"requests in flight + up to ${worst:.6f} for this one would pass the budget "
                                     f"of ${self.budget_usd:.6f}")  # fmt: skip
            self.reserved_usd += worst
        return Reservation(price, worst)
        # END EXERCISE

    def settle(self, reservation: Reservation, prompt_tokens: int, completion_tokens: int, route: str = "default",
               request_id: str = "") -> dict[str, Any]:  # fmt: skip
        """Record the real cost in the ledger and give back the rest of the reservation."""
        with self._lock:
            self._close(reservation)
            entry = self.ledger.record(reservation.price, prompt_tokens, completion_tokens, route, request_id)
            if entry["usd"] > reservation.worst_usd + 1e-12:  # the prompt was undercounted before sending
                entry["over_reservation_usd"] = entry["usd"] - reservation.worst_usd
            self.spent_usd += entry["usd"]
        return entry

    def release(self, reservation: Reservation) -> None:
        """The request failed before it was charged: hold nothing for it any more."""
        with self._lock:
            self._close(reservation)

    def _close(self, reservation: Reservation) -> None:
        if not reservation.open:
            raise ValueError("this reservation was already settled or released")
        reservation.open = False
        self.reserved_usd -= reservation.worst_usd


def prompt_token_counter(model: str) -> Callable[[list[dict[str, str]]], int]:
    """messages -> the number of prompt tokens the server will bill, counted before sending with the
    model's own tokenizer and chat template (the server renders the same template): what `reserve`
    needs to hold a true worst case."""
    from transformers import AutoTokenizer

    from shared.models import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve(model, kind="chat"))

    def count(messages: list[dict[str, str]]) -> int:
        encoded = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return len(encoded["input_ids"])

    return count


def price_rows(prices: dict[str, Price]) -> list[tuple[str, str, str, str]]:
    return [(p.model + (" (example)" if p.example else ""), f"{p.usd_per_input_token * 1e6:.4f}",
             f"{p.usd_per_output_token * 1e6:.4f}", p.source) for p in prices.values()]  # fmt: skip


def to_dict(prices: dict[str, Price]) -> dict[str, Any]:
    return {name: asdict(p) for name, p in prices.items()}
