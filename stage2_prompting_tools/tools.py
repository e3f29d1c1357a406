"""Tools: typed Python functions that a model may call, described to it as JSON schemas.

A model cannot run code. What "tool calling" means is: we show the model a list of functions,
each with a name, a description and a JSON schema of its parameters; the model answers with a
name and JSON arguments; *we* check them and run the function; the result goes back to the model
as a message. So a tool needs three things, and Python already has them:

    def get_weather(city: str) -> dict:          name and parameter types  -> the schema
        \"\"\"Current weather for a city.            first docstring paragraph -> the description

        Args:
            city: City name, e.g. "Lisbon".       Args section              -> parameter descriptions
        \"\"\"

`@tool` turns such a function into a `Tool` whose `.spec` is exactly what the OpenAI API's
`tools=[...]` expects. Before the function runs, the arguments are validated against the schema:
a model's output is untrusted input, like a form a stranger filled in.

The built-in tools: `calculator` (arithmetic through a whitelist walk of Python's AST, never
`eval`), `convert_units`, `current_time`, three that call real public HTTP APIs: Open-Meteo
(`get_weather`), Wikipedia's page summaries (`wiki_summary`) and Frankfurter exchange rates
(`convert_currency`), and one with a side effect, `save_note`, which writes a file under
artifacts/. Their base URLs come from environment variables, and the HTTP client refuses any host
that is not one of them, so a prompt cannot send a request anywhere else. A tool declared with
`@tool(side_effects=True)` changes something in the world; the loop (agent.py) runs it only after
the user confirms.

Every pattern here repeats a bounded number of times (`{1,10}`, never `+`) and a free text has a
`maxLength`, so a model writing arguments under a grammar cannot run past its token budget in
the middle of a string (grammar.py computes the bound; it limits plain strings such as a city to
spans of the user's message).

    python -m stage2_prompting_tools tools            # the registered tools and their schemas
"""

from __future__ import annotations

import ast
import functools
import inspect
import operator
import os
import re
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import quote, urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema


class ToolError(Exception):
    """A tool could not do its job; the message goes back to the model as the tool's result."""


# --------------------------------------------------------------------------------------------
# From a typed function to a JSON schema

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def json_schema_for(annotation: Any) -> dict[str, Any]:
    """A Python type hint as a JSON schema.

    Example: list[str] -> {"type": "array", "items": {"type": "string"}}
             Literal["C", "F"] -> {"type": "string", "enum": ["C", "F"]}
             Annotated[str, {"pattern": "^[0-9]+$"}] -> {"type": "string", "pattern": "^[0-9]+$"}
    """
    # EXERCISE stage2.type_to_schema: str/int/float/bool -> {"type": ...}; Literal -> enum; list/tuple/set -> array of items; dict -> object; Optional[X] -> X; other unions -> anyOf; Annotated adds its dict; else TypeError
    origin = get_origin(annotation)
    if origin is Annotated:  # Annotated[str, {"pattern": ...}]: extra schema keywords ride along
        base, *extras = get_args(annotation)
        return {
            **json_schema_for(base),
            **{k: v for e in extras if isinstance(e, dict) for k, v in e.items()},
        }
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    if origin is Literal:
        values = list(get_args(annotation))
        return {"type": _JSON_TYPES[type(values[0])], "enum": values}
    if origin in (list, tuple, set):
        (item,) = get_args(annotation)[:1] or (str,)
        return {"type": "array", "items": json_schema_for(item)}
    if origin is dict:
        return {"type": "object"}
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        if len(options) == 1:  # Optional[X]: the schema of X; optionality lives in `required`
            return json_schema_for(options[0])
        return {"anyOf": [json_schema_for(a) for a in options]}
    raise TypeError(f"no JSON schema for type {annotation!r}")
    # END EXERCISE


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into (description, {parameter: description})."""
    doc = inspect.cleandoc(doc or "")
    head, _, rest = doc.partition("\nArgs:")
    description = " ".join(head.split("\n\n")[0].split())
    params: dict[str, str] = {}
    current = None
    for line in rest.splitlines():
        if re.match(r"^\S", line):  # a new section (Returns:, Raises:) ends Args
            break
        match = re.match(r"^\s{2,8}(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
        if match:
            current = match.group(1)
            params[current] = match.group(2).strip()
        elif current and line.strip():
            params[current] += " " + line.strip()
    return description, params


def parameters_schema(fn: Callable[..., Any], param_docs: dict[str, str]) -> dict[str, Any]:
    """The JSON schema of `fn`'s arguments, an object: each parameter's type hint as a property, with
    its description from the docstring and its default; required: those without a default."""
    hints = typing.get_type_hints(fn, include_extras=True)
    # EXERCISE stage2.schema_from_signature: one property per parameter (json_schema_for its hint, plus its docstring description and default if any); required: those without a default; no additional properties
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        schema = json_schema_for(hints[param.name])
        if param.name in param_docs:
            schema["description"] = param_docs[param.name]
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
        else:
            schema["default"] = param.default
        properties[param.name] = schema
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    # END EXERCISE


@dataclass
class Tool:
    name: str
    description: str
    function: Callable[..., Any]
    param_docs: dict[str, str] = field(default_factory=dict)  # the docstring's Args section
    side_effects: bool = False  # True: it changes the world (writes, sends, deletes): runs only if confirmed
    schema: dict[str, Any] | None = (
        None  # given as is (a tool from an MCP server) instead of from a signature
    )

    @functools.cached_property
    def parameters(self) -> dict[str, Any]:
        """A JSON schema of type "object", built from the function's signature on first use."""
        return self.schema if self.schema is not None else parameters_schema(self.function, self.param_docs)

    @property
    def spec(self) -> dict[str, Any]:
        """The OpenAI `tools=[...]` entry."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def validate(self, arguments: Any) -> dict[str, Any]:
        """Check arguments against the schema; raise ToolError with the first problem."""
        if not isinstance(arguments, dict):
            raise ToolError(
                f"arguments for {self.name} must be a JSON object, got {type(arguments).__name__}"
            )
        try:
            jsonschema.validate(arguments, self.parameters)
        except jsonschema.ValidationError as e:
            where = ".".join(str(p) for p in e.absolute_path) or "arguments"
            raise ToolError(f"invalid arguments for {self.name}: {where}: {e.message}") from None
        return arguments

    def __call__(self, **arguments: Any) -> Any:
        return self.function(**self.validate(arguments))


def tool(
    function: Callable[..., Any] | None = None, *, name: str | None = None, side_effects: bool = False
) -> Any:
    """Decorator: make a typed, documented function a `Tool`. Usable as `@tool` or `@tool(name=..., side_effects=True)`."""

    def wrap(fn: Callable[..., Any]) -> Tool:
        description, param_docs = parse_docstring(fn.__doc__ or "")
        if not description:
            raise TypeError(f"tool {fn.__name__} needs a docstring: it is the model's only description")
        hints = typing.get_type_hints(fn, include_extras=True)
        for param in inspect.signature(fn).parameters:
            if param not in hints:
                raise TypeError(f"parameter {param!r} of {fn.__name__} needs a type hint")
        # the schema itself is built on first use (Tool.parameters), not when a module of tools is imported
        return Tool(
            name=name or fn.__name__,
            description=description,
            function=fn,
            param_docs=param_docs,
            side_effects=side_effects,
        )

    return wrap(function) if function is not None else wrap


# --------------------------------------------------------------------------------------------
# Local tools

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPONENT = 100
MAX_MAGNITUDE = 1e100


def safe_eval(expression: str) -> float | int:
    """Evaluate arithmetic by walking the AST, allowing only numbers and + - * / // % ** ( ).

    Example: "2 * (3 + 4) ** 2" -> 98 ; "__import__('os')" -> ToolError
    """
    if len(expression) > 200:
        raise ToolError("expression too long (more than 200 characters)")
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
    except SyntaxError:
        raise ToolError(f"not an arithmetic expression: {expression!r}") from None

    def walk(node: ast.AST) -> float | int:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](walk(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
                raise ToolError(f"exponent {right} is too large (limit {MAX_EXPONENT})")
            try:
                value = _BINARY[type(node.op)](left, right)
            except ZeroDivisionError:
                raise ToolError("division by zero") from None
            if isinstance(value, complex) or abs(value) > MAX_MAGNITUDE:
                raise ToolError("result is out of range")
            return value
        raise ToolError(f"only numbers and + - * / // % ** are allowed, not {type(node).__name__}")

    return walk(tree)


# The shape of an expression the calculator takes: up to 8 numbers (at most 10 digits, 4 decimals),
# each with an optional sign and parenthesis, joined by operators. Every repetition is bounded, so
# the longest string it allows is 180 characters: a grammar built on it always fits a token budget.
_OPERAND = r"-?\(?-?[0-9]{1,10}(\.[0-9]{1,4})?\)?"
ARITHMETIC = rf"^{_OPERAND}( ?(\*\*|//|[-+*/%^]) ?{_OPERAND}){{0,7}}$"


@tool
def calculator(expression: Annotated[str, {"pattern": ARITHMETIC}]) -> str:
    """Evaluate an arithmetic expression exactly.

    Args:
        expression: Arithmetic with numbers, + - * / // % ** and parentheses, e.g. "23 * 47".
    """
    value = safe_eval(expression)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return f"{round(value, 10) if isinstance(value, float) else value}"


# unit -> (dimension, factor to the SI-ish base unit); temperatures are handled apart
_UNITS = {
    "m": ("length", 1.0), "km": ("length", 1000.0), "cm": ("length", 0.01), "mm": ("length", 0.001),
    "mi": ("length", 1609.344), "ft": ("length", 0.3048), "in": ("length", 0.0254), "yd": ("length", 0.9144),
    "kg": ("mass", 1.0), "g": ("mass", 0.001), "lb": ("mass", 0.45359237), "oz": ("mass", 0.028349523125),
    "l": ("volume", 1.0), "ml": ("volume", 0.001), "gal": ("volume", 3.785411784),
}  # fmt: skip
_TEMPERATURES = {"C", "F", "K"}
Unit = Literal[
    "m", "km", "cm", "mm", "mi", "ft", "in", "yd", "kg", "g", "lb", "oz", "l", "ml", "gal", "C", "F", "K"
]


def _to_kelvin(value: float, unit: str) -> float:
    return {"C": value + 273.15, "F": (value - 32) * 5 / 9 + 273.15, "K": value}[unit]


def _from_kelvin(value: float, unit: str) -> float:
    return {"C": value - 273.15, "F": (value - 273.15) * 9 / 5 + 32, "K": value}[unit]


@tool
def convert_units(value: float, from_unit: Unit, to_unit: Unit) -> str:
    """Convert a quantity between units of length, mass, volume or temperature.

    Args:
        value: The number to convert.
        from_unit: The unit of the value, e.g. "km", "lb", "C".
        to_unit: The unit to convert to, e.g. "mi", "kg", "F".
    """
    if from_unit in _TEMPERATURES or to_unit in _TEMPERATURES:
        if not {from_unit, to_unit} <= _TEMPERATURES:
            raise ToolError(f"cannot convert {from_unit} to {to_unit}: different dimensions")
        result = _from_kelvin(_to_kelvin(value, from_unit), to_unit)
    else:
        (dim_a, factor_a), (dim_b, factor_b) = _UNITS[from_unit], _UNITS[to_unit]
        if dim_a != dim_b:
            raise ToolError(f"cannot convert {from_unit} ({dim_a}) to {to_unit} ({dim_b})")
        result = value * factor_a / factor_b
    return f"{value:g} {from_unit} = {round(result, 4):g} {to_unit}"


@tool
def current_time(
    timezone: Annotated[str, {"pattern": r"^[A-Za-z_]{1,20}(/[A-Za-z_-]{1,24}){0,2}$"}] = "UTC",
) -> str:
    """The current date and time in a time zone.

    Args:
        timezone: An IANA time zone name, e.g. "Asia/Tokyo" or "Europe/Lisbon".
    """
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(f"unknown time zone {timezone!r}; use an IANA name like 'Europe/Paris'") from None
    return datetime.now(zone).strftime(f"%Y-%m-%d %H:%M ({timezone}, UTC%z)")


# --------------------------------------------------------------------------------------------
# HTTP tools: real public APIs, configurable base URLs, only those hosts

SERVICES = {  # service -> (environment variable, default base URL)
    "open-meteo-geocoding": ("LLM_ROADMAP_GEOCODING_URL", "https://geocoding-api.open-meteo.com"),
    "open-meteo": ("LLM_ROADMAP_OPEN_METEO_URL", "https://api.open-meteo.com"),
    "wikipedia": ("LLM_ROADMAP_WIKIPEDIA_URL", "https://en.wikipedia.org"),
    "frankfurter": ("LLM_ROADMAP_FRANKFURTER_URL", "https://api.frankfurter.app"),
}
HTTP_TIMEOUT_S = float(os.environ.get("LLM_ROADMAP_HTTP_TIMEOUT", "8"))
HTTP_RETRIES = 2
RETRY_BACKOFF_S = 0.3  # doubled at each retry


def base_url(service: str) -> str:
    env, default = SERVICES[service]
    return os.environ.get(env, default).rstrip("/")


def allowed_hosts() -> set[str]:
    return {urlparse(base_url(s)).netloc for s in SERVICES}


def http_get_json(url: str, params: dict[str, Any] | None = None) -> Any:
    """GET a JSON document from a configured host, with a timeout and bounded retries.

    Retries cover what is worth retrying (connection errors, 429, 5xx); a 4xx is the caller's
    mistake and fails at once. Redirects are not followed: they could lead to another host.
    """
    import httpx

    host = urlparse(url).netloc
    if host not in allowed_hosts():
        raise ToolError(
            f"host {host!r} is not configured for tools (allowed: {', '.join(sorted(allowed_hosts()))})"
        )
    last = ""
    for attempt in range(HTTP_RETRIES + 1):
        if attempt:
            time.sleep(RETRY_BACKOFF_S * 2 ** (attempt - 1))
        try:
            response = httpx.get(
                url,
                params=params,
                timeout=HTTP_TIMEOUT_S,
                follow_redirects=False,
                headers={"User-Agent": "llm-engineer-roadmap/0.1 (course tool)"},
            )
        except httpx.TimeoutException:
            last = f"timed out after {HTTP_TIMEOUT_S:g} s"
            continue
        except httpx.HTTPError as e:
            last = f"could not connect ({type(e).__name__})"
            continue
        if response.status_code == 429 or response.status_code >= 500:
            last = f"HTTP {response.status_code}"
            continue
        if response.status_code >= 300:
            raise ToolError(f"{host} answered HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise ToolError(f"{host} did not answer with JSON") from None
    raise ToolError(f"{host}: {last} ({HTTP_RETRIES + 1} attempts)")


_WEATHER_CODES = {0: "clear sky", 1: "mainly clear", 2: "partly cloudy", 3: "overcast", 45: "fog", 48: "fog",
                  51: "light drizzle", 53: "drizzle", 55: "dense drizzle", 61: "light rain", 63: "rain",
                  65: "heavy rain", 71: "light snow", 73: "snow", 75: "heavy snow", 80: "rain showers",
                  81: "rain showers", 82: "violent rain showers", 95: "thunderstorm"}  # fmt: skip


@tool
def get_weather(city: str) -> dict:
    """Current weather for a city: temperature, wind and conditions.

    Args:
        city: City name, e.g. "Lisbon".
    """
    found = http_get_json(
        f"{base_url('open-meteo-geocoding')}/v1/search",
        {"name": city, "count": 1, "language": "en", "format": "json"},
    )
    if not found.get("results"):
        raise ToolError(f"no city called {city!r} was found")
    place = found["results"][0]
    forecast = http_get_json(f"{base_url('open-meteo')}/v1/forecast", {
        "latitude": place["latitude"], "longitude": place["longitude"],
        "current": "temperature_2m,wind_speed_10m,weather_code", "timezone": "auto"})  # fmt: skip
    current, units = forecast["current"], forecast.get("current_units", {})
    return {
        "city": place["name"],
        "country": place.get("country", ""),
        "time": current.get("time"),
        "temperature": f"{current['temperature_2m']} {units.get('temperature_2m', '°C')}",
        "wind_speed": f"{current['wind_speed_10m']} {units.get('wind_speed_10m', 'km/h')}",
        "conditions": _WEATHER_CODES.get(current.get("weather_code"), "unknown"),
    }


@tool
def wiki_summary(title: str) -> dict:
    """The opening summary of a Wikipedia article.

    Args:
        title: The article title, e.g. "Ada Lovelace".
    """
    page = quote(title.strip().replace(" ", "_"), safe="()_,'")
    try:
        data = http_get_json(f"{base_url('wikipedia')}/api/rest_v1/page/summary/{page}")
    except ToolError as e:
        if "HTTP 404" in str(e):
            raise ToolError(f"no Wikipedia article titled {title!r}") from None
        raise
    return {
        "title": data.get("title", title),
        "summary": data.get("extract", ""),
        "url": data.get("content_urls", {}).get("desktop", {}).get("page", ""),
    }


# The currencies of the European Central Bank's reference rates, which Frankfurter publishes.
Currency = Literal["AUD", "BGN", "BRL", "CAD", "CHF", "CNY", "CZK", "DKK", "EUR", "GBP", "HKD", "HUF", "IDR", "ILS",
                   "INR", "ISK", "JPY", "KRW", "MXN", "MYR", "NOK", "NZD", "PHP", "PLN", "RON", "SEK", "SGD", "THB",
                   "TRY", "USD", "ZAR"]  # fmt: skip


@tool
def convert_currency(amount: float, from_currency: Currency, to_currency: Currency) -> str:
    """Convert money between currencies at the latest reference exchange rate.

    Args:
        amount: The amount of money.
        from_currency: ISO 4217 code of the currency to convert from, e.g. "USD".
        to_currency: ISO 4217 code of the currency to convert to, e.g. "EUR".
    """
    source, target = from_currency, to_currency
    if source == target:
        return f"{amount:g} {source} = {amount:g} {target}"
    data = http_get_json(
        f"{base_url('frankfurter')}/latest", {"amount": amount, "from": source, "to": target}
    )
    if target not in data.get("rates", {}):
        raise ToolError(f"no rate from {source} to {target}")
    return f"{amount:g} {source} = {data['rates'][target]:g} {target} (rate of {data.get('date', 'today')})"


# --------------------------------------------------------------------------------------------
# A tool with a side effect


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "note"


@tool(side_effects=True)
def save_note(
    title: Annotated[str, {"pattern": r"^[A-Za-z0-9][A-Za-z0-9 _-]{0,39}$"}],
    text: Annotated[str, {"minLength": 1, "maxLength": 400}],
) -> str:
    """Save a short note to a file, under artifacts/stage2/notes/.

    Args:
        title: A short title for the note, e.g. "groceries".
        text: What the note says.
    """
    from shared import paths

    path = paths.artifacts_dir() / "stage2" / "notes" / f"{_slug(title)}.md"
    paths.atomic_write_text(path, f"# {title}\n\n{text}\n")  # all or nothing: never half a file
    return f"saved the note {title!r} to {path}"


BUILTIN_TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (calculator, convert_units, current_time, get_weather, wiki_summary, convert_currency, save_note)
}


def select_tools(names: str | None, available: dict[str, Tool] | None = None) -> list[Tool]:
    """Tools by comma-separated names ("calculator,get_weather"); all of `available` (the built-ins) when None."""
    available = BUILTIN_TOOLS if available is None else available
    if not names:
        return list(available.values())
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in available]
    if unknown or not chosen:
        raise ValueError(
            f"unknown tool(s) {', '.join(unknown) or repr(names)}; available: {', '.join(available)}"
        )
    return [available[n] for n in chosen]
