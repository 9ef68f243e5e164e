"""One HTTP request to a supervisord on a connection checked to be its owner's, and requests
sent ahead of the call that reads their answer.

Standard library only, and no dataclasses: ``status`` sends its requests (``send_early``) before
it imports the model, so that its supervisords describe their processes while the rest of
siteboot loads; ``rpc.Endpoint.post`` then reads the answer (``take_early``).
"""

from __future__ import annotations

import binascii
import os
import socket

from siteboot.accounts import RPC_USERNAME

TYPE_CHECKING = False  # no typing at run time: every command pays for its import
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

# How long a supervisord has to answer ``status`` (``rpc.connect``'s default): a hung one is
# said to be hung after that
ANSWER_TIMEOUT = 5.0

# (url, key, body) -> the connection the request went out on, its answer not read yet
_SENT_EARLY: dict[tuple[str, str, bytes], socket.socket] = {}


def request_head(method: str, path: str, key: str, body: bytes,
                 version: str = "HTTP/1.0") -> bytes:
    """The HTTP head of a request carrying the key (basic auth)."""
    if not path.startswith("/") or not all("!" <= c <= "~" for c in path):
        raise ValueError(f"not a request path: {path!r}")
    token = binascii.b2a_base64(f"{RPC_USERNAME}:{key}".encode(), newline=False).decode()
    content = (f"Content-Type: text/xml\r\nContent-Length: {len(body)}\r\n"
               if method == "POST" else "")
    return (f"{method} {path} {version}\r\nHost: localhost\r\n{content}"
            f"Authorization: Basic {token}\r\n\r\n").encode("ascii")


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a unix socket (Linux SO_PEERCRED; None
    elsewhere)."""
    import struct

    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:  # pragma: no cover - not Linux
        return None
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option,
                                                          struct.calcsize("3i")))
    return int(uid)


def send_early(socket_path: str, key: str, body: bytes, timeout: float) -> None:
    """POST ``body`` now to the invoker's own supervisord at ``socket_path``, if a process of
    the invoker listens there (the key goes to no one else). Nothing happens when it cannot be
    sent: the real request connects again and says why."""
    url = f"unix://{socket_path}"
    if (url, key, body) in _SENT_EARLY:
        return
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(socket_path)
        uid = peer_uid(sock)
        if uid is not None and uid != os.geteuid():
            sock.close()
            return
        sock.sendall(request_head("POST", "/RPC2", key, body) + body)
    except OSError:
        sock.close()
        return
    _SENT_EARLY[(url, key, body)] = sock


def take_early(url: str, key: str, body: bytes) -> socket.socket | None:
    """The connection ``send_early`` sent this very request on, once."""
    return _SENT_EARLY.pop((url, key, body), None)


def as_answered(urls: Sequence[str], deadline: float) -> Iterator[str]:
    """``urls`` as the answers to the requests ``send_early`` sent them arrive, waiting until
    ``deadline`` (``time.monotonic``) at most: those it sent nothing to first, those with no
    answer by then last, in the order given."""
    import select
    import time

    waiting: dict[int, str] = {}
    for url in urls:
        sock = next((sock for (sent_to, _key, _body), sock in _SENT_EARLY.items()
                     if sent_to == url), None)
        if sock is None:
            yield url
        else:
            waiting[sock.fileno()] = url
    poller = select.poll()
    for fd in waiting:
        poller.register(fd, select.POLLIN)
    while waiting:
        left = deadline - time.monotonic()
        ready = poller.poll(left * 1000) if left > 0 else []
        if not ready:
            break
        for fd, _event in ready:
            poller.unregister(fd)
            yield waiting.pop(fd)
    yield from list(waiting.values())
