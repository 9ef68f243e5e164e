"""Readiness probes: when a program is ready, as a site file says (``ready = {...}``).

Three kinds: ``{ tcp = "{port}" }`` (a connection is accepted), ``{ http = URL, status = 200 }``
(a GET answers that status) and ``{ command = "..." }`` (exit status 0). The same functions
validate the table (``site``), describe it in messages, and run it (``readiness`` from the
command line, ``healer`` inside supervisord). Standard library only; nothing heavy is imported
until a probe runs.
"""

from __future__ import annotations

import re
import socket

TYPE_CHECKING = False  # no typing at run time: every command pays for its import
if TYPE_CHECKING:
    from typing import Any

KINDS = ("tcp", "http", "command")
DEFAULT_STATUS = 200
DEFAULT_TIMEOUT = 5.0
_TCP_TARGET = re.compile(r"^(?:(?P<host>[^\s:]+|\[[0-9a-fA-F:]+\]):)?(?P<port>\{port\}|[0-9]+)$")

if TYPE_CHECKING:  # not made at run time: a subscripted Callable costs `status` a millisecond
    from collections.abc import Callable, Mapping

    Probe = Mapping[str, Any]  # one of the three tables, validated
    Runner = Callable[[list[str], float], tuple[int, str]]


def validate(value: Any) -> tuple[dict[str, Any] | None, list[str]]:
    """The probe table as siteboot uses it (``status`` filled in for http), and every problem."""
    if not isinstance(value, dict):
        return None, [f"must be a table like {{ tcp = \"{{port}}\" }}, not {_type(value)}"]
    kinds = [k for k in KINDS if k in value]
    problems = [f"unknown key '{k}' (a probe has one of: tcp, http with status, command)"
                for k in value if k not in (*KINDS, "status")]
    if len(kinds) != 1:
        found = " and ".join(kinds) if kinds else "none"
        return None, [*problems, f"needs exactly one of tcp, http, command (found {found})"]
    kind = kinds[0]
    target = value[kind]
    if not isinstance(target, str) or not target.strip():
        return None, [*problems, f"'{kind}' must be a non-empty string, not {_type(target)}"]
    probe: dict[str, Any] = {kind: target}
    if kind == "tcp" and not _TCP_TARGET.match(target):
        problems.append(f"'tcp' must be \"{{port}}\", a port number or \"host:port\", not {target!r}")
    if kind == "http":
        if not target.startswith(("http://", "https://")):
            problems.append(f"'http' must be a URL starting with http:// or https://, not {target!r}")
        status = value.get("status", DEFAULT_STATUS)
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            problems.append(f"'status' must be an HTTP status code (100-599), not {status!r}")
            status = DEFAULT_STATUS
        probe["status"] = status
    elif "status" in value:
        problems.append("'status' belongs to an http probe")
    return probe, problems


def texts(probe: Probe | None) -> dict[str, str]:
    """The probe's strings by key (``tcp``, ``http``, ``command``), where placeholders may be."""
    return {k: str(probe[k]) for k in KINDS if probe and k in probe}


def kind_of(probe: Probe) -> str:
    for kind in KINDS:
        if kind in probe:
            return kind
    raise ValueError(f"not a probe: {dict(probe)!r}")


def describe(probe: Probe) -> str:
    """``tcp 127.0.0.1:5001``, ``http http://... (want 200)``, ``command `...```."""
    kind = kind_of(probe)
    if kind == "tcp":
        host, port = tcp_address(str(probe["tcp"]))
        return f"tcp {host}:{port}"
    if kind == "http":
        return f"http {probe['http']} (want {probe.get('status', DEFAULT_STATUS)})"
    return f"command `{probe['command']}`"


def tcp_address(target: str) -> tuple[str, str]:
    host, _, port = target.rpartition(":")
    return (host.strip("[]") or "127.0.0.1"), port


def check(probe: Probe, timeout: float = DEFAULT_TIMEOUT, run: Runner | None = None) -> str | None:
    """None when the probe passes, else what it found (its last error, for messages).

    A probe's ``owner`` (set by the plan: the program's account) must hold a port on this host
    that a tcp or http probe reaches: another account listening there first (the program then
    fails to bind) would otherwise pass it, and what depends on it would talk to that account.
    """
    try:
        kind = kind_of(probe)
        owner = str(probe["owner"]) if probe.get("owner") else None
        if kind == "tcp":
            return _tcp(str(probe["tcp"]), timeout, owner)
        if kind == "http":
            return _http(str(probe["http"]), int(probe.get("status", DEFAULT_STATUS)), timeout,
                         owner)
        return _command(str(probe["command"]), timeout, run or _run)
    except Exception as exc:  # a probe reports, it never raises (bad input included)
        return f"{type(exc).__name__}: {exc}"


def _tcp(target: str, timeout: float, owner: str | None = None) -> str | None:
    host, port = tcp_address(target)
    if not port.isdigit():
        return f"not a port: {port!r}"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            return _held_by_another(sock, owner)
    except OSError as exc:
        return _os_error(exc)


def _http(url: str, want: int, timeout: float, owner: str | None = None) -> str | None:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection_class = (http.client.HTTPSConnection if parts.scheme == "https"
                        else http.client.HTTPConnection)
    connection = connection_class(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.connect()
        held = _held_by_another(connection.sock, owner)
        if held:
            return held
        connection.request("GET", path, headers={"User-Agent": "siteboot-probe"})
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return _os_error(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()
    return None if status == want else f"HTTP {status} (want {want})"


TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
TCP_LISTEN = "0A"  # the state of a listening socket in those tables


def tcp_sockets(tables: tuple[str, ...] = TCP_TABLES) -> list[tuple[int, int, str, int]] | None:
    """(local port, remote port, state, uid) of every TCP socket the kernel lists (Linux
    /proc/net/tcp): whose a socket is, even where its process is not ours to see. None when
    no table could be read."""
    sockets: list[tuple[int, int, str, int]] = []
    readable = False
    for table in tables:
        try:
            with open(table) as handle:
                lines = handle.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        except OSError:
            break
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) >= 8:
                sockets.append((int(fields[1].rsplit(":", 1)[1], 16),
                                int(fields[2].rsplit(":", 1)[1], 16), fields[3], int(fields[7])))
    return sockets if readable else None


def server_uid(client_port: int, server_port: int,
               tables: tuple[str, ...] = TCP_TABLES) -> int | None:
    """The uid that owns the server end of our TCP connection from ``client_port`` to
    ``server_port`` on this host, or None when it cannot be told."""
    for local_port, remote_port, _state, owner in tcp_sockets(tables) or []:
        if local_port == server_port and remote_port == client_port:
            return owner
    return None


def _held_by_another(sock: socket.socket, owner: str | None) -> str | None:
    """Why the server end of ``sock`` is not ``owner``'s, or None (also for another host)."""
    import ipaddress
    import os
    import pwd

    if owner is None:
        return None
    peer_host, peer_port = sock.getpeername()[:2]
    if not ipaddress.ip_address(peer_host.split("%")[0]).is_loopback:
        return None  # another host's accounts are not this host's: nothing to compare
    try:
        want = pwd.getpwnam(owner).pw_uid
    except KeyError:
        want = os.geteuid()  # an account without a passwd entry (containers, CI): ours
    found = server_uid(sock.getsockname()[1], peer_port)
    if found == want:
        return None
    if found is None:
        return f"cannot tell who listens on port {peer_port} (is /proc/net/tcp readable?)"
    try:
        name = pwd.getpwuid(found).pw_name
    except KeyError:
        name = f"uid {found}"
    return f"port {peer_port} is held by {name}, not {owner}"


def _command(command: str, timeout: float, run: Runner) -> str | None:
    code, output = run(["/bin/sh", "-c", command], timeout)
    if code == 0:
        return None
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return f"exit status {code}" + (f": {lines[-1]}" if lines else "")


def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    from siteboot.proc import clean_env, run_command

    # its own session: a timeout kills what the command started too (else the wait for its
    # output lasts as long as they do, and a healer stuck in it probes nothing else)
    result = run_command(argv, timeout=timeout, env=clean_env(), new_session=True)
    return result.returncode, result.output


def _os_error(exc: OSError) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    return exc.strerror.lower() if exc.strerror else str(exc) or type(exc).__name__


def _type(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)
