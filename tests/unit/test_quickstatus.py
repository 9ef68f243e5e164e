"""The quick status: what it leaves to the full status, decided on the plan cache's digest alone
(the answers of real supervisords: tests/integration/test_quick_status.py)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from siteboot import plan_cache, quickstatus
from siteboot.control import status_digest
from siteboot.plan_cache import load_or_build, trusted_digest
from siteboot.quickstatus import _check_no_orphans, _NotPlain, _report
from siteboot.wire import ANSWER_TIMEOUT
from tests.helpers import plan_from

SITE = """
[site]
name = "q"
envs = ["dev"]
runtime_dir = "{short}/rt"
state_dir = "{short}/st"

[instances.alpha]
port = {{ dev = 45101 }}

[instances.beta]
port = {{ dev = 45102 }}

[programs.web]
instance = "alpha"
command = "serve"

[programs.worker]
instance = "beta"
command = "work"
numprocs = 2
"""


@pytest.fixture
def digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SITEBOOT_HOST", raising=False)
    plan = plan_from(SITE.format(short=tmp_path), tmp_path)
    kept: dict[str, Any] = json.loads(json.dumps(status_digest(plan)))  # as the cache keeps it
    return kept


def record(digest: dict[str, Any], instance: str, **changes: Any) -> dict[str, Any]:
    """A start record of ``instance`` as ``records.write_start`` writes it."""
    inst = next(i for i in digest["instances"] if i["name"] == instance)
    runtime_dir, port, state_dir, user = inst["started_as"]
    return {"site": digest["site"], "env": digest["env"], "instance": instance, "user": user,
            "port": port, "runtime_dir": runtime_dir, "state_dir": state_dir, "pid": 1,
            "host": digest["host"], **changes}


def write_records(digest: dict[str, Any], *records: dict[str, Any]) -> None:
    folder = Path(digest["records"])
    folder.mkdir(parents=True, exist_ok=True)
    for n, data in enumerate(records):
        (folder / f"r{n}.json").write_text(json.dumps(data))


def test_the_digest_lists_each_process_and_the_request_to_send(digest):
    alpha, beta = digest["instances"]
    assert [entry[:3] for entry in beta["processes"]] == [["worker_00", "worker", True],
                                                          ["worker_01", "worker", True]]
    assert alpha["quick"]
    assert alpha["url"] == f"unix://{alpha['socket']}"
    assert [call[0] for call in alpha["calls"]][:3] == [
        "supervisor.getState", "supervisor.getPID", "supervisor.getAllProcessInfo"]


def test_a_healed_instance_is_quick_with_its_healer_s_records(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    plan = plan_from(SITE.format(short=tmp_path).replace(
        'command = "serve"', 'command = "serve {port}"\nport = { dev = 45103 }\n'
        'ready = { tcp = "{port}" }'), tmp_path)
    alpha, beta = status_digest(plan)["instances"]
    assert alpha["quick"]
    assert alpha["health"] == str(plan.instances["alpha"].health_path)
    assert alpha["probed"] == {"web": True}
    assert beta["health"] is None


def test_records_of_the_instances_as_they_are_are_plain(digest):
    _check_no_orphans(digest)  # no records at all
    write_records(digest, record(digest, "alpha"), record(digest, "beta"),
                  record(digest, "alpha", site="other"), record(digest, "beta", env="prod"))
    (Path(digest["records"]) / "junk.json").write_text("{not json")
    _check_no_orphans(digest)


@pytest.mark.parametrize("changes", [{"port": 1}, {"runtime_dir": "/tmp/elsewhere"},
                                     {"state_dir": "/x"}, {"user": "someone"},
                                     {"host": "another-host"}])
def test_a_record_the_site_no_longer_describes_is_not_plain(digest, changes):
    """It may be an orphan (if its supervisord still runs): the full status finds out."""
    write_records(digest, record(digest, "alpha"), record(digest, "beta", **changes))
    with pytest.raises(_NotPlain):
        _check_no_orphans(digest)


def test_instances_not_plain_are_left_to_the_full_status(digest):
    with pytest.raises(_NotPlain):  # no socket: never started, or its runtime dir was wiped
        _report(digest, [])
    with pytest.raises(_NotPlain):  # the full status says which name is wrong, and how
        _report(digest, ["alpha", "gamma"])
    digest["detached_runner"] = "beta"
    with pytest.raises(_NotPlain):
        _report(digest, ["beta"])


def test_a_listening_socket_of_an_instance_not_quick_is_still_left_alone(digest, tmp_path):
    alpha = digest["instances"][0]
    Path(alpha["socket"]).parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(alpha["socket"])
        alpha["quick"] = False  # another account's, another host's, or healed
        with pytest.raises(_NotPlain):
            _report(digest, ["alpha"])


def test_the_digest_comes_only_from_a_trusted_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SITEBOOT_HOST", raising=False)
    monkeypatch.setattr(plan_cache, "SETTLE_NS", 0)
    path = tmp_path / "q.toml"
    path.write_text(SITE.format(short=tmp_path))
    assert trusted_digest(path, "dev") is None  # nothing cached yet
    plan_cache._TRUSTED.clear()
    load_or_build(path, "dev")
    plan_cache._TRUSTED.clear()
    found = trusted_digest(path, "dev")
    assert found is not None
    assert found["site"] == "q"
    assert quickstatus.report(path, "dev") is None  # not running: the full status says so
    path.write_text(SITE.format(short=tmp_path) + "\n# changed\n")
    plan_cache._TRUSTED.clear()
    assert trusted_digest(path, "dev") is None


def test_hung_supervisords_share_one_timeout(digest, monkeypatch):
    """Asked at once, read one after the other: the second gets what is left of the first's
    wait (at least a second, its answer sent early is there), not a whole timeout again."""
    from siteboot import rpc
    from siteboot.statusreport import NOT_ANSWERING

    clock = [1000.0]
    timeouts = []

    class HungEndpoint:
        def __init__(self, url: str, key: str, timeout: float, owner_uid: int | None) -> None:
            timeouts.append(timeout)
            self.url = url

        def multicall(self, calls: object) -> list[object]:
            clock[0] += timeouts[-1]
            raise rpc.RpcError(NOT_ANSWERING, f"{self.url} did not answer in time")

    for inst in digest["instances"]:
        Path(inst["socket"]).parent.mkdir(parents=True, exist_ok=True)
        Path(inst["socket"]).touch()
    monkeypatch.setattr("siteboot.quickstatus.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("siteboot.keys.read_key_file", lambda path: "k")
    monkeypatch.setattr(rpc, "Endpoint", HungEndpoint)
    result = _report(digest, [])
    assert timeouts == [ANSWER_TIMEOUT, quickstatus._AFTER_THE_DEADLINE]
    assert [row.state for row in result.instances] == [NOT_ANSWERING, NOT_ANSWERING]
    assert result.exit_code == 2


def test_an_answer_that_is_not_plain_is_found_before_a_hung_supervisord_is_waited_for(
        digest, monkeypatch):
    """alpha hangs, beta has a FATAL process: the full status must answer, and it waits for
    alpha once more; the quick status must not have waited for alpha first (twice the timeout,
    more than a monitor gives a check)."""
    from siteboot import rpc, wire
    from siteboot.statusreport import NOT_ANSWERING

    asked = []

    class Endpoint:
        def __init__(self, url: str, key: str, timeout: float, owner_uid: int | None) -> None:
            self.url = url

        def multicall(self, calls: object) -> list[object]:
            asked.append(self.url)
            if self.url == beta["url"]:
                return [{"statename": "RUNNING"}, 7, [dict(
                    name="worker_00", group="worker", statename="FATAL", pid=0, start=0, now=1,
                    exitstatus=1, spawnerr="")]]
            raise rpc.RpcError(NOT_ANSWERING, f"{self.url} did not answer in time")

    alpha, beta = digest["instances"]
    listeners = []
    try:
        for inst in (alpha, beta):
            Path(inst["socket"]).parent.mkdir(parents=True, exist_ok=True)
            listener = socket.socket(socket.AF_UNIX)
            listener.bind(inst["socket"])
            listener.listen(1)
            listeners.append(listener)
            wire.send_early(inst["socket"], "k", b"request", 5.0)
        served, _ = listeners[1].accept()  # beta answers; alpha never does
        listeners.append(served)
        served.sendall(b"HTTP/1.0 200 OK\r\n")
        monkeypatch.setattr("siteboot.keys.read_key_file", lambda path: "k")
        monkeypatch.setattr(rpc, "Endpoint", Endpoint)
        with pytest.raises(_NotPlain):
            _report(digest, [])
        assert asked == [beta["url"]]
    finally:
        for key in list(wire._SENT_EARLY):
            wire._SENT_EARLY.pop(key).close()
        for listener in listeners:
            listener.close()


def test_read_in_threads_what_is_not_plain_is_given_up_on_before_a_hung_one_answers(
        digest, monkeypatch):
    """The same with answers too big for one by one (alpha has more processes than fit a
    socket's buffer): beta's FATAL process ends the quick status while alpha still hangs."""
    import threading

    from siteboot import rpc

    alpha, beta = digest["instances"]
    alpha["processes"] = [[f"p{n:03d}", f"p{n:03d}", True, 0, 0]
                          for n in range(quickstatus._FITS_A_BUFFER + 1)]
    release, alpha_answered = threading.Event(), threading.Event()

    class Endpoint:
        def __init__(self, url: str, key: str, timeout: float, owner_uid: int | None) -> None:
            self.url = url

        def multicall(self, calls: object) -> list[object]:
            if self.url == alpha["url"]:
                release.wait(10)  # hung until the test is done
                alpha_answered.set()
                return [{"statename": "RUNNING"}, 7, []]
            return [{"statename": "RUNNING"}, 8, [dict(
                name="worker_00", group="worker", statename="FATAL", pid=0, start=0, now=1,
                exitstatus=1, spawnerr="")]]

    for inst in (alpha, beta):
        Path(inst["socket"]).parent.mkdir(parents=True, exist_ok=True)
        Path(inst["socket"]).touch()
    monkeypatch.setattr("siteboot.keys.read_key_file", lambda path: "k")
    monkeypatch.setattr(rpc, "Endpoint", Endpoint)
    try:
        with pytest.raises(_NotPlain):
            _report(digest, [])
        assert not alpha_answered.is_set()
    finally:
        release.set()


def test_an_instance_on_another_host_is_listed_not_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SITEBOOT_HOST", "here.example")
    plan = plan_from(SITE.format(short=tmp_path).replace(
        "[instances.beta]\n", '[instances.beta]\nhost = "there.example"\n'), tmp_path)
    found = json.loads(json.dumps(status_digest(plan)))
    result = _report(found, ["beta"])  # no socket, no key, nothing asked
    [beta] = result.instances
    assert (beta.state, beta.host, beta.url) == ("elsewhere", "there.example",
                                                 "http://127.0.0.1:45102")
    assert result.exit_code == 0
