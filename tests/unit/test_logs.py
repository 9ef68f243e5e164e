"""`siteboot logs` (issue 9, item 4): which logs, their labels, whole lines, files for the owner,
RPC for the others, and instances that cannot be read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from siteboot import logs
from siteboot.errors import KeyAccessError, UsageError
from siteboot.logtail import FileFollower, lines_start
from siteboot.plan import Plan
from siteboot.rpc import Fault, RpcError
from tests.helpers import plan_from

SITE = """
[site]
name = "t"
envs = ["dev"]
runtime_dir = "{base}/run"
state_dir = "{base}/state"

[instances.alpha]
port = {{ dev = 40001 }}

[instances.beta]
port = {{ dev = 40002 }}

[instances.gamma]
user = "someone-else"
port = {{ dev = 40003 }}

[programs.web]
instance = "alpha"
command = "python3 -m http.server {{port}}"
port = {{ dev = 41001 }}

[programs.api]
instance = "alpha"
command = "sleep 100"
redirect_stderr = true

[programs.worker]
instance = "beta"
command = "sleep 100"
numprocs = 2

[programs.other]
instance = "gamma"
command = "sleep 100"
"""


@pytest.fixture
def plan(short_dir: Path) -> Plan:
    result: Plan = plan_from(SITE.format(base=short_dir), short_dir)
    return result


# --------------------------------------------------------------------------------------------
# where the last lines begin


@pytest.mark.parametrize(("data", "lines", "expected"), [
    (b"a\nb\nc\n", 2, 2),
    (b"a\nb\nc", 2, 2),  # a last line being written counts
    (b"a\nb\nc\n", 3, None),  # may reach further back
    (b"a\nb\nc\n", 0, 6),
    (b"", 1, None),
    (b"\n\n", 1, 1),
])
def test_lines_start(data, lines, expected):
    assert lines_start(data, lines) == expected


def test_a_file_follower_starts_some_lines_back(tmp_path):
    path = tmp_path / "w.log"
    path.write_text("".join(f"line {n:05d} {'x' * 40}\n" for n in range(2000)))  # > 64 KB
    out: list[str] = []
    follower = FileFollower(path, 0, out.append)
    follower.start(lines=3)
    assert [line.split()[1] for line in "".join(out).splitlines()] == ["01997", "01998", "01999"]
    with open(path, "a") as handle:
        handle.write("more\n")
    assert follower.poll()
    assert "".join(out).endswith("01999 " + "x" * 40 + "\nmore\n")
    follower.close()


def test_a_short_file_is_printed_whole(tmp_path):
    path = tmp_path / "w.log"
    path.write_text("one\ntwo")
    out: list[str] = []
    follower = FileFollower(path, 0, out.append)
    follower.start(lines=10)
    follower.close()
    assert out == ["one\ntwo"]


# --------------------------------------------------------------------------------------------
# which logs


def labels(streams: list[logs.LogStream]) -> list[tuple[str, str, int]]:
    return [(s.instance, s.label, s.index) for s in streams]


def test_every_readable_program_with_stdout_and_stderr(plan):
    # gamma is someone else's and grants nothing; api sends stderr into stdout
    assert labels(logs.select_streams(plan, [])) == [
        ("alpha", "web          ", 0), ("alpha", "web err      ", 0), ("alpha", "api          ", 1),
        ("beta", "worker_00    ", 2), ("beta", "worker_00 err", 2),
        ("beta", "worker_01    ", 3), ("beta", "worker_01 err", 3)]


@pytest.mark.parametrize(("names", "instance", "expected"), [
    (["web"], None, ["alpha:web", "alpha:web err"]),
    (["worker_01"], "beta", ["beta:worker_01", "beta:worker_01 err"]),
    (["beta:worker_01"], "beta", ["beta:worker_01", "beta:worker_01 err"]),
    ([], "alpha", ["alpha:web", "alpha:web err", "alpha:api"]),
    ([], "gamma", ["gamma:other", "gamma:other err"]),  # named: tried, maybe refused
    (["worker"], ["alpha", "beta"], ["beta:worker_00", "beta:worker_00 err", "beta:worker_01",
                                     "beta:worker_01 err"]),
    (["api", "web"], None, ["alpha:api", "alpha:web", "alpha:web err"]),
])
def test_named_and_narrowed(plan, names, instance, expected):
    streams = logs.select_streams(plan, names, instance)
    assert [f"{s.instance}:{s.label.strip()}" for s in streams] == expected


@pytest.mark.parametrize(("names", "instance", "message"), [
    (["nope"], None, "no program 'nope'"),
    (["alpha:web"], "beta", "alpha:web: not in instance beta"),
    ([], "delta", "no instance 'delta'"),
])
def test_names_that_name_nothing(plan, names, instance, message):
    with pytest.raises(UsageError, match=message):
        logs.select_streams(plan, names, instance)


# --------------------------------------------------------------------------------------------
# reading


class FakeLogs:
    """supervisord's log methods over byte strings: tailProcess*Log (the last bytes, the size,
    overflow) and readProcess*Log (bytes from an offset)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files  # "t-dev:web Stdout" -> bytes
        self.error: Exception | None = None

    def multicall(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        if self.error is not None:
            raise self.error
        return [self.one(method, params) for method, params in calls]

    def one(self, method: str, params: tuple[Any, ...]) -> Any:
        stream = "Stderr" if "Stderr" in method else "Stdout"
        data = self.files.get(f"{params[0]} {stream}")
        if data is None:
            return Fault(20, f"NO_FILE: {params[0]}")
        if method.startswith("supervisor.tailProcess"):
            length = params[2]
            return [data[-length:].decode(), len(data), len(data) > length]
        start, length = params[1], params[2]
        return data[start:start + length].decode()


@pytest.fixture
def connects(monkeypatch) -> dict[str, Any]:
    """Put an endpoint (or an exception to raise) under an instance's name."""
    made: dict[str, Any] = {}

    def connect(plan: Plan, inst: Any, timeout: float = 5.0) -> Any:
        fake = made.get(inst.name, object())
        if isinstance(fake, Exception):
            raise fake
        return fake

    monkeypatch.setattr(logs, "connect", connect)
    return made


def write_log(plan: Plan, process: str, stream: str, text: str) -> Path:
    inst = next(i for i in plan.instances.values()
                if any(process in p.process_names() for p in i.programs))
    path = inst.childlogdir / f"{process}.{'out' if stream == 'stdout' else 'err'}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(text)
    return path


def collect(plan: Plan, names: list[str], **options: Any) -> list[str]:
    out: list[str] = []
    logs.show(plan, names, lambda stream, line: out.append(f"{stream.label.strip()}|{line}"),
              **options)
    return out


def test_the_owner_reads_the_files(plan, connects):
    write_log(plan, "web", "stdout", "a\nb\nc\n")
    write_log(plan, "web", "stderr", "oops\npartial")
    assert collect(plan, ["web"], lines=2) == ["web|b", "web|c", "web err|oops", "web err|partial"]


@pytest.fixture
def between_polls(monkeypatch) -> list[Any]:
    """Following, run as: each function of the list, then every poll until nothing is new."""
    steps: list[Any] = []

    def follow(poll: Any, interval: float, stop: Any) -> None:
        for step in steps:
            step()
            while poll():
                pass

    monkeypatch.setattr("siteboot.logtail.follow", follow)
    return steps


def test_following_passes_whole_lines_only(plan, connects, between_polls):
    write_log(plan, "web", "stdout", "first\n")
    between_polls += [
        lambda: write_log(plan, "web", "stderr", "half"),  # not there before: read from its start
        lambda: write_log(plan, "web", "stdout", "in \x1b[31mred\x1b[0m"),
        lambda: write_log(plan, "web", "stderr", " a line\n"),
        lambda: write_log(plan, "web", "stdout", " and done\n"),
    ]
    assert collect(plan, ["web"], follow=True, lines=5) == [
        "web|first", "web err|half a line", "web|in \x1b[31mred\x1b[0m and done"]


def test_a_member_reads_over_rpc(plan, connects, between_polls):
    fake = connects["beta"] = FakeLogs({
        "t-dev:worker_00 Stdout": b"old\n" + b"x" * 10000 + b"\nend\n",  # more than one window
        "t-dev:worker_00 Stderr": b"\x1b[1mbold\x1b[0m\x07\r\n"})

    def more() -> None:
        fake.files["t-dev:worker_00 Stdout"] += b"new\n"

    between_polls.append(more)
    assert collect(plan, ["beta:worker_00"], follow=True, lines=2, files=False) == [
        "worker_00|" + "x" * 10000, "worker_00|end", "worker_00 err|\x1b[1mbold\x1b[0m\x07\r",
        "worker_00|new"]


def test_a_log_not_there_over_rpc_is_empty(plan, connects):
    connects["beta"] = FakeLogs({"t-dev:worker_00 Stdout": b"x\n"})
    assert collect(plan, ["beta:worker_00"], files=False) == ["worker_00|x"]


def test_an_instance_that_cannot_be_read_is_said_once_and_the_others_shown(plan, connects):
    write_log(plan, "web", "stdout", "up\n")
    connects["beta"] = KeyAccessError("no key for beta")
    assert collect(plan, ["web", "worker"]) == [
        "web|up", "worker_00|==> cannot read beta: no key for beta <=="]
    assert collect(plan, ["worker", "web"]) == [  # held until some log could be read
        "web|up", "worker_00|==> cannot read beta: no key for beta <=="]


def test_when_nothing_can_be_read_the_error_is_raised(plan, connects):
    connects["beta"] = RpcError("not running", "nothing is listening at unix:///x")
    out: list[str] = []
    with pytest.raises(RpcError, match="nothing is listening"):  # said once, as the error
        logs.show(plan, ["worker"], lambda stream, line: out.append(line), files=False)
    assert out == []


def test_a_supervisord_that_goes_away_while_followed(plan, connects, between_polls):
    fake = connects["beta"] = FakeLogs({"t-dev:worker_00 Stdout": b"one\n"})

    def away() -> None:
        fake.error = RpcError("not running", "nothing is listening at unix:///x")

    def back() -> None:
        fake.error = None
        fake.files["t-dev:worker_00 Stdout"] += b"two\n"

    between_polls += [away, away, back]
    assert collect(plan, ["beta:worker_00"], follow=True, lines=1, files=False) == [
        "worker_00|one", "worker_00|==> nothing is listening at unix:///x; asking again <==",
        "worker_00|==> reading again <==", "worker_00|two"]


def test_no_instance_of_yours_or_granted(short_dir):
    plan = plan_from(SITE.format(base=short_dir).replace('[instances.alpha]',
                                                         '[instances.alpha]\nuser = "x"')
                     .replace('[instances.beta]', '[instances.beta]\nuser = "x"'), short_dir)
    with pytest.raises(UsageError, match="no logs to show"):
        logs.show(plan, [], lambda stream, line: None)
