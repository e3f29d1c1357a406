"""tools.py: schemas from signatures, argument validation, the safe calculator, the HTTP tools."""

from __future__ import annotations

from typing import Literal

import pytest

from stage2_prompting_tools import tools as tools_module
from stage2_prompting_tools.sample_apis import serve_sample_apis
from stage2_prompting_tools.tools import (
    ARITHMETIC,
    BUILTIN_TOOLS,
    ToolError,
    calculator,
    convert_currency,
    convert_units,
    current_time,
    get_weather,
    http_get_json,
    safe_eval,
    save_note,
    select_tools,
    tool,
    wiki_summary,
)


@tool
def book_flight(origin: str, destination: str, passengers: int = 1, cabin: Literal["economy", "business"] = "economy",
                stops: list[str] | None = None) -> str:  # fmt: skip
    """Book a flight between two airports.

    A longer explanation that is not part of the description.

    Args:
        origin: IATA code of the departure airport,
            for example "LIS".
        destination: IATA code of the arrival airport.
        passengers: How many people travel.
        cabin: The cabin class.
        stops: Airports to stop at on the way.

    Returns:
        A confirmation.
    """
    return f"{origin}->{destination} x{passengers} {cabin} via {stops or []}"


@pytest.mark.exercise("stage2.type_to_schema", "stage2.schema_from_signature")
def test_schema_from_signature_and_docstring():
    spec = book_flight.spec
    assert spec["type"] == "function"
    fn = spec["function"]
    assert fn["name"] == "book_flight" and fn["description"] == "Book a flight between two airports."
    params = fn["parameters"]
    assert params["required"] == ["origin", "destination"]
    assert params["properties"]["origin"] == {
        "type": "string", "description": 'IATA code of the departure airport, for example "LIS".'}  # fmt: skip
    assert params["properties"]["passengers"] == {"type": "integer", "description": "How many people travel.",
                                                  "default": 1}  # fmt: skip
    assert params["properties"]["cabin"]["enum"] == ["economy", "business"]
    assert params["properties"]["stops"]["type"] == "array" and params["properties"]["stops"]["items"] == {
        "type": "string"}  # fmt: skip
    assert params["additionalProperties"] is False


@pytest.mark.parametrize(
    "arguments, problem",
    [
        ({"origin": "LIS"}, "'destination' is a required property"),
        ({"origin": "LIS", "destination": "NRT", "passengers": "two"}, "'two' is not of type 'integer'"),
        ({"origin": "LIS", "destination": "NRT", "passengers": 1.5}, "is not of type 'integer'"),
        ({"origin": "LIS", "destination": "NRT", "cabin": "first"}, "'first' is not one of"),
        ({"origin": "LIS", "destination": "NRT", "seat": "1A"}, "Additional properties"),
    ],
)
@pytest.mark.exercise("stage2.type_to_schema", "stage2.schema_from_signature")
def test_validation_rejects_wrong_arguments_before_running(arguments, problem):
    with pytest.raises(ToolError, match=problem):
        book_flight(**arguments)


@pytest.mark.exercise("stage2.type_to_schema", "stage2.schema_from_signature")
def test_valid_arguments_run_the_function():
    assert book_flight(origin="LIS", destination="NRT", passengers=2) == "LIS->NRT x2 economy via []"


def test_tools_need_docstrings_and_type_hints():
    with pytest.raises(TypeError, match="docstring"):
        tool(lambda x: x)

    def untyped(x):
        """Does things."""

    with pytest.raises(TypeError, match="type hint"):
        tool(untyped)


@pytest.mark.parametrize("expression, result", [("23*47", "1081"), ("2 * (3 + 4) ** 2", "98"), ("7 / 2", "3.5"),
                                                ("-(2 ** 10) // 3", "-342"), ("10 % 4", "2"), ("2^8", "256")])  # fmt: skip
@pytest.mark.exercise("stage2.type_to_schema", "stage2.schema_from_signature")
def test_calculator_evaluates_arithmetic(expression, result):
    assert calculator(expression=expression) == result


@pytest.mark.parametrize(
    "expression, problem",
    [
        ("__import__('os').system('ls')", "not Call"),
        ("x + 1", "not Name"),
        ("(1).__class__", "not Attribute"),
        ("print(1)", "not Call"),
        ("9 ** 9 ** 9", "too large"),
        ("10 ** 99 * 10 ** 99", "out of range"),
        ("1 / 0", "division by zero"),
        ("[1, 2]", "not List"),
        ("1 +", "not an arithmetic expression"),
        ("1" * 300, "too long"),
    ],
)
@pytest.mark.exercise("stage2.type_to_schema", "stage2.schema_from_signature")
def test_calculator_refuses_everything_but_arithmetic(expression, problem):
    """The AST walk is the real defence; the schema's pattern is a second layer in front of it."""
    with pytest.raises(ToolError, match=problem):
        safe_eval(expression)
    with pytest.raises(ToolError):
        calculator(expression=expression)


@pytest.mark.exercise("stage2.type_to_schema", "stage2.schema_from_signature")
def test_local_tools():
    assert convert_units(value=10, from_unit="km", to_unit="mi") == "10 km = 6.2137 mi"
    assert convert_units(value=100, from_unit="C", to_unit="F") == "100 C = 212 F"
    with pytest.raises(ToolError, match="different dimensions|cannot convert"):
        convert_units(value=1, from_unit="kg", to_unit="m")
    assert "(Asia/Tokyo, UTC+0900)" in current_time(timezone="Asia/Tokyo")
    with pytest.raises(ToolError, match="unknown time zone"):
        current_time(timezone="Mars/Olympus")


@pytest.mark.exercise("stage2.type_to_schema", "stage2.schema_from_signature")
def test_http_tools_parse_the_real_response_shapes(sample_apis):
    weather = get_weather(city="Lisbon")
    assert weather["country"] == "Portugal" and weather["temperature"] == "17.4 °C"
    assert weather["conditions"] == "partly cloudy"
    assert wiki_summary(title="Ada Lovelace")["summary"].startswith("Augusta Ada King")
    assert wiki_summary(title="Python (programming language)")["title"] == "Python (programming language)"
    assert convert_currency(amount=100, from_currency="USD", to_currency="EUR").startswith(
        "100 USD = 92.2339 EUR"
    )


@pytest.mark.exercise("stage2.type_to_schema", "stage2.schema_from_signature")
def test_http_failures_become_tool_errors(sample_apis, monkeypatch):
    with pytest.raises(ToolError, match="no city"):
        get_weather(city="Atlantis")
    with pytest.raises(ToolError, match="no Wikipedia article"):
        wiki_summary(title="No Such Page Anywhere")
    monkeypatch.setattr(tools_module, "RETRY_BACKOFF_S", 0.0)  # retries without waiting
    with pytest.raises(ToolError, match=r"HTTP 500 \(3 attempts\)"):
        get_weather(city="Errorville")


@pytest.mark.exercise("stage2.type_to_schema", "stage2.schema_from_signature")
def test_timeouts_become_tool_errors(monkeypatch):
    monkeypatch.setattr(tools_module, "HTTP_TIMEOUT_S", 0.2)
    monkeypatch.setattr(tools_module, "RETRY_BACKOFF_S", 0.0)
    with serve_sample_apis(delay_s=1.0) as env:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(ToolError, match="timed out"):
            wiki_summary(title="Ada Lovelace")


def test_a_host_that_is_not_configured_is_refused(sample_apis):
    with pytest.raises(ToolError, match="not configured"):
        http_get_json("http://169.254.169.254/latest/meta-data")
    with pytest.raises(ToolError, match="not configured"):
        http_get_json("https://evil.example.com/steal")


@pytest.mark.exercise("stage2.type_to_schema", "stage2.schema_from_signature")
def test_annotated_hints_carry_extra_schema_keywords():
    assert calculator.parameters["properties"]["expression"]["pattern"] == ARITHMETIC
    with pytest.raises(ToolError, match="does not match"):
        calculator(expression="os.system('x')")
    with pytest.raises(ToolError, match="is not one of"):
        convert_currency(amount=1, from_currency="usd", to_currency="EUR")


@pytest.mark.exercise("stage2.type_to_schema", "stage2.schema_from_signature")
def test_builtin_registry():
    assert set(BUILTIN_TOOLS) == {"calculator", "convert_units", "current_time", "get_weather", "wiki_summary",
                                  "convert_currency", "save_note"}  # fmt: skip
    for t in BUILTIN_TOOLS.values():
        assert t.description and all("description" in p for p in t.parameters["properties"].values())
    assert [t.name for t in BUILTIN_TOOLS.values() if t.side_effects] == ["save_note"]
    with pytest.raises(ValueError, match="unknown tool"):
        select_tools("calculator,nope")
    assert [t.name for t in select_tools(" calculator ")] == ["calculator"]


@pytest.mark.exercise("stage2.type_to_schema", "stage2.schema_from_signature")
def test_every_builtin_pattern_is_bounded():
    """A grammar built on these patterns always fits a token budget (grammar.py computes it from them)."""
    from stage2_prompting_tools.grammar import max_regex_bytes

    patterns = [p["pattern"] for t in BUILTIN_TOOLS.values() for p in t.parameters["properties"].values()
                if "pattern" in p]  # fmt: skip
    assert len(patterns) == 3 and all(max_regex_bytes(p) <= 200 for p in patterns)


@pytest.mark.exercise("stage2.type_to_schema", "stage2.schema_from_signature")
def test_save_note_writes_one_whole_file_under_artifacts():
    from shared import paths

    assert save_note.side_effects
    message = save_note(title="Groceries list", text="milk and eggs")
    path = paths.artifacts_dir() / "stage2" / "notes" / "groceries-list.md"
    assert str(path) in message and path.read_text() == "# Groceries list\n\nmilk and eggs\n"
    with pytest.raises(ToolError, match="does not match"):
        save_note(title="../../etc/passwd", text="x")
    assert list(path.parent.iterdir()) == [path], "no temporary file left behind"
