"""Demo programs for the local site: standard library only, so they run anywhere.

``serve --port P``: an HTTP service answering ``/`` and ``/health`` with JSON on 127.0.0.1.
``work --interval S``: a job-runner loop that logs a heartbeat line.
Both stop cleanly on SIGTERM, as supervisord asks them to.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.time()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({
            "service": os.environ.get("SITEBOOT_DEMO_NAME", "demo"),
            "env": os.environ.get("SITEBOOT_DEMO_ENV", ""),
            "path": self.path,
            "uptime_s": round(time.time() - STARTED, 1),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        sys.stdout.write(f"{self.address_string()} {format % args}\n")
        sys.stdout.flush()


def serve(port: int) -> int:
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"serving on 127.0.0.1:{port}", flush=True)
    server.serve_forever()
    print("stopped", flush=True)
    return 0


def work(interval: float) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    beat = 0
    while not stop.is_set():
        print(f"worker {os.getpid()} heartbeat {beat}", flush=True)
        beat += 1
        stop.wait(interval)
    print("stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m siteboot.demo")
    sub = parser.add_subparsers(dest="what", required=True)
    serve_p = sub.add_parser("serve")
    serve_p.add_argument("--port", type=int, required=True)
    work_p = sub.add_parser("work")
    work_p.add_argument("--interval", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.what == "serve":
        return serve(args.port)
    return work(args.interval)


if __name__ == "__main__":
    sys.exit(main())
