"""The healer (the event listener inside supervisord): backoff, resets, operator stops, probes,
ordered first starts, and the READY/RESULT protocol kept whatever comes in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from siteboot import health
from siteboot.healer import RESET_AFTER, Channel, Healer, SpecFile, parse_fields, serve


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSupervisor:
    """getAllProcessInfo from ``states``; every start is recorded (and turns it STARTING)."""

    def __init__(self, clock: Clock, states: dict[str, str]) -> None:
        self.clock = clock
        self.states = states
        self.started: list[str] = []
        self.fail_with: str | None = None

    def infos(self) -> list[dict[str, Any]]:
        return [{"name": name, "group": "t-dev", "statename": state, "pid": 0,
                 "start": 0 if state == "STOPPED" else 1, "now": int(self.clock()),
                 "exitstatus": 1 if state == "EXITED" else 0} for name, state in self.states.items()]

    def start(self, full_name: str) -> str | None:
        self.started.append(full_name)
        if self.fail_with:
            return self.fail_with
        self.states[full_name.rsplit(":", maxsplit=1)[-1]] = "STARTING"
        return None


def program(processes: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    spec = {"processes": processes or [], "probe": None, "backoff_max": None,
            "autorestart": "unexpected", "start_when_ready": False, "depends_on": []}
    spec.update(extra)
    return spec


def make(tmp_path: Path, programs: dict[str, Any], states: dict[str, str],
         probe: Any = None) -> tuple[Healer, FakeSupervisor, Clock, dict[str, Any]]:
    clock = Clock()
    for name, spec in programs.items():
        spec["processes"] = spec["processes"] or [name]
    spec = {"programs": programs, "health_path": str(tmp_path / "health.json"),
            "stops_path": str(tmp_path / "stops.json")}
    supervisor = FakeSupervisor(clock, states)
    saved: dict[str, Any] = {}

    def store(path: Path, records: dict[str, Any], now: float) -> None:
        saved.clear()
        saved.update(records)

    healer = Healer(lambda: spec, supervisor, clock=clock, probe=probe or (lambda p: None),
                    store=store, log=lambda message: None)
    healer.start()
    return healer, supervisor, clock, saved


def fatal(healer: Healer, name: str) -> None:
    healer.on_event("PROCESS_STATE_FATAL",
                    f"processname:{name} groupname:t-dev from_state:BACKOFF".encode())


def test_fatal_is_retried_with_doubling_backoff_up_to_the_cap(tmp_path):
    healer, supervisor, clock, saved = make(
        tmp_path, {"flaky": program(backoff_max=5)}, {"flaky": "STARTING"})
    delays = []
    for attempt in range(1, 6):
        supervisor.states["flaky"] = "FATAL"
        fatal(healer, "flaky")
        delay = healer.due_in()
        assert delay is not None
        delays.append(delay)
        clock.now += delay - 0.5
        healer.on_timer()
        assert len(supervisor.started) == attempt - 1  # not yet
        clock.now += 0.5
        healer.on_timer()
        assert supervisor.started[-1] == "t-dev:flaky"
        assert saved["flaky"]["attempts"] == attempt
        assert saved["flaky"]["next_try"] is None
    assert delays == [1, 2, 4, 5, 5]


def test_the_count_resets_once_it_has_run_long_enough(tmp_path):
    healer, supervisor, clock, saved = make(
        tmp_path, {"flaky": program(backoff_max=300)}, {"flaky": "FATAL"})
    assert healer.due_in() == 1  # found FATAL at the start (a lost event changes nothing)
    clock.now += 1
    healer.on_timer()
    supervisor.states["flaky"] = "RUNNING"
    healer.on_event("PROCESS_STATE_RUNNING", b"processname:flaky groupname:t-dev from_state:"
                                             b"STARTING pid:42")
    assert saved["flaky"]["attempts"] == 1
    assert saved["flaky"]["pid"] == 42
    clock.now += RESET_AFTER - 1
    healer.on_event("TICK_5", b"when:1")
    assert saved["flaky"]["attempts"] == 1
    clock.now += 1
    healer.on_event("TICK_5", b"when:2")
    assert saved["flaky"]["attempts"] == 0


def test_operator_stops_and_programs_without_restart_are_left_alone(tmp_path):
    healer, supervisor, clock, _ = make(
        tmp_path, {"held": program(backoff_max=10), "plain": program()},
        {"held": "STARTING", "plain": "STARTING"})
    (tmp_path / "stops.json").write_text(json.dumps(["held"]))
    fatal(healer, "held")
    fatal(healer, "plain")
    assert healer.due_in() is None
    clock.now += 100
    healer.on_event("TICK_5", b"when:3")
    assert supervisor.started == []


def test_a_stop_cancels_a_planned_retry(tmp_path):
    healer, _supervisor, _clock, _ = make(tmp_path, {"web": program(backoff_max=10)},
                                        {"web": "STARTING"})
    fatal(healer, "web")
    assert healer.due_in() == 1
    healer.on_event("PROCESS_STATE_STOPPED", b"processname:web groupname:t-dev from_state:FATAL")
    assert healer.due_in() is None


@pytest.mark.parametrize(("autorestart", "retried"), [("false", True), ("unexpected", False)])
def test_an_unexpected_exit_is_retried_only_where_supervisord_would_not(tmp_path, autorestart,
                                                                        retried):
    healer, _, _, _ = make(tmp_path, {"job": program(backoff_max=10, autorestart=autorestart)},
                           {"job": "RUNNING"})
    healer.on_event("PROCESS_STATE_EXITED",
                    b"processname:job groupname:t-dev from_state:RUNNING expected:0 pid:7")
    assert (healer.due_in() is not None) == retried


def test_a_failed_start_is_tried_again_later(tmp_path):
    healer, supervisor, clock, saved = make(tmp_path, {"web": program(backoff_max=10)},
                                            {"web": "FATAL"})
    supervisor.fail_with = "SPAWN_ERROR: web"
    clock.now += 1
    healer.on_timer()
    assert supervisor.started == ["t-dev:web"]
    assert healer.due_in() == 2
    assert saved["web"]["attempts"] == 1


def test_probes_of_running_programs_are_recorded_on_ticks(tmp_path):
    answers = {"http": "HTTP 500 (want 200)"}
    healer, _, clock, saved = make(
        tmp_path, {"web": program(probe={"http": "http://x", "status": 200}), "db": program()},
        {"web": "RUNNING", "db": "RUNNING"}, probe=lambda p: answers.get("http"))
    healer.on_event("TICK_5", b"when:1")
    assert saved["web"]["health"] == health.NOT_READY
    assert saved["web"]["detail"] == "HTTP 500 (want 200)"
    assert saved["web"]["checked_at"] == clock.now
    assert saved["db"]["health"] is None  # no probe: ready once RUNNING, status says so
    answers.clear()
    healer.on_event("TICK_5", b"when:2")
    assert saved["web"]["health"] == health.READY


def test_a_waiting_program_starts_once_what_it_depends_on_is_ready(tmp_path):
    ready = {"db": False}
    deps = [{"name": "db", "local": True, "processes": ["db"], "probe": {"tcp": "5432"}},
            {"name": "auth", "local": False, "processes": ["auth"], "probe": {"tcp": "5001"}}]
    healer, supervisor, _, _ = make(
        tmp_path, {"db": program(probe={"tcp": "5432"}), "rest": program(
            start_when_ready=True, depends_on=deps)},
        {"db": "STARTING", "rest": "STOPPED"},
        probe=lambda p: None if p["tcp"] != "5432" or ready["db"] else "connection refused")
    supervisor.states["db"] = "RUNNING"
    healer.on_event("PROCESS_STATE_RUNNING", b"processname:db groupname:t-dev from_state:STARTING")
    assert supervisor.started == []  # RUNNING, but its probe fails
    ready["db"] = True
    healer.on_event("TICK_5", b"when:1")
    assert supervisor.started == ["t-dev:rest"]
    healer.on_event("TICK_5", b"when:2")
    assert supervisor.started == ["t-dev:rest"]  # once: then it is the operator's


def test_a_program_started_before_or_without_a_probed_remote_dependency_is_left_alone(tmp_path):
    deps = [{"name": "far", "local": False, "processes": ["far"], "probe": None}]
    healer, supervisor, _, _ = make(
        tmp_path, {"rest": program(start_when_ready=True, depends_on=deps),
                   "again": program(start_when_ready=True)},
        {"rest": "STOPPED", "again": "EXITED"})
    healer.on_event("TICK_5", b"when:1")
    assert supervisor.started == []


@pytest.mark.parametrize(("event", "payload"), [
    ("PROCESS_STATE_FATAL", b""),
    ("PROCESS_STATE_FATAL", b"\xff\xfe\x00garbage"),
    ("PROCESS_STATE_FATAL", b"processname: groupname:"),
    ("PROCESS_STATE_FATAL", b"processname:nobody groupname:x"),
    ("PROCESS_STATE_RUNNING", b"processname:web pid:notanumber"),
    ("PROCESS_STATE_", b"processname:web"),
    ("TICK_5", b"\x00\x01"),
    ("SOMETHING_NEW", b"{json: maybe}"),
    ("", b""),
])
def test_bad_payloads_change_nothing_and_raise_nothing(tmp_path, event, payload):
    healer, supervisor, _, _ = make(tmp_path, {"web": program(backoff_max=10)},
                                    {"web": "RUNNING"})
    healer.on_event(event, payload)
    assert supervisor.started == []


def test_header_fields():
    assert parse_fields("ver:3.0 server:supervisor eventname:TICK_5 len:15 junk :x") == \
        {"ver": "3.0", "server": "supervisor", "eventname": "TICK_5", "len": "15"}


# ------------------------------------------------------------------------------------------
# The protocol, with a real listener process


def frame(event: str, payload: bytes, serial: int = 1, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return (f"ver:3.0 server:supervisor serial:{serial} pool:siteboot-healer poolserial:{serial} "
            f"eventname:{event} len:{size}\n").encode() + payload


# As supervisord 4.3 writes them (supervisor.events, supervisor.dispatchers)
RECORDED = [
    frame("PROCESS_STATE_STARTING", b"processname:web groupname:it-dev from_state:STOPPED tries:0"),
    frame("PROCESS_STATE_BACKOFF", b"processname:web groupname:it-dev from_state:STARTING tries:1"),
    frame("PROCESS_STATE_FATAL", b"processname:web groupname:it-dev from_state:BACKOFF"),
    frame("PROCESS_STATE_RUNNING",
          b"processname:worker_00 groupname:it-dev from_state:STARTING pid:4242"),
    frame("PROCESS_STATE_EXITED",
          b"processname:worker_00 groupname:it-dev from_state:RUNNING expected:0 pid:4242"),
    frame("TICK_5", b"when:1700000005"),
    frame("PROCESS_GROUP_ADDED", b"groupname:it-dev\n"),
]
MALFORMED = [
    b"ver:3.0 eventname:PROCESS_STATE_FATAL\n",  # no len: no payload
    b"ver:3.0 eventname:TICK_5 len:abc\n",
    b"\n",
    frame("PROCESS_STATE_FATAL", b"\xff\xfe garbage \x00"),
    frame("PROCESS_STATE_RUNNING", b"processname:web pid:-1 from_state"),
    frame("UNHEARD_OF", b"a" * 5000),
    b"complete nonsense without any colon\n",
]


def run_listener(tmp_path: Path, data: bytes) -> tuple[int, bytes, str]:
    spec = {"programs": {"web": program(["web"], backoff_max=2, probe={"tcp": "1"}),
                         "worker": program(["worker_00"], backoff_max=2)},
            "unix_url": f"unix://{tmp_path}/nothing.sock", "socket": str(tmp_path / "nothing.sock"),
            "http_url": "http://127.0.0.1:1", "key_path": str(tmp_path / "key"),
            "health_path": str(tmp_path / "health.json"),
            "stops_path": str(tmp_path / "stops.json")}
    (tmp_path / "key").write_text("k")
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, "-I", "-m", "siteboot.healer", str(path)], input=data,
                          capture_output=True, timeout=60, check=False)
    return done.returncode, done.stdout, done.stderr.decode()


@pytest.mark.parametrize("events", [RECORDED, MALFORMED, RECORDED + MALFORMED + RECORDED],
                         ids=["recorded", "malformed", "mixed"])
def test_the_listener_keeps_its_protocol(tmp_path, events):
    code, out, err = run_listener(tmp_path, b"".join(events))
    assert code == 0, err
    assert out == b"READY\n" + b"RESULT 2\nOKREADY\n" * len(events)
    assert "Traceback" not in err
    records = health.read(tmp_path / "health.json")  # the process states it saw, recorded
    assert set(records) <= {"web", "worker_00"}


def test_an_event_cut_short_by_the_end_of_input_ends_it_cleanly(tmp_path):
    code, out, err = run_listener(tmp_path, frame("TICK_5", b"when:1", length=100))
    assert (code, out) == (0, b"READY\n"), err


def test_the_channel_reads_exact_frames_across_chunks(tmp_path):
    import os

    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"header len:3\nabcheader2")
    os.close(write_fd)
    channel = Channel(read_fd, open(os.devnull, "wb"))  # noqa: SIM115
    try:
        assert channel.wait(0)
        assert channel.readline() == b"header len:3"
        assert channel.read(3) == b"abc"
        assert channel.readline() is None  # the end, before a full line
    finally:
        channel.out.close()
        os.close(read_fd)


def test_serve_answers_even_when_acting_fails(tmp_path):
    import io
    import os

    class Broken:
        def __init__(self) -> None:
            self.log_lines: list[str] = []

        def log(self, message: str) -> None:
            self.log_lines.append(message)

        def start(self) -> None:
            raise RuntimeError("cannot reach supervisord")

        def due_in(self) -> None:
            return None

        def on_timer(self) -> None:
            pass

        def on_event(self, name: str, payload: bytes) -> None:
            raise KeyError(name)

    read_fd, write_fd = os.pipe()
    os.write(write_fd, frame("TICK_5", b"when:1"))
    os.close(write_fd)
    out = io.BytesIO()
    broken = Broken()
    try:
        assert serve(broken, Channel(read_fd, out)) == 0  # type: ignore[arg-type]
    finally:
        os.close(read_fd)
    assert out.getvalue() == b"READY\nRESULT 2\nOKREADY\n"
    assert [line.split(":")[1].strip() for line in broken.log_lines] == ["RuntimeError", "KeyError"]


def test_the_spec_counts_only_as_the_account_s_own_file_in_its_own_folder(tmp_path):
    """After a /tmp wipe another account may make the runtime dir again and put a spec there:
    its command probes would run as this account, its health_path would be overwritten."""
    nobody = 65534
    good = {"programs": {"web": program(["web"])}}
    planted = {"programs": {"web": program(["web"], probe={"command": "touch /tmp/pwned"})},
               "health_path": str(tmp_path / "victim")}
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    path = runtime / "healer-a.json"
    path.write_text(json.dumps(good))
    logged: list[str] = []
    spec = SpecFile(path, log=logged.append)
    assert spec.current() == good

    def plant(content: dict[str, Any], file_mode: int = 0o600, file_owner: int = 0,
              folder_mode: int = 0o700, folder_owner: int = 0) -> None:
        path.unlink(missing_ok=True)
        path.write_text(json.dumps(content))
        os.chmod(path, file_mode)
        os.chown(path, file_owner, -1)
        os.chmod(runtime, folder_mode)
        os.chown(runtime, folder_owner, -1)

    for how in ({"file_owner": nobody}, {"file_mode": 0o666}, {"folder_owner": nobody},
                {"folder_mode": 0o777}):
        plant(planted, **how)
        assert spec.current() == good, how  # the last good one stays
    assert len(logged) == 4
    assert all("ignoring" in line for line in logged)
    plant(planted)
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "elsewhere.json").write_text(json.dumps(planted))
    assert spec.current() == good
    # the runtime dir made again by its own account, and the spec rewritten (``revive``): read
    plant({"programs": {}})
    assert spec.current() == {"programs": {}}
