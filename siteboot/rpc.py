"""Talking to supervisord over XML-RPC: unix socket when it is ours, 127.0.0.1 when granted.

Standard library only, so ``siteboot status`` starts fast. Failures are classified, because
"not running", "wrong key" and "no access" need different actions (``supervisorctl`` answers
all three with exit 4).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from siteboot.accounts import HOST_ENV, uid_of
from siteboot.errors import InstanceError, UsageError
from siteboot.hints import command
from siteboot.probes import TCP_TABLES, server_uid
from siteboot.statusreport import NOT_ANSWERING, NOT_RUNNING
from siteboot.wire import ANSWER_TIMEOUT, peer_uid, request_head, take_early

TYPE_CHECKING = False  # no typing at run time: every command pays for its import
if TYPE_CHECKING:
    from typing import Any, Callable

    from siteboot.plan import InstancePlan, Plan

DEFAULT_TIMEOUT = 10.0

# supervisord's own state codes (supervisor.states.SupervisorStates)
SUPERVISOR_RUNNING = 1
# supervisor.xmlrpc.Faults: every call a supervisord answers while it shuts down
FAULT_SHUTDOWN_STATE = 6

# Reasons an instance cannot be reached, as shown to operators and in JSON.
REFUSED = "refused: wrong key"
NO_ACCESS = "no access"
IMPOSTOR = "not the instance's supervisord"


class RpcError(InstanceError):
    """An instance could not be reached; ``reason`` is one of the constants above."""

    def __init__(self, reason: str, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.reason = reason


class Fault(Exception):
    """An XML-RPC fault returned by supervisord (bad name, already started, ...)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.faultCode = code
        self.faultString = text


class HttpStatusError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"HTTP {code} {reason}")
        self.code = code
        self.reason = reason


# ------------------------------------------------------------------------------------------
# XML-RPC, the small subset supervisord speaks. Hand-written: xmlrpc.client pulls in
# http.client, email and ssl, which is a fifth of `siteboot status`'s run time.


def escape(text: str) -> str:
    # xml.sax.saxutils.escape would import urllib.request and http.client
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def encode(value: Any) -> str:
    if value is None:
        return "<nil/>"
    if isinstance(value, bool):
        return f"<boolean>{int(value)}</boolean>"
    if isinstance(value, int):
        return f"<int>{value}</int>"
    if isinstance(value, float):
        return f"<double>{value!r}</double>"
    if isinstance(value, str):
        return f"<string>{escape(value)}</string>"
    if isinstance(value, (list, tuple)):
        items = "".join(f"<value>{encode(v)}</value>" for v in value)
        return f"<array><data>{items}</data></array>"
    if isinstance(value, dict):
        members = "".join(f"<member><name>{escape(str(k))}</name><value>{encode(v)}</value></member>"
                          for k, v in value.items())
        return f"<struct>{members}</struct>"
    raise TypeError(f"cannot encode {type(value).__name__} for XML-RPC")


def request_body(method: str, params: tuple[Any, ...]) -> bytes:
    body = "".join(f"<param><value>{encode(p)}</value></param>" for p in params)
    return (f"<?xml version='1.0'?><methodCall><methodName>{escape(method)}</methodName>"
            f"<params>{body}</params></methodCall>").encode()


# supervisord (xmlrpc.client's marshaller) escapes only &, < and >: a log holding ANSI colours or
# other C0 controls arrives as XML 1.0 that expat refuses ("not well-formed (invalid token)"),
# and a CR would come out as LF. Such characters are swapped for a private-use escape before
# parsing and restored in the parsed text; the escape character itself is escaped too.
_ESCAPE = "\ue000"
_XML_UNSAFE = re.compile(rb"[\x00-\x08\x0b-\x1f]|\xef\xbf[\xbe\xbf]|\xee\x80\x80")
_ESCAPED = re.compile("\ue000(.)", re.DOTALL)
_C0_UNSAFE = bytes(range(0x20)).translate(None, b"\t\n")  # CR included: XML turns it into LF
_UNSAFE_SEQUENCES = (b"\xef\xbf\xbe", b"\xef\xbf\xbf", b"\xee\x80\x80")


def _needs_escaping(data: bytes) -> bool:
    """Whether ``data`` holds what ``_XML_UNSAFE`` matches; C-speed scans (a 64 KB log tail
    takes the regular expression a millisecond)."""
    return (len(data.translate(None, _C0_UNSAFE)) != len(data)
            or any(sequence in data for sequence in _UNSAFE_SEQUENCES))


def _escape_unsafe(match: re.Match[bytes]) -> bytes:
    char = match.group().decode("utf-8")
    code = ord(char)
    if char == _ESCAPE:
        return (_ESCAPE + _ESCAPE).encode("utf-8")
    # C0 controls to U+E100..U+E11F, U+FFFE/U+FFFF to U+E1FE/U+E1FF
    return (_ESCAPE + chr(0xE100 + (code & 0xFF))).encode("utf-8")


def _unescape(match: re.Match[str]) -> str:
    char = match.group(1)
    if char == _ESCAPE:
        return _ESCAPE
    code = ord(char) - 0xE100
    return chr(code) if code < 0x20 else chr(0xFF00 + code)


_SCALARS: dict[str, Callable[[str], Any]] = {
    "int": int, "i4": int, "i8": int, "string": str, "double": float,
    "boolean": lambda text: text.strip() == "1", "nil": lambda text: None,
}


def decode_response(data: bytes) -> Any:
    """The value of a methodResponse; a fault is raised as ``Fault``.

    What supervisord writes (xmlrpc.client's marshaller: every value typed, structs of
    scalars) is read with a few regular expressions, a struct at a time (``_decode_plain``);
    anything else, or anything odd, goes through expat (``decode_xml``), which gives the same
    values."""
    try:
        value, fault = _decode_plain(data)
    except (_NotPlain, UnicodeDecodeError, ValueError):
        return decode_xml(data)
    if fault:
        raise Fault(int(value.get("faultCode", 0)), str(value.get("faultString", "")))
    return value


class _NotPlain(Exception):
    """Not in the shape ``_decode_plain`` reads: expat reads it."""


_TYPES = "int|i4|i8|string|double|boolean"
_PLAIN_SCALAR = re.compile(rf"<value>(?:<({_TYPES})>([^<]*)</\1>|<nil/>|([^<]*))</value>\s*")
# a struct whose members are all scalars, checked whole; then read member by member
_PLAIN_STRUCT = re.compile(rf"<value><struct>\s*((?:<member>\s*<name>[^<]*</name>\s*<value>"
                           rf"(?:<(?:{_TYPES})>[^<]*</(?:{_TYPES})>|<nil/>)</value>\s*"
                           rf"</member>\s*)*)</struct></value>\s*")
_MEMBERS = re.compile(rf"<member>\s*<name>([^<]*)</name>\s*<value>"
                      rf"(?:<({_TYPES})>([^<]*)</\2>|<nil/>)</value>\s*</member>")
_ARRAY_OPEN = re.compile(r"<value><array>\s*<data>\s*")
_ARRAY_CLOSE = re.compile(r"</data>\s*</array>\s*</value>\s*")
_RESPONSE_OPEN = re.compile(r"\s*(?:<\?xml[^>]*\?>)?\s*<methodResponse>\s*"
                            r"(?:<params>\s*<param>|(<fault>))\s*")
_PARAMS_CLOSE = re.compile(r"</param>\s*</params>\s*</methodResponse>\s*")
_FAULT_CLOSE = re.compile(r"</fault>\s*</methodResponse>\s*")
_ENTITY = re.compile(r"&(lt|gt|amp|quot|apos);")
_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}


def _decode_plain(data: bytes) -> tuple[Any, bool]:
    """(the value, whether it is a fault) of a response in xmlrpc.client's own layout."""
    text = data.decode("utf-8")
    opened = _RESPONSE_OPEN.match(text)
    if opened is None:
        raise _NotPlain
    value, end = _plain_value(text, opened.end())
    fault = opened.group(1) is not None
    closed = (_FAULT_CLOSE if fault else _PARAMS_CLOSE).match(text, end)
    if closed is None or closed.end() != len(text) or (fault and not isinstance(value, dict)):
        raise _NotPlain
    return value, fault


def _plain_value(text: str, pos: int) -> tuple[Any, int]:
    scalar = _PLAIN_SCALAR.match(text, pos)
    if scalar is not None:
        kind, raw, untyped = scalar.groups()
        if kind is None and untyped is None:
            return None, scalar.end()  # <nil/>
        return _scalar(kind or "string", raw if kind else untyped), scalar.end()
    struct = _PLAIN_STRUCT.match(text, pos)
    if struct is not None:
        members = _MEMBERS.findall(struct.group(1))
        if len(members) != struct.group(1).count("<member>"):  # <int>..</string>: expat's to say
            raise _NotPlain
        return ({_unescaped(name): _scalar(kind, raw) if kind else None
                 for name, kind, raw in members}, struct.end())
    opened = _ARRAY_OPEN.match(text, pos)
    if opened is None:
        raise _NotPlain
    items: list[Any] = []
    pos = opened.end()
    while True:
        closed = _ARRAY_CLOSE.match(text, pos)
        if closed is not None:
            return items, closed.end()
        item, pos = _plain_value(text, pos)
        items.append(item)


def _scalar(kind: str, raw: str) -> Any:
    return _SCALARS[kind](_unescaped(raw))


def _unescaped(raw: str) -> str:
    """``raw`` with the entities xmlrpc.client writes read; a character reference is expat's."""
    if "&" not in raw:
        return raw
    if raw.count("&") != len(_ENTITY.findall(raw)):
        raise _NotPlain
    return _ENTITY.sub(lambda m: _ENTITIES[m.group(1)], raw)


def decode_xml(data: bytes) -> Any:
    """``decode_response`` by expat, for any well-formed response."""
    from xml.parsers import expat

    stack: list[Any] = []  # open containers: lists, or [dict, pending member name]
    texts: list[str] = []
    result: list[Any] = []
    typed: list[bool] = []  # per open <value>: did a type element appear inside it?
    fault = [False]

    def add(value: Any) -> None:
        if not stack:
            result.append(value)
        elif isinstance(stack[-1], list):
            stack[-1].append(value)
        else:
            struct, name = stack[-1]
            struct[name] = value

    def start(tag: str, attrs: Any) -> None:
        texts.clear()
        if tag == "value":
            typed.append(False)
        elif tag == "array":
            typed[-1] = True
            stack.append([])
        elif tag == "struct":
            typed[-1] = True
            stack.append(({}, None))
        elif tag in _SCALARS:
            typed[-1] = True
        elif tag == "fault":
            fault[0] = True

    def end(tag: str) -> None:
        text = "".join(texts)
        texts.clear()
        if escaped and _ESCAPE in text:
            text = _ESCAPED.sub(_unescape, text)
        if tag in _SCALARS:
            add(_SCALARS[tag](text))
        elif tag == "value":
            if not typed.pop():
                add(text)  # a value with no type element is a string
        elif tag == "name":
            struct, _ = stack[-1]
            stack[-1] = (struct, text)
        elif tag == "array":
            add_done = stack.pop()
            add(add_done)
        elif tag == "struct":
            struct, _ = stack.pop()
            add(struct)

    escaped = _needs_escaping(data)
    if escaped:
        data = _XML_UNSAFE.sub(_escape_unsafe, data)
    parser = expat.ParserCreate("utf-8")
    parser.buffer_text = True  # a log's text in one call, not one per line
    parser.buffer_size = max(len(data), 8192)
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = texts.append
    parser.Parse(data, True)
    if not result:
        raise ValueError("empty XML-RPC response")
    if fault[0]:
        info = result[0]
        raise Fault(int(info.get("faultCode", 0)), str(info.get("faultString", "")))
    return result[0]


class Endpoint:
    """Where and how to reach one supervisord.

    With ``owner_uid`` set, the key is only sent to a server that runs as that uid: after a
    reboot wiped /tmp, anyone could listen on the instance's socket path or port first.
    (A plain class: the quick status imports this module, and no dataclass.)
    """

    __slots__ = ("key", "owner_uid", "timeout", "url")

    def __init__(self, url: str, key: str, timeout: float = DEFAULT_TIMEOUT,
                 owner_uid: int | None = None) -> None:
        self.url = url  # unix:///path or http://127.0.0.1:port, for messages and JSON
        self.key = key
        self.timeout = timeout
        self.owner_uid = owner_uid

    def but(self, url: str | None = None, timeout: float | None = None) -> Endpoint:
        """This endpoint at another ``url`` or with another ``timeout``."""
        return Endpoint(self.url if url is None else url, self.key,
                        self.timeout if timeout is None else timeout, self.owner_uid)

    def __repr__(self) -> str:  # never the key
        return f"Endpoint(url={self.url!r}, timeout={self.timeout!r}, owner_uid={self.owner_uid!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Endpoint) and (self.url, self.key, self.timeout, self.owner_uid) \
            == (other.url, other.key, other.timeout, other.owner_uid)

    __hash__ = None  # type: ignore[assignment]

    @property
    def socket_path(self) -> str | None:
        return self.url[len("unix://"):] if self.url.startswith("unix://") else None

    def _connect(self) -> socket.socket:
        path = self.socket_path
        if path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = path
        else:
            host, _, port = self.url[len("http://"):].partition(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (host, int(port))
        sock.settimeout(self.timeout)
        try:
            sock.connect(address)
            if self.owner_uid is not None and path is not None:
                check_peer_uid(sock, self.owner_uid, self.url)
            elif self.owner_uid is not None:
                check_tcp_peer_uid(sock.getsockname()[1], address[1], self.owner_uid, self.url)
        except BaseException:
            sock.close()
            raise
        return sock

    def send_request(self, method: str, path: str, body: bytes = b"",
                     version: str = "HTTP/1.0") -> socket.socket:
        """A new connection, checked (the key goes only to a server of ``owner_uid``), with one
        request sent on it with the key: the caller reads the answer and closes the socket."""
        head = request_head(method, path, self.key, body, version)
        sock = self._connect()
        try:
            sock.sendall(head + body)
        except BaseException:
            sock.close()
            raise
        return sock

    def post(self, body: bytes) -> bytes:
        """The answer to one XML-RPC request body (HTTP errors raised as ``HttpStatusError``);
        read from the connection ``wire.send_early`` sent it on, when it did."""
        sock = take_early(self.url, self.key, body)
        if sock is not None:  # waited for as this call says, not as the early send did
            sock.settimeout(self.timeout)
        with sock or self.send_request("POST", "/RPC2", body) as sock:
            return read_answer(sock)

    def call(self, method: str, *args: Any) -> Any:
        """Call one RPC method; failures to reach the server become ``RpcError``."""
        try:
            payload = self.post(request_body(method, args))
        except RpcError:
            raise
        except Exception as exc:
            raise classify(exc, self.url) from None
        try:
            return decode_response(payload)
        except Fault:
            raise
        except Exception as exc:  # not XML-RPC: something else answers at this address
            raise classify(exc, self.url) from None

    def multicall(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """Several calls in one request; each result is a value or a ``Fault``."""
        results = self.call("system.multicall", multicall_payload(calls))
        out: list[Any] = []
        for item in results:
            if isinstance(item, dict) and "faultCode" in item:
                out.append(Fault(item["faultCode"], item["faultString"]))
            else:
                out.append(item)  # supervisord does not wrap results in 1-lists
        return out


def multicall_payload(calls: list[tuple[str, tuple[Any, ...]]]) -> list[dict[str, Any]]:
    return [{"methodName": name, "params": list(params)} for name, params in calls]


def status_request(inst: InstancePlan) -> bytes:
    """The one request ``status`` sends each supervisord (``status_calls``)."""
    return request_body("system.multicall", (multicall_payload(status_calls(inst)),))


def status_calls(inst: InstancePlan) -> list[tuple[str, tuple[Any, ...]]]:
    """What ``status`` asks each supervisord in one request: its state, its pid, every process
    and, when a program counts its restarts, the end of its main log."""
    from siteboot.history import MAIN_LOG_TAIL

    calls: list[tuple[str, tuple[Any, ...]]] = [("supervisor.getState", ()),
                                                ("supervisor.getPID", ()),
                                                ("supervisor.getAllProcessInfo", ())]
    if any(int(p.options["crash_loop_window"]) > 0 for p in inst.programs):
        calls.append(("supervisor.readLog", (-MAIN_LOG_TAIL, 0)))
    return calls


def read_answer(sock: socket.socket) -> bytes:
    """The body of the HTTP answer on ``sock``, read to its end; ``HttpStatusError`` unless 200."""
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    response = b"".join(chunks)
    header, _, payload = response.partition(b"\r\n\r\n")
    status_line = header.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise HttpStatusError(0, f"malformed answer {status_line!r}")
    if parts[1] != "200":
        raise HttpStatusError(int(parts[1]), parts[2] if len(parts) > 2 else "")
    return payload


def url_to(plan: Plan, inst: InstancePlan) -> str:
    """Where the invoker reaches ``inst`` now: ``Plan.url_for``, except that an owner whose socket
    is gone while the record says its supervisord was started (a /tmp cleaner wiped the runtime
    dir under it) uses its port: the key still goes only to a server running as the owner."""
    if plan.owns(inst) and not os.path.lexists(inst.socket_path):
        from siteboot.records import record_of

        if record_of(plan, inst).exists():
            return inst.http_url
    return plan.url_for(inst)


def connect(plan: Plan, inst: InstancePlan, timeout: float = ANSWER_TIMEOUT,
            key: str | None = None) -> Endpoint:
    """The one way to reach an instance: its owner over the unix socket, a granted member over
    127.0.0.1; either way the key only goes to a server running as the instance's user."""
    elsewhere = plan.elsewhere(inst)
    if elsewhere:  # its port here is not its port: nothing is sent to whatever listens there
        raise UsageError(f"instance {inst.name} runs {elsewhere}, not on this host ({plan.host})",
                         f"run the command on {inst.host} (this host's name: ${HOST_ENV}, "
                         "else the kernel's host name)")
    if key is None:
        from siteboot.keys import read_key

        key = read_key(plan, inst)
    return Endpoint(url_to(plan, inst), key, timeout, owner_uid=uid_of(inst.user))


def check_peer_uid(sock: socket.socket, uid: int, url: str) -> None:
    """The process at the other end of a unix socket must run as ``uid``."""
    peer = peer_uid(sock)
    if peer is not None and peer != uid:
        raise RpcError(IMPOSTOR, f"the process listening at {url} runs as uid {peer}, not "
                       f"uid {uid}: the key was not sent",
                       f"someone else took the socket path; stop that process, then "
                       f"`{command('up')}`")




def check_tcp_peer_uid(client_port: int, server_port: int, uid: int, url: str,
                       tables: tuple[str, ...] = TCP_TABLES) -> None:
    """The server end of our TCP connection must belong to ``uid`` (Linux /proc/net/tcp).

    Checked after connecting, on the connection itself: whoever else listens on the same port
    (another address, IPv6) cannot pass, nor slip in between a check and the connect.
    """
    owner = server_uid(client_port, server_port, tables)
    if owner is not None:
        if owner != uid:
            raise RpcError(IMPOSTOR, f"port {server_port} is held by uid {owner}, not uid "
                           f"{uid}: the key was not sent", "another process took the "
                           f"instance's port; stop it, then `{command('up')}` as its owner")
        return
    if any(Path(t).exists() for t in tables):
        raise RpcError(IMPOSTOR, f"cannot tell who answers at {url}: the key was not sent",
                       "is /proc/net/tcp readable here?")


def classify(exc: BaseException, url: str) -> RpcError:
    """Turn a transport failure into the reason an operator can act on."""
    if isinstance(exc, HttpStatusError) and exc.code == 401:
        return RpcError(REFUSED, f"{url} refused the key (HTTP 401)",
                        "the key file changed since the instance started: restart it with "
                        f"`{command('down')}` then `{command('up')}` as its owner")
    if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
        return RpcError(NOT_RUNNING, f"nothing is listening at {url}", f"run `{command('up')}`")
    if isinstance(exc, PermissionError):
        return RpcError(NO_ACCESS, f"no permission to connect to {url}",
                        "only the instance's owner may use its socket")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return RpcError(NOT_ANSWERING, f"{url} did not answer in time",
                        "supervisord may be overloaded or stopped (SIGSTOP)")
    if isinstance(exc, HttpStatusError):
        return RpcError(NOT_ANSWERING, f"{url} answered {exc}")
    if isinstance(exc, OSError):
        return RpcError(NOT_RUNNING, f"cannot reach {url}: {exc}", f"run `{command('up')}`")
    return RpcError(NOT_ANSWERING, f"unexpected answer from {url}: {exc}")
