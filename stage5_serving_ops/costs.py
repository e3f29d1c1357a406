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

A budget guard prices the worst case of a request before it is sent (its prompt plus max_tokens of
output) and refuses it if the ledger's spend plus that would pass the budget.

    python -m stage5_serving_ops cost            # the price table and the ledger's spend per route and model
"""

from __future__ import annotations

import json
import time
import tomllib
from collections import defaultdict
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
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
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
class BudgetGuard:
    budget_usd: float
    ledger: Ledger

    def __post_init__(self) -> None:
        if self.budget_usd <= 0:
            raise BadInput(f"the budget must be positive, got {self.budget_usd}")

    def check(self, price: Price, prompt_tokens: int, max_tokens: int) -> float:
        """The worst-case cost of the request; raises BudgetExceeded if it could pass the budget."""
        # EXERCISE stage5.budget_guard: price the worst case (max_tokens of output); raise BudgetExceeded if spent + it > budget
        worst = price.cost(prompt_tokens, max_tokens)
        spent = self.ledger.spent()
        if spent + worst > self.budget_usd:
            raise BudgetExceeded(f"refused: ${spent:.6f} spent + up to ${worst:.6f} for this request "
                                 f"would pass the budget of ${self.budget_usd:.6f}")  # fmt: skip
        return worst
        # END EXERCISE


def price_rows(prices: dict[str, Price]) -> list[tuple[str, str, str, str]]:
    return [(p.model + (" (example)" if p.example else ""), f"{p.usd_per_input_token * 1e6:.4f}",
             f"{p.usd_per_output_token * 1e6:.4f}", p.source) for p in prices.values()]  # fmt: skip


def to_dict(prices: dict[str, Price]) -> dict[str, Any]:
    return {name: asdict(p) for name, p in prices.items()}
