"""The relay behind ``siteboot ctl``: supervisorctl never holds an instance's key.

supervisorctl talks to a private unix socket (in a fresh 0700 directory, only the invoker's
processes accepted, SO_PEERCRED) with a one-time credential from a 0600 client config. For
each request the relay opens a new connection to the instance through ``rpc.Endpoint``, whose
peer check runs before any byte of the key is sent: a process that grabbed the instance's
port between two commands of an interactive session gets nothing.

A group member gets only what the grant covers (``CONTROL_GRANT``); everything else stays with
the instance's owner and is answered with an XML-RPC fault that says so.
"""

from __future__ import annotations

import hmac
import os
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from siteboot.errors import SitebootError
from siteboot.rpc import Endpoint, RpcError, classify, read_answer
from siteboot.wire import peer_uid


@dataclass(frozen=True)
class Scope:
    """What a grant lets the members of an instance's group do through ``siteboot ctl``."""

    name: str
    summary: str  # for messages and the README
    methods: frozenset[str]  # XML-RPC methods, exactly as supervisord names them
    get_paths: tuple[str, ...]  # prefixes of HTTP GET paths (supervisorctl's `tail -f`)

    def allows(self, method: str) -> bool:
        return method in self.methods

    def allows_path(self, path: str) -> bool:
        return path.startswith(self.get_paths)


# The one statement of what a group grant (`group = "..."` on an instance) lets members do.
# Shutting down, reloading, changing process groups, reading the configuration (commands and
# environments), supervisord's own log, clearing logs and writing to a process's stdin stay
# with the owner. A later grant (deploy) extends this set; it never shrinks silently.
CONTROL_GRANT = Scope(
    name="control",
    summary="state, start/stop/restart/signal of processes, and process logs",
    methods=frozenset({
        # state
        "supervisor.getAPIVersion", "supervisor.getVersion", "supervisor.getSupervisorVersion",
        "supervisor.getIdentification", "supervisor.getState", "supervisor.getPID",
        "supervisor.getProcessInfo", "supervisor.getAllProcessInfo",
        "system.listMethods", "system.methodHelp", "system.methodSignature",
        # processes
        "supervisor.startProcess", "supervisor.startProcessGroup", "supervisor.startAllProcesses",
        "supervisor.stopProcess", "supervisor.stopProcessGroup", "supervisor.stopAllProcesses",
        "supervisor.signalProcess", "supervisor.signalProcessGroup",
        "supervisor.signalAllProcesses",
        # process logs
        "supervisor.readProcessLog", "supervisor.readProcessStdoutLog",
        "supervisor.readProcessStderrLog", "supervisor.tailProcessLog",
        "supervisor.tailProcessStdoutLog", "supervisor.tailProcessStderrLog",
    }),
    get_paths=("/logtail/",),
)

# What supervisorctl fetches with GET (`tail -f`, `maintail -f`); nothing else is relayed.
RELAYED_GET_PATHS = ("/logtail/", "/mainlogtail")
MULTICALL = "system.multicall"
MAX_BODY = 16 << 20

# XML-RPC fault codes of the relay's own answers, apart from supervisord's (supervisor.xmlrpc)
FAULT_MALFORMED = 400
FAULT_NOT_GRANTED = 403
FAULT_UPSTREAM = 502

RELAY_USERNAME_PREFIX = "ctl-"
SOCKET_NAME = "relay.sock"


# ------------------------------------------------------------------------------------------
# Requests


def read_call(body: bytes) -> tuple[str, tuple[Any, ...]]:
    """The method and params of an XML-RPC request; ValueError when it is not one."""
    import xmlrpc.client

    if b"<!" in body:  # DOCTYPE, entities, comments: never in a request supervisorctl sends
        raise ValueError("declarations are not allowed in an XML-RPC request")
    try:
        params, method = xmlrpc.client.loads(body, use_builtin_types=True)
    except Exception as exc:  # expat, ResponseError, bad values: all mean "not a request"
        raise ValueError(f"not an XML-RPC request ({type(exc).__name__}: {exc})") from None
    if not isinstance(method, str) or not method:
        raise ValueError("not an XML-RPC request (no method name)")
    return method, params


def called_methods(method: str, params: tuple[Any, ...]) -> list[str]:
    """Every method a request calls: itself, or each call inside a ``system.multicall``."""
    if method != MULTICALL:
        return [method]
    if len(params) != 1 or not isinstance(params[0], list):
        raise ValueError(f"{MULTICALL} takes one array of calls")
    names = []
    for call in params[0]:
        if not (isinstance(call, dict) and isinstance(call.get("methodName"), str)
                and isinstance(call.get("params", []), list)):
            raise ValueError(f"{MULTICALL}: each call is a struct with methodName and params")
        if call["methodName"] == MULTICALL:
            raise ValueError(f"{MULTICALL} inside {MULTICALL}")
        names.append(call["methodName"])
    return names


def encode_call(method: str, params: tuple[Any, ...]) -> bytes:
    """The request as sent on: re-encoded from what was checked, so supervisord cannot read
    anything into it that the check did not see."""
    import xmlrpc.client

    return xmlrpc.client.dumps(params, method, allow_none=True).encode("utf-8")


def fault_response(code: int, text: str) -> bytes:
    import xmlrpc.client

    return xmlrpc.client.dumps(xmlrpc.client.Fault(code, text), methodresponse=True).encode()


# ------------------------------------------------------------------------------------------
# The relay


@dataclass
class Relay:
    """Forwards checked requests to one instance; ``scope`` None: the owner, who may do anything."""

    endpoint: Endpoint
    scope: Scope | None
    owner: str
    problems: list[SitebootError] = field(default_factory=list)
    _open: set[socket.socket] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer_rpc(self, body: bytes) -> bytes:
        """The XML-RPC answer to one request body: supervisord's, or a fault of the relay's."""
        try:
            method, params = read_call(body)
            names = called_methods(method, params)
        except ValueError as exc:
            return fault_response(FAULT_MALFORMED, f"siteboot refused the request: {exc}")
        refused = [] if self.scope is None else [n for n in names if not self.scope.allows(n)]
        if refused:
            problem = self._not_granted(", ".join(dict.fromkeys(refused)))
            return fault_response(FAULT_NOT_GRANTED, problem.message)
        try:
            with self._upstream("POST", "/RPC2", encode_call(method, params)) as sock:
                return read_answer(sock)
        except Exception as exc:
            return fault_response(FAULT_UPSTREAM, f"siteboot: {self._failed(exc).message}")

    def relay_get(self, path: str, client: socket.socket) -> tuple[int, str] | None:
        """Stream the answer to a GET (``tail -f``) to ``client`` as it comes; or the status and
        reason to answer instead."""
        if not path.startswith(RELAYED_GET_PATHS):
            return 404, "Not Found"
        if self.scope is not None and not self.scope.allows_path(path):
            return 403, self._not_granted(f"GET {path}").message
        with ExitStack() as stack:
            try:
                # HTTP/1.1: supervisord sends the endless log chunked, as supervisorctl expects
                upstream = stack.enter_context(self._upstream("GET", path, version="HTTP/1.1"))
            except Exception as exc:
                return 502, self._failed(exc).message
            _pipe(upstream, client)
        return None

    def _failed(self, exc: Exception) -> RpcError:
        """Record why the instance could not be reached (a failed peer check: the key was not
        sent)."""
        problem = exc if isinstance(exc, RpcError) else classify(exc, self.endpoint.url)
        self.problems.append(problem)
        return problem

    def _not_granted(self, what: str) -> SitebootError:
        assert self.scope is not None
        problem = SitebootError(f"{what}: not part of the {self.scope.name} grant, it stays "
                                f"with the owner {self.owner}",
                                f"a {self.scope.name} grant covers {self.scope.summary}; "
                                f"for anything else, run as {self.owner}")
        self.problems.append(problem)
        return problem

    @contextmanager
    def _upstream(self, method: str, path: str, body: bytes = b"",
                  version: str = "HTTP/1.0") -> Iterator[socket.socket]:
        """A checked connection with the request sent; no read timeout after that (a stop
        waits for stopwaitsecs, a tail for ever), but ``close_all`` ends it."""
        sock = self.endpoint.send_request(method, path, body, version)
        sock.settimeout(None)
        self.track(sock)
        try:
            yield sock
        finally:
            self.untrack(sock)
            sock.close()

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)

    def untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)

    def close_all(self) -> None:
        """End every relayed connection, so that no thread waits on one after the session."""
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _pipe(upstream: socket.socket, client: socket.socket) -> None:
    """Copy ``upstream`` to ``client`` until either side closes."""
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(upstream, selectors.EVENT_READ)
        selector.register(client, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                try:
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    if key.fileobj is upstream:
                        client.sendall(data)
                except OSError:
                    return


# ------------------------------------------------------------------------------------------
# The HTTP side: what supervisorctl talks to


class _Server(socketserver.ThreadingUnixStreamServer):
    relay: Relay
    authorization: str  # the whole expected header value
    uid: int

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Only processes running as the invoker, not even root's (unless root invoked). Without
        SO_PEERCRED (not Linux) the 0700 directory and the credential still keep others out."""
        uid = peer_uid(request)
        return uid is None or uid == self.uid

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):  # OSError: supervisorctl went away mid-answer
            self.relay.problems.append(SitebootError(f"internal error in the ctl relay: "
                                                     f"{type(exc).__name__}: {exc}"))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as supervisorctl's transport expects
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.relay.track(self.connection)

    def finish(self) -> None:
        self.server.relay.untrack(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the terminal belongs to supervisorctl

    def _refuse(self, code: int, reason: str) -> None:
        """Answer and close, but only once the client is done sending: closing on unread bytes
        resets the connection, and the client would report that instead of the answer."""
        self.close_connection = True
        reason = "".join(c if " " <= c <= "~" else " " for c in reason)[:300]
        self.connection.sendall(f"HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\n"
                                "Connection: close\r\n\r\n".encode("latin-1"))
        try:
            self.connection.shutdown(socket.SHUT_WR)
            while self.connection.recv(65536):
                pass
        except OSError:
            pass

    def _authorized(self) -> bool:
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode("latin-1", "replace"),
                               self.server.authorization.encode("latin-1")):
            return True
        self._refuse(401, "Unauthorized")
        return False

    def do_POST(self) -> None:
        if not self._authorized():
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        if self.path != "/RPC2":
            self._refuse(404, "Not Found")
            return
        if not 0 <= length <= MAX_BODY:
            self._refuse(413, "Request Entity Too Large")
            return
        answer = self.server.relay.answer_rpc(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_GET(self) -> None:
        self.close_connection = True
        if self._authorized():
            refusal = self.server.relay.relay_get(self.path, self.connection)
            if refusal is not None:
                self._refuse(*refusal)


# ------------------------------------------------------------------------------------------
# One session


@dataclass
class Session:
    """A running relay: ``client_conf`` is the supervisorctl config that reaches it."""

    socket_path: Path
    client_conf: Path
    relay: Relay


def _private_dir() -> Path:
    """A fresh 0700 directory of ours whose socket path fits in sun_path (108 bytes)."""
    import tempfile

    problems = []
    for parent in dict.fromkeys((tempfile.gettempdir(), "/tmp")):
        try:
            directory = Path(tempfile.mkdtemp(prefix="siteboot-ctl-", dir=parent))
        except OSError as exc:
            problems.append(f"{parent}: {exc.strerror or exc}")
            continue
        if len(str(directory / SOCKET_NAME).encode()) < 100:
            return directory
        directory.rmdir()
        problems.append(f"{parent}: too long a path for a unix socket")
    raise SitebootError(f"no place for the ctl relay's socket ({'; '.join(problems)})",
                        "set TMPDIR to a short directory of yours")


@contextmanager
def relay_session(endpoint: Endpoint, scope: Scope | None, owner: str,
                  prompt: str) -> Iterator[Session]:
    """A relay to ``endpoint`` serving a private socket until the block ends."""
    import binascii
    import secrets

    from siteboot.fsutil import atomic_write

    directory = _private_dir()
    socket_path = directory / SOCKET_NAME
    client_conf = directory / "supervisorctl.conf"
    username = RELAY_USERNAME_PREFIX + secrets.token_hex(4)
    password = secrets.token_urlsafe(24)  # letters, digits, - and _: nothing to escape
    relay = Relay(endpoint, scope, owner)
    server: _Server | None = None
    thread: threading.Thread | None = None
    try:
        server = _Server(str(socket_path), _Handler)
        server.relay = relay
        server.uid = os.geteuid()
        token = binascii.b2a_base64(f"{username}:{password}".encode(), newline=False).decode()
        server.authorization = f"Basic {token}"
        atomic_write(client_conf, (
            "; siteboot ctl: a one-time credential for this session's relay, not the key\n"
            f"[supervisorctl]\nserverurl = unix://{socket_path}\nusername = {username}\n"
            f"password = {password}\nprompt = {prompt}\n"), mode=0o600)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  name="siteboot-relay", daemon=True)
        thread.start()
        yield Session(socket_path, client_conf, relay)
    finally:
        if server is not None:
            if thread is not None:
                server.shutdown()
                thread.join()
            relay.close_all()
            server.server_close()  # waits for the handler threads, which close_all ended
        for path in (socket_path, client_conf):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        directory.rmdir()
