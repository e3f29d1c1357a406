"""A stand-in for vLLM's API server, for the tests that kill `serve` every way: it takes the same
flags, answers /health and /v1/models, and starts an "engine" child that ignores SIGTERM and never
exits on its own (as a stuck engine process would), so only the watchdog's sweep can end it.

    python -m tests.stage5.fake_vllm --model DIR --served-model-name NAME --host H --port P ...
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

ENGINE = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", default="fake")
    args, _ = parser.parse_known_args()
    subprocess.Popen([sys.executable, "-c", ENGINE])  # the "engine", in our process group

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:
            body = json.dumps({"object": "list", "data": [{"id": args.served_model_name, "object": "model"}]})
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

    server = HTTPServer((args.host, args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # like vLLM: SIGTERM ends the API server
    server.serve_forever()


if __name__ == "__main__":
    main()
