"""The hand-written XML-RPC client: encoding, decoding (checked against the stdlib), failure
classification, and real HTTP servers on a unix socket and on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest

from siteboot.errors import EXIT_FAILED, InstanceError
from siteboot.rpc import (
    IMPOSTOR,
    NO_ACCESS,
    REFUSED,
    Endpoint,
    Fault,
    HttpStatusError,
    RpcError,
    _decode_plain,
    _NotPlain,
    check_tcp_peer_uid,
    classify,
    decode_response,
    decode_xml,
    encode,
    escape,
    request_body,
)
from siteboot.statusreport import NOT_ANSWERING, NOT_RUNNING
from tests.helpers import auth_header

# Every kind of value supervisord sends or receives.
VALUES: list[Any] = [
    "plain",
    "a < b && c > d",
    "<tag>&amp;</tag>",
    "héllo wörld ✓ 日本",
    " leading and trailing ",
    "line one\nline two\ttab",
    "",
    0,
    -7,
    2**31 - 1,
    True,
    False,
    None,
    1.5,
    -0.25,
    1e100,
    [],
    {},
    [1, "two", [3, [4, []]], {"five": 5}],
    {"name": "web", "pid": 123, "nested": {"list": [True, None, 2.5], "empty": {}}},
    {"faultCode": 10, "faultString": "BAD_NAME: x"},  # a multicall fault entry is a plain struct
    [{"name": "web_00", "group": "t-dev", "statename": "RUNNING", "spawnerr": ""}],
]


def response(value: Any) -> bytes:
    return xmlrpc.client.dumps((value,), methodresponse=True, allow_none=True).encode("utf-8")


def raw_response(value_xml: str) -> bytes:
    return (f"<?xml version='1.0'?><methodResponse><params><param><value>{value_xml}</value>"
            "</param></params></methodResponse>").encode()


# --------------------------------------------------------------------------------------------
# encode / request_body / decode_response


@pytest.mark.parametrize("value", VALUES)
def test_decode_matches_stdlib(value):
    data = response(value)
    expected = xmlrpc.client.loads(data)[0][0]
    assert decode_response(data) == expected
    assert decode_response(data) == value


@pytest.mark.parametrize("value", VALUES)
def test_request_body_is_read_back_by_stdlib(value):
    params, method = xmlrpc.client.loads(request_body("supervisor.echo", ("first", value)))
    assert method == "supervisor.echo"
    assert params == ("first", value)


@pytest.mark.parametrize("value", VALUES)
def test_encode_then_decode_round_trips(value):
    assert decode_response(raw_response(encode(value))) == value


def test_request_body_without_params_and_escaped_method():
    body = request_body("a&b", ())
    assert body.startswith(b"<?xml")
    assert xmlrpc.client.loads(body) == ((), "a&b")


def test_tuples_encode_as_arrays_and_keys_as_strings():
    assert decode_response(raw_response(encode(("x", 1)))) == ["x", 1]
    assert decode_response(raw_response(encode({3: "three"}))) == {"3": "three"}


def test_booleans_are_not_ints():
    assert encode(True) == "<boolean>1</boolean>"
    assert encode(False) == "<boolean>0</boolean>"
    assert encode(1) == "<int>1</int>"
    assert decode_response(raw_response("<boolean>1</boolean>")) is True
    assert decode_response(raw_response("<boolean>0</boolean>")) is False


@pytest.mark.parametrize("value", [b"bytes", object(), {1, 2}])
def test_encode_refuses_other_types(value):
    with pytest.raises(TypeError, match="cannot encode"):
        encode(value)


def test_escape():
    assert escape("<a & b>") == "&lt;a &amp; b&gt;"


@pytest.mark.parametrize(("xml", "expected"), [
    ("untyped &lt;text&gt; &amp; more", "untyped <text> & more"),
    ("", ""),
    ("<string/>", ""),
    ("<string></string>", ""),
    ("<i4>42</i4>", 42),
    ("<i8>12345678901</i8>", 12345678901),
    ("<int> -3 </int>", -3),
    ("<double>2.5</double>", 2.5),
    ("<nil/>", None),
    ("<array><data/></array>", []),
    ("<array><data></data></array>", []),
    ("<struct/>", {}),
    ("<array><data><value>a</value><value><int>1</int></value><value/></data></array>",
     ["a", 1, ""]),
    ("<struct><member><name>k</name><value>v</value></member>"
     "<member><name>e</name><value></value></member></struct>", {"k": "v", "e": ""}),
    ("\n  <struct>\n <member>\n <name>a</name>\n <value><string> x </string></value>\n"
     " </member>\n </struct>\n", {"a": " x "}),
])
def test_decode_hand_written_values(xml, expected):
    assert decode_response(raw_response(xml)) == expected


def test_decode_non_ascii_bytes():
    data = response("ünïcode ✓")
    assert "✓".encode() in data
    assert decode_response(data) == "ünïcode ✓"


CONTROL_TEXTS = [
    "\x1b[31mred\x1b[0m plain \x1b[1;32mbold green\x1b[0m",  # ANSI colours
    "".join(chr(c) for c in range(32)),  # every C0 control, tab and newline included
    "progress 10%\rprogress 20%\r\n",  # CR would come out of an XML parser as LF
    "not XML: \ufffe \uffff",
    "\ue000 \ue100\ue000\ue11b, the escape itself, next to what it stands for",
    "ü ✓ \x07 ✓",
]


@pytest.mark.parametrize("text", CONTROL_TEXTS)
def test_decode_what_supervisord_sends_with_control_characters(text):
    # supervisord marshals with xmlrpc.client, which escapes only & < >: this is what arrives
    data = xmlrpc.client.dumps(([text, {"k": text}, 3],), methodresponse=True).encode()
    assert decode_response(data) == [text, {"k": text}, 3]


def test_an_xml_parser_alone_refuses_them():
    data = xmlrpc.client.dumps((CONTROL_TEXTS[0],), methodresponse=True).encode()
    with pytest.raises(Exception, match="not well-formed"):
        xmlrpc.client.loads(data)


def test_decode_control_characters_in_a_fault():
    data = xmlrpc.client.dumps(xmlrpc.client.Fault(30, "FAILED: \x1b[31m\r")).encode()
    with pytest.raises(Fault) as ours:
        decode_response(data)
    assert ours.value.faultString == "FAILED: \x1b[31m\r"


@pytest.mark.parametrize(("code", "text"), [
    (60, "ALREADY_STARTED: t-dev:web"),
    (10, "BAD_NAME: t-dev:nope"),
    (70, "NOT_RUNNING: t-dev:web <&>"),
    (2, ""),
])
def test_fault_matches_stdlib(code, text):
    data = xmlrpc.client.dumps(xmlrpc.client.Fault(code, text)).encode()
    with pytest.raises(xmlrpc.client.Fault) as stdlib:
        xmlrpc.client.loads(data)
    with pytest.raises(Fault) as ours:
        decode_response(data)
    assert ours.value.faultCode == stdlib.value.faultCode == code
    assert ours.value.faultString == stdlib.value.faultString == text
    assert str(code) in str(ours.value)


def test_empty_response_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        decode_response(b"<?xml version='1.0'?><methodResponse><params/></methodResponse>")


# --------------------------------------------------------------------------------------------
# classify


@pytest.mark.parametrize(("exc", "reason"), [
    (HttpStatusError(401, "Unauthorized"), REFUSED),
    (FileNotFoundError(2, "No such file"), NOT_RUNNING),
    (ConnectionRefusedError(111, "Connection refused"), NOT_RUNNING),
    (ConnectionResetError(104, "reset"), NOT_RUNNING),
    (PermissionError(13, "Permission denied"), NO_ACCESS),
    (socket.timeout("timed out"), NOT_ANSWERING),
    (TimeoutError("timed out"), NOT_ANSWERING),
    (HttpStatusError(500, "Internal Server Error"), NOT_ANSWERING),
    (HttpStatusError(0, "malformed answer ''"), NOT_ANSWERING),
    (ValueError("not xml"), NOT_ANSWERING),
])
def test_classify(exc, reason):
    url = "unix:///tmp/x/supervisor.sock"
    err = classify(exc, url)
    assert isinstance(err, RpcError)
    assert isinstance(err, InstanceError)
    assert err.exit_code == EXIT_FAILED
    assert err.reason == reason
    assert url in err.message


def test_classify_hints():
    assert "siteboot up" in str(classify(FileNotFoundError(), "u"))
    assert "401" in str(classify(HttpStatusError(401, "Unauthorized"), "u"))
    assert "restart" in (classify(HttpStatusError(401, "Unauthorized"), "u").hint or "")
    assert "owner" in (classify(PermissionError(), "u").hint or "")


# --------------------------------------------------------------------------------------------
# Real servers


@pytest.fixture(params=["unix", "tcp"])
def transport(request, short_dir) -> Path | None:
    return short_dir / "s.sock" if request.param == "unix" else None


def test_call_sends_basic_auth_and_decodes(serve, transport):
    server, url = serve(transport)
    endpoint = Endpoint(url, "s3cret", timeout=5)
    assert endpoint.call("supervisor.getState") == {"statecode": 1, "statename": "RUNNING"}
    assert endpoint.call("echo", "<&> ✓", 3, [True, None], {"k": 1.5}) == \
        ["<&> ✓", 3, [True, None], {"k": 1.5}]
    path, headers, _ = server.requests[0]
    assert path == "/RPC2"
    assert headers["Authorization"] == auth_header("s3cret")
    assert headers["Content-Type"] == "text/xml"


def test_call_raises_faults(serve, transport):
    _, url = serve(transport)
    with pytest.raises(Fault) as info:
        Endpoint(url, "s3cret").call("supervisor.startProcess", "t-dev:web", False)
    assert info.value.faultCode == 60
    assert info.value.faultString == "ALREADY_STARTED: t-dev:web"


def test_multicall_results_and_faults(serve, transport):
    _, url = serve(transport)
    results = Endpoint(url, "s3cret").multicall([
        ("supervisor.getState", ()),
        ("supervisor.getPID", ()),
        ("supervisor.startProcess", ("t-dev:web", False)),
        ("supervisor.startProcess", ("t-dev:nope", False)),
        ("echo", ("a", [1])),
    ])
    assert results[0] == {"statecode": 1, "statename": "RUNNING"}
    assert results[1] == 4242
    assert isinstance(results[2], Fault)
    assert (results[2].faultCode, results[2].faultString) == (60, "ALREADY_STARTED: t-dev:web")
    assert isinstance(results[3], Fault)
    assert results[3].faultCode == 10
    assert results[4] == ["a", [1]]


def test_multicall_of_nothing(serve, short_dir):
    _, url = serve(short_dir / "s.sock")
    assert Endpoint(url, "s3cret").multicall([]) == []


def test_wrong_key_is_refused(serve, transport):
    server, url = serve(transport)
    with pytest.raises(RpcError) as info:
        Endpoint(url, "wrong").call("supervisor.getState")
    assert info.value.reason == REFUSED
    assert "401" in str(info.value)
    assert server.requests[0][1]["Authorization"] == auth_header("wrong")
    with pytest.raises(RpcError) as info:
        Endpoint(url, "wrong").multicall([("supervisor.getState", ())])
    assert info.value.reason == REFUSED


@pytest.mark.parametrize("raw", [
    (500, b"oops"),
    (200, b"<html>not xml-rpc</html>"),
    (200, b"not xml at all"),
])
def test_other_answers_are_not_answering(serve, short_dir, raw):
    _, url = serve(short_dir / "s.sock", raw=raw)
    with pytest.raises(RpcError) as info:
        Endpoint(url, "s3cret").call("supervisor.getState")
    assert info.value.reason == NOT_ANSWERING
    assert url in str(info.value)


def test_nothing_at_the_socket_path(short_dir):
    with pytest.raises(RpcError) as info:
        Endpoint(f"unix://{short_dir}/missing.sock", "k").call("supervisor.getState")
    assert info.value.reason == NOT_RUNNING


def test_stale_socket_file_without_listener(short_dir):
    path = short_dir / "stale.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()
    assert path.exists()
    with pytest.raises(RpcError) as info:
        Endpoint(f"unix://{path}", "k").call("supervisor.getState")
    assert info.value.reason == NOT_RUNNING


def test_closed_tcp_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(RpcError) as info:
        Endpoint(f"http://127.0.0.1:{port}", "k").call("supervisor.getState")
    assert info.value.reason == NOT_RUNNING


def test_listener_that_never_answers(short_dir):
    path = short_dir / "mute.sock"
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        mute.bind(str(path))
        mute.listen(1)  # connections queue up, nobody reads them
        with pytest.raises(RpcError) as info:
            Endpoint(f"unix://{path}", "k", timeout=0.2).call("supervisor.getState")
        assert info.value.reason == NOT_ANSWERING
    finally:
        mute.close()


def test_socket_path_and_url():
    assert Endpoint("unix:///tmp/a/supervisor.sock", "k").socket_path == "/tmp/a/supervisor.sock"
    assert Endpoint("http://127.0.0.1:9001", "k").socket_path is None


def test_key_goes_only_to_a_server_of_the_owner(serve, transport):
    """After /tmp was wiped anyone may listen at the instance's path or port first."""
    server, url = serve(transport)
    mine = Endpoint(url, "s3cret", timeout=5, owner_uid=os.geteuid())
    assert mine.call("supervisor.getPID") == 4242
    impostor_check = Endpoint(url, "s3cret", timeout=5, owner_uid=os.geteuid() + 4321)
    with pytest.raises(RpcError) as info:
        impostor_check.call("supervisor.getPID")
    assert info.value.reason == IMPOSTOR
    assert "the key was not sent" in str(info.value)
    assert len(server.requests) == 1  # the refused call never reached the server


def test_key_is_not_in_the_endpoint_repr():
    assert "s3cret" not in repr(Endpoint("unix:///x", "s3cret"))


def test_tcp_peer_check_reads_the_connection_in_proc_net_tcp(tmp_path):
    table = tmp_path / "tcp"
    table.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1001\n"
        "   1: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1001\n"
        "   2: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0\n"
        "   3: 0100007F:1F90 0100007F:9C41 01 00000000:00000000 00:00000000 00000000  4242\n")
    url = "http://127.0.0.1:8080"
    check_tcp_peer_uid(0x9C40, 8080, 1001, url, (str(table),))
    with pytest.raises(RpcError) as info:  # the same port, someone else's end of it
        check_tcp_peer_uid(0x9C41, 8080, 1001, url, (str(table),))
    assert info.value.reason == IMPOSTOR
    assert "held by uid 4242, not uid 1001" in str(info.value)
    with pytest.raises(RpcError, match="cannot tell who answers"):
        check_tcp_peer_uid(0x9C42, 8080, 1001, url, (str(table),))


# --------------------------------------------------------------------------------------------
# the two readers: regular expressions for what supervisord writes, expat for the rest

RECORDED = Path(__file__).resolve().parent.parent / "fixtures" / "supervisord-multicall.xml"


def test_a_recorded_supervisord_answer_is_read_without_expat():
    # getState, getPID, getAllProcessInfo (20 programs), readLog and a BAD_NAME fault
    data = RECORDED.read_bytes()
    value, fault = _decode_plain(data)
    assert not fault
    assert value == decode_xml(data) == xmlrpc.client.loads(data)[0][0]
    assert len(value[2]) == 20
    assert value[4]["faultCode"] == 10


@pytest.mark.parametrize("value", VALUES + CONTROL_TEXTS + [CONTROL_TEXTS, {"k&<>'\"": "v"}])
def test_both_readers_agree(value):
    data = response(value)
    assert decode_xml(data) == decode_response(data) == value


@pytest.mark.parametrize(("xml", "expected"), [
    ("&#65;&#x42;C", "ABC"),  # character references: only expat reads them
    ("<string>a<![CDATA[<b>]]></string>", "a<b>"),
    ("<struct><member><name>n</name><value><int>1</int></value></member>"
     "<member><name>s</name><value><array><data/></array></value></member></struct>",
     {"n": 1, "s": []}),
    ("<struct><member><name>a&#38;b</name><value><int>1</int></value></member></struct>",
     {"a&b": 1}),
])
def test_what_the_regular_expressions_do_not_read_goes_to_expat(xml, expected):
    data = raw_response(xml)
    with pytest.raises(_NotPlain):
        _decode_plain(data)
    assert decode_response(data) == expected


def test_mismatched_tags_are_expats_to_refuse():
    data = raw_response("<struct><member><name>n</name><value><int>1</string></value>"
                        "</member></struct>")
    with pytest.raises(Exception, match="mismatched tag"):
        decode_response(data)


@pytest.mark.parametrize("code", [10, 70])
def test_both_readers_raise_the_same_fault(code):
    data = xmlrpc.client.dumps(xmlrpc.client.Fault(code, "BAD <&> \x1b")).encode()
    for read in (decode_response, decode_xml):
        with pytest.raises(Fault) as raised:
            read(data)
        assert (raised.value.faultCode, raised.value.faultString) == (code, "BAD <&> \x1b")


# --------------------------------------------------------------------------------------------
# requests sent early (status asks before it has loaded what reads the answers)


def test_a_request_sent_early_is_answered_to_the_call_that_makes_it(serve, short_dir):
    from siteboot import wire

    server, url = serve(short_dir / "s.sock")
    endpoint = Endpoint(url, "s3cret", timeout=5)
    body = request_body("supervisor.getState", ())
    wire.send_early(str(short_dir / "s.sock"), "s3cret", body, 5.0)
    wire.send_early(str(short_dir / "s.sock"), "s3cret", body, 5.0)  # once is enough
    assert len(server.requests) <= 1
    assert endpoint.call("supervisor.getState") == {"statecode": 1, "statename": "RUNNING"}
    assert len(server.requests) == 1  # the early one: not sent again
    assert endpoint.call("supervisor.getState") == {"statecode": 1, "statename": "RUNNING"}
    assert len(server.requests) == 2  # used once
    assert server.requests[0][1]["Authorization"] == auth_header("s3cret")


def test_an_early_request_of_another_body_or_key_is_not_taken(serve, short_dir):
    from siteboot import wire

    _server, url = serve(short_dir / "s.sock")
    wire.send_early(str(short_dir / "s.sock"), "s3cret", request_body("supervisor.getPID", ()),
                    5.0)
    assert Endpoint(url, "s3cret").call("supervisor.getState")["statename"] == "RUNNING"
    assert wire.take_early(url, "other", request_body("supervisor.getPID", ())) is None
    early = wire.take_early(url, "s3cret", request_body("supervisor.getPID", ()))
    assert early is not None
    early.close()


def test_an_early_request_is_waited_for_as_long_as_the_call_says(short_dir, monkeypatch):
    """The quick status reads its supervisords one after the other against one deadline: a
    hung one's answer, sent early, must not be waited for with the early send's timeout."""
    from siteboot import rpc, wire

    path = short_dir / "mute.sock"
    waits = []

    def read_answer(sock: socket.socket) -> bytes:
        waits.append(sock.gettimeout())
        raise socket.timeout("timed out")

    monkeypatch.setattr(rpc, "read_answer", read_answer)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(str(path))
        mute.listen(1)  # connections queue up, nobody reads them
        body = request_body("supervisor.getState", ())
        wire.send_early(str(path), "k", body, 5.0)
        with pytest.raises(RpcError) as info:
            Endpoint(f"unix://{path}", "k", timeout=1.0).call("supervisor.getState")
    assert info.value.reason == NOT_ANSWERING
    assert waits == [1.0]


def test_nothing_is_sent_early_where_nothing_listens(short_dir):
    from siteboot import wire

    wire.send_early(str(short_dir / "none.sock"), "k", b"x", 1.0)
    assert wire.take_early(f"unix://{short_dir}/none.sock", "k", b"x") is None
