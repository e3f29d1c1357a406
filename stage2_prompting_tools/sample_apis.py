"""A local server that answers like Open-Meteo, Wikipedia and Frankfurter, for offline runs.

The tools in tools.py call real public APIs. Tests, CI and the offline benchmark cannot reach
them, and should not depend on today's weather anyway. This server speaks the same endpoints with
the same JSON shapes (as documented by each API), from a small fixed table in
`data/sample_api_responses.json`, on 127.0.0.1. Point the tools at it through their environment
variables, which is exactly how you would point them at a mirror or a proxy:

    with serve_sample_apis() as env:         # starts the server, yields the variables to set
        os.environ.update(env)

It can also misbehave on purpose: `serve_sample_apis(delay_s=...)` makes every answer wait that
long (longer than the client's timeout, and the tools report a timeout), and the city
"Errorville" gets an HTTP 500, so tests can check that failures become tool errors. And it can
lie: `serve_sample_apis(samples=...)` answers from another table, which is how injection.py plays
a malicious API whose pages carry instructions for the model.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from stage2_prompting_tools.tools import SERVICES

SAMPLES = json.loads((Path(__file__).parent / "data" / "sample_api_responses.json").read_text())


class SampleAPIHandler(BaseHTTPRequestHandler):
    delay_s = 0.0  # seconds to wait before every answer: a slow upstream
    samples: dict = SAMPLES  # the table it answers from

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if self.delay_s:
            time.sleep(self.delay_s)
        if url.path == "/v1/search":  # Open-Meteo geocoding
            name = query.get("name", "")
            if name.lower() == "errorville":
                return self._json(500, {"error": True, "reason": "internal error"})
            hits = [c for c in self.samples["cities"] if c["name"].lower() == name.lower()]
            return self._json(
                200, {"results": hits[:1], "generationtime_ms": 0.4} if hits else {"generationtime_ms": 0.3}
            )
        if url.path == "/v1/forecast":  # Open-Meteo forecast
            lat, lon = float(query["latitude"]), float(query["longitude"])
            city = min(
                self.samples["cities"], key=lambda c: abs(c["latitude"] - lat) + abs(c["longitude"] - lon)
            )
            return self._json(200, {
                "latitude": lat, "longitude": lon, "timezone": city["timezone"],
                "current_units": {"time": "iso8601", "temperature_2m": "°C", "wind_speed_10m": "km/h",
                                  "weather_code": "wmo code"},
                "current": self.samples["current_weather"][city["name"]]})  # fmt: skip
        if url.path.startswith("/api/rest_v1/page/summary/"):  # Wikipedia REST
            title = unquote(url.path.rsplit("/", 1)[1]).replace("_", " ")
            page = self.samples["wikipedia"].get(title)
            if page is None:
                return self._json(
                    404,
                    {
                        "type": "https://mediawiki.org/wiki/HyperSwitch/errors/not_found",
                        "title": "Not found.",
                        "detail": "Page or revision not found.",
                    },
                )
            return self._json(
                200,
                {
                    "type": "standard",
                    "title": title,
                    "extract": page,
                    "content_urls": {"desktop": {"page": f"https://en.wikipedia.org/wiki/{title}"}},
                },
            )
        if url.path == "/latest":  # Frankfurter
            source, target = query.get("from", "EUR"), query.get("to", "")
            amount = float(query.get("amount", 1))
            per_eur = self.samples["eur_rates"]
            if source not in per_eur or target not in per_eur:
                return self._json(404, {"message": "not found"})
            rate = per_eur[target] / per_eur[source]
            return self._json(
                200,
                {
                    "amount": amount,
                    "base": source,
                    "date": self.samples["rates_date"],
                    "rates": {target: round(amount * rate, 4)},
                },
            )
        return self._json(404, {"error": f"no route {url.path}"})


@contextmanager
def serve_sample_apis(delay_s: float = 0.0, samples: dict | None = None) -> Iterator[dict[str, str]]:
    """Serve the sample APIs on 127.0.0.1 (a free port); yield the environment that points the tools at it."""
    handler = type("Handler", (SampleAPIHandler,), {"delay_s": delay_s, "samples": samples or SAMPLES})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield {env: base for env, _ in SERVICES.values()}
    finally:
        server.shutdown()
        server.server_close()
