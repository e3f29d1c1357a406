"""Routing: which tools could this request need? A small semantic router makes the shortlist.

Choosing the tool is the weak step for a 135M model (README section 6 measures it). An embedding model is good at exactly this
kind of judgement: how close is "What time is it in Tokyo?" to "Tell me the current time in New
York"? So each tool is described by a few example requests, the request is embedded with the bundled
MiniLM, and each tool is scored by its closest example (cosine similarity):

    scores = {tool: max over its examples of cos(embed(request), embed(example))}
    scores["answer"] = the same, over examples that need no tool ("Hello! How are you?")

The router serves two purposes, and agent.py says which in each mode:
- **it decides** (mode `router`): the best candidate is the call, or "answer" for no tool;
- **it narrows** (modes `model`, `hybrid`): its top k tools, plus "answer", are the *shortlist*
  the model may choose from, under a grammar. The shortlist belongs to the user's request: it is
  made once per turn, from what the user wrote, and every later call must be on it (a tool result
  cannot add a tool: that is the loop's first defence against injected instructions).

A tool without examples (one from an MCP server, say) is described by its name and description.
That is a door too: a description written to sound like every request ("use me for anything")
pulls the router towards it. README section 7 measures one such poisoned description.

It also records, for each tool, which of its examples is nearest the request: the demonstration
the model is shown for that tool (tool_prompts.py), since similar examples teach far more than
fixed ones (README section 1).

    Router().shortlist("What time is it in Tokyo?", tools) -> Shortlist(best="current_time",
        tools=["current_time", "get_weather", "convert_currency"], scores={...}, nearest={...})
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

DIRECT_ANSWER = (
    "answer"  # the candidate "no tool: answer in words"; also the pseudo-tool's name in the grammar
)

# A few example requests per tool: the router's description of each tool, and (with a plausible
# result) the demonstrations the model is shown. Never taken from an evaluation suite.
#   tool -> [(request, arguments, result), ...]
TOOL_EXAMPLES: dict[str, list[tuple[str, dict[str, Any], str]]] = {
    "calculator": [("What is 12 times 7?", {"expression": "12*7"}, "84"),
                   ("How much is 300 minus 45 plus 18?", {"expression": "300-45+18"}, "273"),
                   ("I had 40 apples and ate 3. How many are left?", {"expression": "40-3"}, "37")],
    "convert_units": [("How many feet are in 3 meters?", {"value": 3, "from_unit": "m", "to_unit": "ft"},
                       "3 m = 9.8425 ft"),
                      ("Convert 20 degrees Celsius to Fahrenheit", {"value": 20, "from_unit": "C", "to_unit": "F"},
                       "20 C = 68 F")],
    "current_time": [("What time is it in Berlin now?", {"timezone": "Europe/Berlin"},
                      "2026-01-05 14:02 (Europe/Berlin, UTC+0100)"),
                     ("Tell me the current time in New York", {"timezone": "America/New_York"},
                      "2026-01-05 08:02 (America/New_York, UTC-0500)")],
    "get_weather": [("Is it raining in London right now?", {"city": "London"},
                     '{"city": "London", "temperature": "9.1 °C", "conditions": "light rain"}'),
                    ("How warm is it in Madrid today?", {"city": "Madrid"},
                     '{"city": "Madrid", "temperature": "21.3 °C", "conditions": "clear sky"}')],
    "wiki_summary": [("Who was Isaac Newton?", {"title": "Isaac Newton"},
                      '{"title": "Isaac Newton", "summary": "Sir Isaac Newton was an English polymath..."}'),
                     ("Tell me about the Eiffel Tower", {"title": "Eiffel Tower"},
                      '{"title": "Eiffel Tower", "summary": "The Eiffel Tower is a wrought-iron tower in Paris..."}')],
    "convert_currency": [("How many euros is 40 GBP?", {"amount": 40, "from_currency": "GBP", "to_currency": "EUR"},
                          "40 GBP = 46.2 EUR"),
                         ("Convert 15 USD to JPY", {"amount": 15, "from_currency": "USD", "to_currency": "JPY"},
                          "15 USD = 2243.1 JPY")],
    "save_note": [("Save a note called groceries: milk and eggs", {"title": "groceries", "text": "milk and eggs"},
                   "saved the note 'groceries'"),
                  ("Write down that the dentist is on Friday, as a note titled dentist",
                   {"title": "dentist", "text": "the dentist is on Friday"}, "saved the note 'dentist'")],
}  # fmt: skip
DIRECT_EXAMPLES = ["Hello! How are you?", "Write a short poem about spring.", "Thank you, that was helpful!"]


@dataclass
class Shortlist:
    best: str  # the top candidate: a tool name, or DIRECT_ANSWER
    tools: list[str]  # the top k tools by similarity, best first (never DIRECT_ANSWER)
    scores: dict[str, float]  # candidate -> cosine similarity
    nearest: dict[str, int] = field(default_factory=dict)  # tool -> index of its example nearest the request


def tool_name(tool: Any) -> str:
    """The name of a Tool or of an OpenAI tool spec."""
    return tool.name if hasattr(tool, "name") else tool["function"]["name"]


def tool_texts(tool: Any) -> list[str]:
    """What the router compares a request with: the tool's example requests, or its name and description."""
    name = tool_name(tool)
    if name in TOOL_EXAMPLES:
        return [q for q, _, _ in TOOL_EXAMPLES[name]]
    description = (
        tool.description if hasattr(tool, "description") else tool["function"].get("description", "")
    )
    return [f"{name.replace('_', ' ')}: {description}"]


class Router:
    def __init__(self, encoder: Any = None):
        self._encoder = encoder  # anything with encode(texts, normalize_embeddings=True) -> array

    @functools.cached_property
    def encoder(self) -> Any:
        if self._encoder is None:
            from shared.models import load_embedder

            self._encoder = load_embedder()
        return self._encoder

    @functools.lru_cache(maxsize=256)  # noqa: B019 (one router per process; the texts are few)
    def _vector(self, text: str) -> Any:
        return self.encoder.encode([text], normalize_embeddings=True)[0]

    def similarities(self, request: str, tools: Sequence[Any]) -> dict[str, list[float]]:
        """Cosine similarity of the request to each example of each candidate."""
        query = self.encoder.encode([request], normalize_embeddings=True)[0]
        texts = {tool_name(t): tool_texts(t) for t in tools}
        texts[DIRECT_ANSWER] = DIRECT_EXAMPLES
        return {name: [float(query @ self._vector(t)) for t in ts] for name, ts in texts.items()}

    def scores(self, request: str, tools: Sequence[Any]) -> dict[str, float]:
        """Each candidate's score: its closest example."""
        return {name: max(values) for name, values in self.similarities(request, tools).items()}

    def shortlist(self, request: str, tools: Sequence[Any], k: int = 3) -> Shortlist:
        """The best candidate and the top k tools for this request."""
        assert k >= 1, f"the shortlist needs at least one tool, got k={k}"
        similarities = self.similarities(request, tools)
        nearest = {name: max(range(len(v)), key=v.__getitem__) for name, v in similarities.items()}
        # EXERCISE stage2.shortlist: score every candidate by its closest example, rank them best first; best is the top candidate (a tool or DIRECT_ANSWER); tools: the top k tool names, DIRECT_ANSWER left out
        scores = {name: max(values) for name, values in similarities.items()}
        ranked = sorted(scores, key=scores.get, reverse=True)
        return Shortlist(
            best=ranked[0],
            tools=[n for n in ranked if n != DIRECT_ANSWER][:k],
            scores=scores,
            nearest=nearest,
        )
        # END EXERCISE
