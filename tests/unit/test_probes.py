"""Readiness probes: validated as site files say them, described, and run."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from siteboot import probes


@pytest.mark.parametrize(("value", "probe"), [
    ({"tcp": "{port}"}, {"tcp": "{port}"}),
    ({"tcp": "db.example:5432"}, {"tcp": "db.example:5432"}),
    ({"http": "http://127.0.0.1:{port}/health"}, {"http": "http://127.0.0.1:{port}/health",
                                                   "status": 200}),
    ({"http": "https://x/", "status": 204}, {"http": "https://x/", "status": 204}),
    ({"command": "pg_isready -p {port}"}, {"command": "pg_isready -p {port}"}),
])
def test_valid_probes(value, probe):
    assert probes.validate(value) == (probe, [])


@pytest.mark.parametrize(("value", "problem"), [
    ("{port}", "must be a table"),
    ({}, "needs exactly one of tcp, http, command (found none)"),
    ({"tcp": "1", "http": "http://x"}, "found tcp and http"),
    ({"tcp": "localhost"}, "'tcp' must be \"{port}\", a port number or \"host:port\""),
    ({"tcp": 5432}, "'tcp' must be a non-empty string, not an integer"),
    ({"http": "ftp://x"}, "must be a URL starting with http:// or https://"),
    ({"http": "http://x", "status": "200"}, "'status' must be an HTTP status code"),
    ({"command": "true", "status": 200}, "'status' belongs to an http probe"),
    ({"comand": "true"}, "unknown key 'comand'"),
])
def test_bad_probes_say_what_is_wrong(value, problem):
    _, problems = probes.validate(value)
    assert any(problem in p for p in problems), problems


def test_descriptions_name_the_target():
    assert probes.describe({"tcp": "5001"}) == "tcp 127.0.0.1:5001"
    assert probes.describe({"tcp": "[::1]:5001"}) == "tcp ::1:5001"
    assert probes.describe({"http": "http://h/x", "status": 200}) == "http http://h/x (want 200)"
    assert probes.describe({"command": "true"}) == "command `true`"


def test_tcp_probe_passes_once_a_port_accepts():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        assert probes.check({"tcp": str(port)}, timeout=2) == "connection refused"
        server.listen()
        assert probes.check({"tcp": str(port)}, timeout=2) is None
        assert probes.check({"tcp": f"127.0.0.1:{port}"}, timeout=2) is None


class _Answer(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(500 if self.path == "/broken" else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def test_http_probe_compares_the_status(http_port):
    url = f"http://127.0.0.1:{http_port}"
    assert probes.check({"http": url + "/health?x=1", "status": 200}) is None
    assert probes.check({"http": url + "/broken", "status": 200}) == "HTTP 500 (want 200)"
    assert probes.check({"http": url + "/broken", "status": 500}) is None


def test_a_port_of_the_program_s_own_counts_only_when_its_account_holds_it(http_port):
    """Another account listening first on the program's port (the program then cannot bind)
    would otherwise pass its probe, and what depends on it would talk to that account."""
    import pwd

    me = pwd.getpwuid(os.geteuid()).pw_name
    url = f"http://127.0.0.1:{http_port}/health"
    assert probes.check({"http": url, "status": 200, "owner": me}) is None
    assert probes.check({"tcp": str(http_port), "owner": me}) is None
    held = f"port {http_port} is held by {me}, not nobody"
    assert probes.check({"http": url, "status": 200, "owner": "nobody"}) == held
    assert probes.check({"tcp": f"127.0.0.1:{http_port}", "owner": "nobody"}) == held
    assert probes.check({"tcp": str(http_port)}) is None  # another's service: no owner to check


def test_command_probe_reports_exit_status_and_last_line():
    def run(argv: list[str], timeout: float) -> tuple[int, str]:
        assert argv[:2] == ["/bin/sh", "-c"]
        return (0, "") if argv[2] == "ok" else (3, "starting\nnot yet\n\n")

    assert probes.check({"command": "ok"}, run=run) is None
    assert probes.check({"command": "no"}, run=run) == "exit status 3: not yet"


def test_real_command_probe():
    assert probes.check({"command": "exit 0"}) is None
    assert probes.check({"command": "echo nope; exit 4"}) == "exit status 4: nope"


def test_a_probe_never_raises():
    assert probes.check({"tcp": "notaport"}) == "not a port: 'notaport'"
    assert probes.check({"nothing": 1}) == "ValueError: not a probe: {'nothing': 1}"


def test_a_hung_command_probe_is_killed_with_what_it_started(tmp_path):
    """``sleep`` keeps the shell's output pipe open: killing the shell alone left the probe (and
    the healer, which waits for every probe of a tick) waiting for as long as it ran."""
    import psutil

    from tests.helpers import wait_until

    marker = tmp_path / "finished"
    error = probes.check({"command": f"echo started; sleep 600.25; touch {marker}"}, timeout=0.5)
    assert error is not None
    assert error.startswith("exit status 124")

    def sleeping() -> list[Any]:
        return [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "600.25"]]

    wait_until(lambda: not sleeping())
    assert not marker.exists()


def test_a_command_probe_sees_no_secret_of_siteboot_s_environment(monkeypatch):
    monkeypatch.setenv("SITEBOOT_SECRET_DB_PASSWORD", "hunter2")
    monkeypatch.setenv("SOMETHING_ELSE", "kept")
    assert probes.check({"command": 'test -z "$SITEBOOT_SECRET_DB_PASSWORD" && '
                                    'test "$SOMETHING_ELSE" = kept'}) is None
