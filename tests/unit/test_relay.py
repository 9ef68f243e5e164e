"""The ctl relay: what a grant allows, the one-time credential, and that the key only goes to
a checked upstream. supervisorctl's own client classes talk to it, against a fake supervisord.

A client of another uid cannot be made here: tests/integration/test_users.py tries one."""

from __future__ import annotations

import base64
import configparser
import os
import socket
import stat
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from siteboot.relay import (
    CONTROL_GRANT,
    FAULT_MALFORMED,
    FAULT_NOT_GRANTED,
    FAULT_UPSTREAM,
    MULTICALL,
    Session,
    called_methods,
    encode_call,
    read_call,
    relay_session,
)
from siteboot.rpc import IMPOSTOR, Endpoint, RpcError
from siteboot.statusreport import NOT_RUNNING
from tests.helpers import auth_header

# Every method supervisord 4 offers that a control grant does not: the owner's alone.
OWNER_ONLY = {
    "supervisor.shutdown", "supervisor.restart", "supervisor.reloadConfig",
    "supervisor.addProcessGroup", "supervisor.removeProcessGroup", "supervisor.getAllConfigInfo",
    "supervisor.readLog", "supervisor.readMainLog", "supervisor.clearLog",
    "supervisor.clearProcessLog", "supervisor.clearProcessLogs", "supervisor.clearAllProcessLogs",
    "supervisor.sendProcessStdin", "supervisor.sendRemoteCommEvent",
}


def request(method: str, *params: Any) -> bytes:
    return xmlrpc.client.dumps(params, method).encode()


# --------------------------------------------------------------------------------------------
# Reading requests


def test_read_call_reads_what_supervisorctl_sends():
    assert read_call(request("supervisor.startProcess", "t-dev:web", True)) == \
        ("supervisor.startProcess", ("t-dev:web", True))
    assert read_call(request("supervisor.getState")) == ("supervisor.getState", ())


@pytest.mark.parametrize("body", [
    b"",
    b"not xml",
    b"<methodCall><methodName>supervisor.getState</methodName>",  # cut short
    xmlrpc.client.dumps((1,), methodresponse=True).encode(),  # an answer, not a call
    b"<?xml version='1.0'?><methodCall><params></params></methodCall>",
    b"<?xml version='1.0'?><methodCall><methodName></methodName></methodCall>",
    b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'supervisor.shutdown'>]>"
    b"<methodCall><methodName>&a;</methodName></methodCall>",
    b"<?xml version='1.0'?><methodCall><methodName>supervisor.getState<!-- -->"
    b"</methodName></methodCall>",
    b"<methodCall><methodName>x</methodName><params><param><value><int>nan</int></value>"
    b"</param></params></methodCall>",
])
def test_read_call_refuses_what_is_not_a_request(body):
    with pytest.raises(ValueError, match="XML-RPC request"):
        read_call(body)


def test_called_methods_of_a_multicall_are_its_calls():
    calls = [{"methodName": "supervisor.getState", "params": []},
             {"methodName": "supervisor.shutdown"}]
    assert called_methods(MULTICALL, (calls,)) == ["supervisor.getState", "supervisor.shutdown"]
    assert called_methods(MULTICALL, ([],)) == []
    assert called_methods("supervisor.getPID", ()) == ["supervisor.getPID"]


@pytest.mark.parametrize("params", [
    (),
    ("supervisor.shutdown",),
    ([{"methodName": "supervisor.getState"}], "extra"),
    (["supervisor.shutdown"],),
    ([{"params": []}],),
    ([{"methodName": 3}],),
    ([{"methodName": "supervisor.getState", "params": "x"}],),
    ([{"methodName": MULTICALL, "params": [[{"methodName": "supervisor.shutdown"}]]}],),
])
def test_malformed_multicalls_are_refused(params):
    with pytest.raises(ValueError, match=MULTICALL):
        called_methods(MULTICALL, params)


def test_what_is_sent_on_is_what_was_checked():
    body = (b"<?xml version='1.0'?><methodCall><methodName>supervisor.getState</methodName>"
            b"<params><param><value>plain</value></param></params></methodCall>")
    method, params = read_call(body)
    assert xmlrpc.client.loads(encode_call(method, params)) == (("plain",), "supervisor.getState")


# --------------------------------------------------------------------------------------------
# The grant


def supervisord_methods() -> set[str]:
    from supervisor.rpcinterface import SupervisorNamespaceRPCInterface
    from supervisor.xmlrpc import SystemNamespaceRPCInterface

    system = SystemNamespaceRPCInterface([("supervisor", SupervisorNamespaceRPCInterface(None))])
    return set(system.listMethods())


def test_the_grant_names_only_methods_supervisord_has():
    assert CONTROL_GRANT.methods <= supervisord_methods()


def test_every_method_of_supervisord_is_decided():
    """A supervisor release with a new method fails here until someone decides who may call it."""
    assert supervisord_methods() - CONTROL_GRANT.methods - {MULTICALL} == OWNER_ONLY


def test_the_readme_states_the_grant():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Running as several users"):]
    for method in sorted(CONTROL_GRANT.methods | OWNER_ONLY):
        assert f"`{method.split('.', 1)[1]}`" in section, method


# --------------------------------------------------------------------------------------------
# Sessions against a fake supervisord


@pytest.fixture(params=["unix", "tcp"])
def upstream(request, serve, short_dir) -> tuple[Any, Endpoint]:
    where = short_dir / "s.sock" if request.param == "unix" else None
    server, url = serve(where)
    return server, Endpoint(url, "s3cret", timeout=5, owner_uid=os.geteuid())


@pytest.fixture
def owner_session(upstream) -> Iterator[Session]:
    with relay_session(upstream[1], None, "alice", "t-main-dev") as session:
        yield session


@pytest.fixture
def member_session(upstream) -> Iterator[Session]:
    with relay_session(upstream[1], CONTROL_GRANT, "alice", "t-main-dev") as session:
        yield session


def client_options(session: Session) -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(session.client_conf)
    return dict(parser["supervisorctl"])


def proxy(session: Session) -> Any:
    """The XML-RPC client supervisorctl uses, configured from the session's client config."""
    from supervisor.xmlrpc import SupervisorTransport

    options = client_options(session)
    transport = SupervisorTransport(options["username"], options["password"],
                                    options["serverurl"])
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def raw_exchange(session: Session, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(session.socket_path))
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_client_config_holds_a_one_time_credential_not_the_key(upstream):
    with relay_session(upstream[1], None, "alice", "t-main-dev") as session:
        options = client_options(session)
        assert options["serverurl"] == f"unix://{session.socket_path}"
        assert options["prompt"] == "t-main-dev"
        assert "s3cret" not in session.client_conf.read_text()
        assert stat.S_IMODE(os.stat(session.client_conf).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(session.socket_path.parent).st_mode) == 0o700
        assert len(str(session.socket_path)) < 100
        with relay_session(upstream[1], None, "alice", "t-main-dev") as other:
            assert client_options(other)["password"] != options["password"]
            assert other.socket_path.parent != session.socket_path.parent
    assert not session.socket_path.parent.exists()


def test_the_owner_gets_everything_and_only_the_relay_holds_the_key(upstream, owner_session):
    server, _ = upstream
    with proxy(owner_session) as rpc:
        assert rpc.supervisor.getPID() == 4242
        assert rpc.supervisor.getState()["statename"] == "RUNNING"  # on the same connection
        with pytest.raises(xmlrpc.client.Fault) as info:
            rpc.supervisor.shutdown()
    assert info.value.faultCode == 1  # the fake's UNKNOWN_METHOD: it was forwarded
    assert [body for _, _, body in server.requests][-1] == encode_call("supervisor.shutdown", ())
    assert all(headers["Authorization"] == auth_header("s3cret")
               for _, headers, _ in server.requests)
    assert owner_session.relay.problems == []


def test_a_member_gets_the_grant_and_no_more(upstream, member_session):
    server, _ = upstream
    with proxy(member_session) as rpc:
        assert rpc.supervisor.getPID() == 4242
        with pytest.raises(xmlrpc.client.Fault) as info:
            rpc.supervisor.startProcess("t-dev:web", False)
        assert info.value.faultCode == 60  # supervisord's own answer, passed through
        for method in ("shutdown", "reloadConfig", "getAllConfigInfo", "sendProcessStdin"):
            with pytest.raises(xmlrpc.client.Fault) as info:
                getattr(rpc.supervisor, method)()
            assert info.value.faultCode == FAULT_NOT_GRANTED
            assert info.value.faultString == (f"supervisor.{method}: not part of the control "
                                              "grant, it stays with the owner alice")
    forwarded = [xmlrpc.client.loads(body)[1] for _, _, body in server.requests]
    assert forwarded == ["supervisor.getPID", "supervisor.startProcess"]
    assert len(member_session.relay.problems) == 4
    assert "run as alice" in (member_session.relay.problems[0].hint or "")


def test_a_member_multicall_goes_through_only_when_every_call_is_granted(upstream, member_session):
    server, _ = upstream
    granted = [{"methodName": "supervisor.getPID", "params": []},
               {"methodName": "supervisor.getState", "params": []}]
    with proxy(member_session) as rpc:
        assert rpc.system.multicall(granted) == [4242, {"statecode": 1, "statename": "RUNNING"}]
        with pytest.raises(xmlrpc.client.Fault) as info:
            rpc.system.multicall([*granted, {"methodName": "supervisor.shutdown", "params": []}])
    assert info.value.faultCode == FAULT_NOT_GRANTED
    assert "supervisor.shutdown" in info.value.faultString
    assert len(server.requests) == 1


def test_malformed_requests_are_refused_and_not_forwarded(upstream, member_session):
    server, _ = upstream
    token = auth_header("x").split()[0]  # "Basic"
    options = client_options(member_session)
    credential = base64.b64encode(f"{options['username']}:{options['password']}".encode()).decode()
    body = b"<methodCall><methodName>supervisor.getPID"
    answer = raw_exchange(member_session, (
        f"POST /RPC2 HTTP/1.1\r\nHost: x\r\nAuthorization: {token} {credential}\r\n"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
    assert answer.startswith(b"HTTP/1.1 200")
    with pytest.raises(xmlrpc.client.Fault) as info:
        xmlrpc.client.loads(answer.partition(b"\r\n\r\n")[2])
    assert info.value.faultCode == FAULT_MALFORMED
    assert server.requests == []


@pytest.mark.parametrize("authorization", [None, "Basic " + base64.b64encode(b"ctl-x:guess").decode(),
                                           auth_header("s3cret")])
def test_requests_without_the_one_time_credential_get_401(upstream, member_session, authorization):
    server, _ = upstream
    header = f"Authorization: {authorization}\r\n" if authorization else ""
    body = request("supervisor.getPID")
    answer = raw_exchange(member_session, (
        f"POST /RPC2 HTTP/1.1\r\nHost: x\r\n{header}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body)
    assert answer.startswith(b"HTTP/1.1 401")
    get = raw_exchange(member_session, f"GET /logtail/t-dev:web HTTP/1.1\r\n{header}\r\n".encode())
    assert get.startswith(b"HTTP/1.1 401")
    assert server.requests == []


def test_an_impostor_upstream_never_gets_the_key(serve, short_dir):
    """Whoever holds the instance's socket or port is not its owner: nothing is sent."""
    server, url = serve(short_dir / "s.sock")
    impostor = Endpoint(url, "s3cret", timeout=5, owner_uid=os.geteuid() + 4321)
    with relay_session(impostor, CONTROL_GRANT, "alice", "p") as session:
        with proxy(session) as rpc, pytest.raises(xmlrpc.client.Fault) as info:
            rpc.supervisor.getPID()
        assert info.value.faultCode == FAULT_UPSTREAM
        assert "the key was not sent" in info.value.faultString
        assert tail(session, "/logtail/t-dev:web/stdout") == ([], ["Cannot read, status code 502"])
    assert server.requests == []
    assert [p.reason for p in session.relay.problems if isinstance(p, RpcError)] == [IMPOSTOR] * 2


def test_an_instance_that_went_away_is_a_clear_fault(short_dir):
    gone = Endpoint(f"unix://{short_dir}/gone.sock", "s3cret", timeout=5, owner_uid=os.geteuid())
    with relay_session(gone, None, "alice", "p") as session, proxy(session) as rpc, \
            pytest.raises(xmlrpc.client.Fault) as info:
        rpc.supervisor.getPID()
    assert info.value.faultCode == FAULT_UPSTREAM
    assert info.value.faultString == f"siteboot: nothing is listening at unix://{short_dir}/gone.sock"
    assert session.relay.problems[0].reason == NOT_RUNNING  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# tail -f: GET /logtail, streamed


def tail(session: Session, path: str) -> tuple[list[bytes], list[str]]:
    """Fetch ``path`` as supervisorctl's `tail -f` does; (data fed, errors)."""
    from supervisor import http_client
    from supervisor.medusa import asyncore_25 as asyncore

    class Collect(http_client.Listener):  # type: ignore[misc]
        def __init__(self) -> None:
            self.fed: list[bytes] = []
            self.errors: list[str] = []

        def feed(self, url: str, data: bytes) -> None:
            self.fed.append(data)

        def error(self, url: str, error: str) -> None:
            self.errors.append(error)

    options = client_options(session)
    listener = Collect()
    channels: dict[int, Any] = {}
    handler = http_client.HTTPHandler(listener, options["username"], options["password"],
                                      map=channels)
    handler.get(options["serverurl"], path)
    asyncore.loop(timeout=0.05, map=channels)
    return listener.fed, listener.errors


def test_tail_f_is_streamed_through_with_the_key_only_upstream(upstream, member_session):
    server, _ = upstream
    assert tail(member_session, "/logtail/t-dev:web/stderr") == ([b"line one\n", b"line two\n"], [])
    path, headers, _ = server.requests[0]
    assert path == "/logtail/t-dev:web/stderr"
    assert headers["Authorization"] == auth_header("s3cret")


def test_a_member_may_not_follow_the_main_log(upstream, member_session):
    server, _ = upstream
    assert tail(member_session, "/mainlogtail") == ([], ["Cannot read, status code 403"])
    assert tail(member_session, "/index.html") == ([], ["Cannot read, status code 404"])
    assert server.requests == []
    assert "GET /mainlogtail: not part of the control grant" in str(member_session.relay.problems)


def test_the_owner_may_follow_the_main_log(upstream, owner_session):
    server, _ = upstream
    tail(owner_session, "/mainlogtail")
    assert [path for path, _, _ in server.requests] == ["/mainlogtail"]


def test_a_session_ends_while_a_tail_f_still_streams(upstream):
    server, endpoint = upstream
    server.keep_open = True
    with relay_session(endpoint, CONTROL_GRANT, "alice", "p") as session:
        options = client_options(session)
        credential = base64.b64encode(f"{options['username']}:{options['password']}".encode())
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(session.socket_path))
        client.sendall(b"GET /logtail/t-dev:web HTTP/1.1\r\nAuthorization: Basic "
                       + credential + b"\r\n\r\n")
        received = b""
        while b"line two" not in received:
            received += client.recv(65536)
    # the block ended although neither side closed: the relay ended the stream
    assert client.recv(65536) == b""
    client.close()
    assert received.startswith(b"HTTP/1.1 200 OK")


# --------------------------------------------------------------------------------------------
# siteboot ctl: supervisorctl (here a stand-in making its calls) behind the relay


@pytest.fixture
def ctl_with(monkeypatch, short_dir, serve) -> Any:
    """``ctl_with(instance, *calls)``: run `siteboot ctl` against a fake supervisord, with a
    supervisorctl that makes ``calls`` (method names) through the relay; (exit code, fake)."""
    from siteboot import control, proc
    from tests.helpers import own_site_text, plan_from

    theirs = ('[instances.theirs]\nuser = "someone-else"\n'
              'port = { dev = 40011, staging = 40012, prod = 40013 }')
    plan = plan_from(own_site_text(short_dir, extra=theirs), short_dir)
    server, url = serve(short_dir / "s.sock")
    monkeypatch.setattr(control, "connect", lambda plan, inst: Endpoint(
        url, "s3cret", timeout=5, owner_uid=os.geteuid()))

    def run(instance: str, *calls: str | Callable[[], None]) -> tuple[int, Any]:
        def supervisorctl(cmd: list[str], env: Any = None) -> int:
            conf = Path(cmd[cmd.index("-c") + 1])
            session = Session(conf.parent / "relay.sock", conf, None)  # type: ignore[arg-type]
            with proxy(session) as rpc:
                for call in calls:
                    try:
                        getattr(rpc, call)() if isinstance(call, str) else call()
                    except xmlrpc.client.Fault:
                        return 1
            return 0

        monkeypatch.setattr(proc, "run_foreground", supervisorctl)
        return control.ctl(plan, instance, []), server

    return run


def test_ctl_of_the_owner_relays_everything(ctl_with):
    code, server = ctl_with("main", "supervisor.getPID", "system.listMethods")
    assert code == 1  # the fake has no listMethods: supervisord's fault, supervisorctl's exit
    methods = [xmlrpc.client.loads(body)[1] for _, _, body in server.requests]
    assert methods == ["supervisor.getAPIVersion", "supervisor.getPID", "system.listMethods"]


def test_ctl_of_a_member_ends_saying_what_stays_with_the_owner(ctl_with):
    from siteboot.errors import SitebootError

    with pytest.raises(SitebootError) as info:
        ctl_with("theirs", "supervisor.getPID", "supervisor.shutdown")
    assert info.value.message == ("supervisor.shutdown: not part of the control grant, it stays "
                                  "with the owner someone-else")
    assert "run as someone-else" in (info.value.hint or "")


def test_ctl_of_a_member_whose_instance_went_away_says_who_can_start_it(ctl_with, short_dir):
    def down() -> None:  # in the middle of the session, as the owner's `siteboot down`
        (short_dir / "s.sock").unlink()

    with pytest.raises(RpcError) as info:
        ctl_with("theirs", "supervisor.getPID", down, "supervisor.getPID")
    assert info.value.reason == NOT_RUNNING
    assert info.value.hint == "only someone-else can start it: `siteboot up -i theirs` as someone-else"


def test_a_long_tmpdir_falls_back_to_tmp(monkeypatch, upstream, tmp_path):
    import tempfile

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    with relay_session(upstream[1], None, "alice", "p") as session:
        assert session.socket_path.parent.parent == Path("/tmp")
    assert list(deep.iterdir()) == []
