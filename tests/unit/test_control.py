"""status / start / stop / restart / tail against a scripted fake supervisord (no processes)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Union

import pytest

from siteboot import control, statusreport
from siteboot.control import resolve_targets
from siteboot.errors import (
    STATUS_CRITICAL,
    STATUS_OK,
    STATUS_UNKNOWN,
    STATUS_WARNING,
    KeyAccessError,
    UsageError,
)
from siteboot.history import MAIN_LOG_TAIL
from siteboot.logtail import RPC_CHUNK
from siteboot.plan import Plan
from siteboot.rpc import NO_ACCESS, REFUSED, Fault, RpcError
from siteboot.statusreport import (
    NO_KEY,
    NOT_ANSWERING,
    NOT_RUNNING,
    RUNNING,
    InstanceStatus,
    ProgramStatus,
    StatusResult,
    worst,
)
from tests.helpers import own_site_text, plan_from

GROUP = "t-dev"

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
startsecs = 1

[programs.idle]
instance = "alpha"
command = "sleep 100"
autostart = false

[programs.worker]
instance = "beta"
command = "sleep 100"
numprocs = 2
stopwaitsecs = 5

[programs.web2]
instance = "gamma"
command = "sleep 100"
"""


@pytest.fixture
def plan(short_dir: Path) -> Plan:
    result: Plan = plan_from(SITE.format(base=short_dir), short_dir)
    return result


STATE_CODES = {"STOPPED": 0, "STARTING": 10, "RUNNING": 20, "BACKOFF": 30, "STOPPING": 40,
               "EXITED": 100, "FATAL": 200, "UNKNOWN": 1000}


def info(name: str, statename: str, pid: int = 0, start: int = 0, now: int = 1000,
         exitstatus: int = 0, spawnerr: str = "", group: str = GROUP) -> dict[str, Any]:
    """A process info struct as supervisord's getProcessInfo/getAllProcessInfo return it."""
    return {"name": name, "group": group, "description": "", "start": start, "stop": 0,
            "now": now, "state": STATE_CODES[statename], "statename": statename,
            "spawnerr": spawnerr, "exitstatus": exitstatus, "logfile": "",
            "stdout_logfile": "", "stderr_logfile": "", "pid": pid}


_DOWN = {"STOPPED", "EXITED", "FATAL", "BACKOFF"}
_UP = {"STARTING", "RUNNING", "STOPPING"}
Step = Union[str, tuple[str, int]]


class FakeEndpoint:
    """A scripted supervisord.

    A process is in its ``before`` state (default RUNNING, run 0) until it is started or
    stopped; then ``scripts[process]`` is the list of states getProcessInfo walks through (the
    last one repeats). A state may carry its run number, ``("RUNNING", 1)``, else a STARTING
    after another state, or a RUNNING after a stopped one, begins a new run. A run's pid is
    ``100 + run`` while it is up and its start time ``1000 + run``: a new run is what another
    command's start looks like. ``start_faults``/``stop_faults`` answer those calls with a
    fault (``start_faults`` values may be lists: one per call).
    """

    def __init__(self, infos: list[dict[str, Any]] | None = None,
                 scripts: dict[str, list[Step]] | None = None,
                 start_faults: dict[str, Any] | None = None,
                 stop_faults: dict[str, Fault] | None = None,
                 state: dict[str, Any] | Fault | None = None,
                 error: Exception | None = None,
                 before: dict[str, Step] | None = None,
                 main_log: Any = "") -> None:
        self.infos = infos or []
        self.scripts = {k: list(v) for k, v in (scripts or {}).items()}
        self.start_faults = start_faults or {}
        self.stop_faults = stop_faults or {}
        self.state = state if state is not None else {"statecode": 1, "statename": "RUNNING"}
        self.error = error
        self.before = before or {}
        self.main_log = main_log
        self.acted: set[str] = set()
        self.current: dict[str, tuple[str, int]] = {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.tails: dict[tuple[str, int, int], Any] = {}
        self.log_bytes = b""

    def multicall(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        if self.error is not None:
            raise self.error
        return [self.one(method, params) for method, params in calls]

    def call(self, method: str, *args: Any) -> Any:
        if self.error is not None:
            raise self.error
        result = self.one(method, args)
        if isinstance(result, Fault):
            raise result
        return result

    def one(self, method: str, params: tuple[Any, ...]) -> Any:
        self.calls.append((method, params))
        process = params[0].split(":", 1)[1] if params and isinstance(params[0], str) else ""
        if method == "supervisor.getState":
            return self.state
        if method == "supervisor.getPID":
            return 4242
        if method == "supervisor.getAllProcessInfo":
            return self.infos
        if method == "supervisor.readLog":
            return self.main_log(params) if callable(self.main_log) else self.main_log
        if method == "supervisor.startProcess":
            self.acted.add(process)
            fault = self.start_faults.get(process)
            if isinstance(fault, list):
                fault = fault.pop(0) if len(fault) > 1 else fault[0]
            return True if fault is None else fault
        if method == "supervisor.stopProcess":
            self.acted.add(process)
            return self.stop_faults.get(process, True)
        if method == "supervisor.getProcessInfo":
            return self.process_info(process)
        if method.startswith("supervisor.tailProcess"):
            return self.tails[(params[0], params[1], params[2])]
        if method.startswith("supervisor.readProcess"):
            return self.log_bytes[params[1]:params[1] + params[2]].decode()
        raise AssertionError(f"unexpected call {method}{params}")

    def process_info(self, process: str) -> dict[str, Any]:
        state, run = self.current.get(process) or self._explicit(self.before.get(process, "RUNNING"), 0)
        if process in self.acted:
            script = self.scripts[process]
            step = script.pop(0) if len(script) > 1 else script[0]
            new_state, new_run = self._explicit(step, None)
            if new_run is None:
                fresh = (new_state == "STARTING" and state != "STARTING") or \
                    (new_state == "RUNNING" and state in _DOWN)
                new_run = run + 1 if fresh else run
            state, run = new_state, new_run
        self.current[process] = (state, run)
        spawnerr = "can't find command 'nope'" if state == "FATAL" and "spawnerr" in process else ""
        return info(process, state, pid=100 + run if state in _UP else 0, start=1000 + run,
                    spawnerr=spawnerr)

    @staticmethod
    def _explicit(step: Step, run: Any) -> Any:
        return step if isinstance(step, tuple) else (step, run)

    def methods(self, name: str) -> list[tuple[Any, ...]]:
        return [params for method, params in self.calls if method == name]


class FakeTime:
    """Virtual time for control.py: sleeping advances the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(control, "time", fake)
    return fake


@pytest.fixture
def endpoints(monkeypatch, clock) -> dict[str, Any]:
    """Put a FakeEndpoint (or an exception to raise) under an instance's name."""
    fakes: dict[str, Any] = {}

    def fakeconnect(plan: Plan, inst: Any, timeout: float = 5.0) -> Any:
        fake = fakes[inst.name]
        if isinstance(fake, Exception):
            raise fake
        return fake

    monkeypatch.setattr(control, "connect", fakeconnect)
    return fakes


def program(name: str, state: str, expected: bool = True) -> ProgramStatus:
    return ProgramStatus(name, GROUP, state, None, None, None, "", expected)


# --------------------------------------------------------------------------------------------
# Severities and the report


@pytest.mark.parametrize(("state", "expected", "severity"), [
    ("RUNNING", True, STATUS_OK),
    ("RUNNING", False, STATUS_OK),
    ("STARTING", True, STATUS_WARNING),
    ("BACKOFF", True, STATUS_WARNING),
    ("BACKOFF", False, STATUS_WARNING),
    ("FATAL", True, STATUS_CRITICAL),
    ("FATAL", False, STATUS_CRITICAL),
    ("EXITED", True, STATUS_CRITICAL),
    ("STOPPED", True, STATUS_CRITICAL),
    ("STOPPING", True, STATUS_CRITICAL),
    ("UNKNOWN", True, STATUS_CRITICAL),
    ("NOT LOADED", True, STATUS_CRITICAL),
    ("STOPPED", False, STATUS_OK),
    ("EXITED", False, STATUS_OK),
    ("NOT LOADED", False, STATUS_OK),
])
def test_program_severity(state, expected, severity):
    assert program("p", state, expected).severity == severity


@pytest.mark.parametrize(("severities", "expected"), [
    ([], STATUS_OK),
    ([STATUS_OK, STATUS_OK], STATUS_OK),
    ([STATUS_OK, STATUS_WARNING], STATUS_WARNING),
    ([STATUS_WARNING, STATUS_UNKNOWN], STATUS_UNKNOWN),
    ([STATUS_UNKNOWN, STATUS_CRITICAL, STATUS_WARNING], STATUS_CRITICAL),
    ([STATUS_CRITICAL, STATUS_OK], STATUS_CRITICAL),
])
def test_worst(severities, expected):
    assert worst(severities) == expected


@pytest.mark.parametrize(("state", "programs", "severity"), [
    (RUNNING, [], STATUS_OK),
    (RUNNING, ["RUNNING", "RUNNING"], STATUS_OK),
    (RUNNING, ["RUNNING", "STARTING"], STATUS_WARNING),
    (RUNNING, ["BACKOFF", "FATAL"], STATUS_CRITICAL),
    (NOT_RUNNING, [], STATUS_CRITICAL),
    (REFUSED, [], STATUS_UNKNOWN),
    (NO_KEY, [], STATUS_UNKNOWN),
    (NO_ACCESS, [], STATUS_UNKNOWN),
    (NOT_ANSWERING, [], STATUS_CRITICAL),
    ("shutting down", ["RUNNING"], STATUS_CRITICAL),
    ("shutting down", ["FATAL"], STATUS_CRITICAL),
])
def test_instance_severity(state, programs, severity):
    inst = InstanceStatus("alpha", "me", state, "unix:///x",
                          programs=[program(f"p{i}", s) for i, s in enumerate(programs)])
    assert inst.severity == severity


def test_report_exit_code_and_json_keys():
    ok = InstanceStatus("alpha", "me", RUNNING, "unix:///a", pid=7,
                        programs=[ProgramStatus("web", GROUP, "RUNNING", 12, 30, None, "", True)])
    down = InstanceStatus("beta", "me", NOT_RUNNING, "unix:///b", error="nothing there")
    report = StatusResult("t", "dev", [ok, down])
    assert report.exit_code == STATUS_CRITICAL
    data = report.as_json()
    assert set(data) == {"site", "env", "ok", "instances"}
    assert (data["site"], data["env"], data["ok"]) == ("t", "dev", False)
    first = data["instances"][0]
    assert set(first) == {"name", "user", "state", "pid", "url", "error", "host", "programs"}
    assert first == {"name": "alpha", "user": "me", "state": "running", "pid": 7,
                     "url": "unix:///a", "error": None, "host": None, "programs": [
                         {"name": "web", "group": GROUP, "state": "RUNNING", "pid": 12,
                          "uptime_s": 30, "exitstatus": None, "spawnerr": "",
                          "restarts": None, "last_exit": None, "health": "ready",
                          "health_detail": None, "backoff": None, "log_tail": None}]}
    assert set(first["programs"][0]) == {"name", "group", "state", "pid", "uptime_s",
                                         "exitstatus", "spawnerr", "restarts", "last_exit",
                                         "health", "health_detail", "backoff", "log_tail"}
    assert data["instances"][1]["error"] == "nothing there"
    assert data["instances"][1]["programs"] == []

    fine = StatusResult("t", "dev", [ok])
    assert fine.exit_code == STATUS_OK
    assert fine.as_json()["ok"] is True
    assert StatusResult("t", "dev", []).exit_code == STATUS_OK


# --------------------------------------------------------------------------------------------
# _programs


def test_programs_maps_process_infos(plan):
    beta = plan.instances["beta"]
    rows = control._programs(beta, [
        info("worker_00", "RUNNING", pid=101, start=900, now=1000),
        info("worker_01", "EXITED", exitstatus=3, start=900, now=1000),
    ])
    assert [r.name for r in rows] == ["worker_00", "worker_01"]
    first, second = rows
    assert (first.group, first.state, first.pid, first.uptime_s, first.exitstatus) == \
        (GROUP, "RUNNING", 101, 100, None)
    assert first.expected is True
    assert (second.state, second.pid, second.uptime_s, second.exitstatus) == \
        ("EXITED", None, None, 3)
    assert second.severity == STATUS_CRITICAL


def test_programs_starting_and_fatal(plan):
    alpha = plan.instances["alpha"]
    rows = control._programs(alpha, [
        info("web", "STARTING", pid=55, start=999, now=1000, exitstatus=0),
        info("idle", "FATAL", spawnerr="can't find command", exitstatus=0),
    ])
    web, idle = rows
    assert (web.pid, web.uptime_s, web.exitstatus) == (55, None, None)
    assert idle.spawnerr == "can't find command"
    assert idle.exitstatus == 0
    assert idle.expected is False  # autostart = false
    assert idle.severity == STATUS_CRITICAL  # FATAL always counts


def test_programs_not_loaded_and_unplanned(plan):
    alpha = plan.instances["alpha"]
    rows = control._programs(alpha, [info("web", "RUNNING", pid=5, start=0),
                                     info("leftover", "STOPPED")])
    by_name = {r.name: r for r in rows}
    assert by_name["web"].uptime_s is None  # start == 0: unknown
    assert by_name["leftover"].expected is True
    assert by_name["idle"].state == "NOT LOADED"
    assert by_name["idle"].group == "idle"
    assert "restart the instance" in by_name["idle"].spawnerr
    assert by_name["idle"].expected is False
    assert by_name["idle"].severity == STATUS_OK

    rows = control._programs(plan.instances["beta"], [info("worker_00", "RUNNING", pid=1)])
    missing = [r for r in rows if r.state == "NOT LOADED"]
    assert [r.name for r in missing] == ["worker_01"]
    assert missing[0].severity == STATUS_CRITICAL


def test_programs_tolerates_missing_spawnerr(plan):
    raw = info("web", "STOPPED")
    del raw["spawnerr"]
    (row, _idle) = control._programs(plan.instances["alpha"], [raw])
    assert row.spawnerr == ""


# --------------------------------------------------------------------------------------------
# resolve_targets


def test_resolve_program_name(plan):
    assert resolve_targets(plan, ["web"]) == {"alpha": ["web"]}
    assert resolve_targets(plan, ["worker"]) == {"beta": ["worker_00", "worker_01"]}


def test_resolve_instance_forms(plan):
    assert resolve_targets(plan, ["alpha:web"]) == {"alpha": ["web"]}
    assert resolve_targets(plan, ["alpha:*"]) == {"alpha": ["web", "idle"]}
    assert resolve_targets(plan, ["beta:*"]) == {"beta": ["worker_00", "worker_01"]}
    assert resolve_targets(plan, ["beta:worker_01"]) == {"beta": ["worker_01"]}


def test_resolve_all(plan):
    # gamma belongs to someone else and grants no group: not the invoker's to control
    assert resolve_targets(plan, ["all"]) == {
        "alpha": ["web", "idle"], "beta": ["worker_00", "worker_01"]}
    assert resolve_targets(plan, ["gamma:*"]) == {"gamma": ["web2"]}


def test_resolve_merges_without_duplicates(plan):
    assert resolve_targets(plan, ["web", "alpha:*", "alpha:web"]) == {"alpha": ["web", "idle"]}
    assert resolve_targets(plan, ["beta:worker_01", "worker"]) == \
        {"beta": ["worker_01", "worker_00"]}
    assert resolve_targets(plan, ["worker", "beta:worker_01", "beta:worker_01"]) == \
        {"beta": ["worker_00", "worker_01"]}
    assert resolve_targets(plan, ["idle", "worker"]) == \
        {"alpha": ["idle"], "beta": ["worker_00", "worker_01"]}


def test_resolve_unknown_program_suggests(plan):
    with pytest.raises(UsageError) as info_:
        resolve_targets(plan, ["wrker"])
    assert "no program 'wrker' in site t" in str(info_.value)
    assert "did you mean 'worker'?" in str(info_.value)
    assert info_.value.exit_code == 2
    with pytest.raises(UsageError) as info_:
        resolve_targets(plan, ["zzzzzz"])
    assert "did you mean" not in str(info_.value)


def test_resolve_unknown_instance_or_program_in_it(plan):
    with pytest.raises(UsageError, match="no instance 'delta'"):
        resolve_targets(plan, ["delta:web"])
    with pytest.raises(UsageError, match="instance beta has no program 'web'") as info_:
        resolve_targets(plan, ["beta:web"])
    assert "worker" in (info_.value.hint or "")
    with pytest.raises(UsageError, match="no program 'worker_07'"):
        resolve_targets(plan, ["beta:worker_07"])


def test_every_name_status_prints_is_accepted(plan):
    """`worker_01` as the table shows it, the instance of a header, supervisord's names."""
    assert resolve_targets(plan, ["worker_01"]) == {"beta": ["worker_01"]}
    assert resolve_targets(plan, ["beta"]) == {"beta": ["worker_00", "worker_01"]}
    assert resolve_targets(plan, ["worker:worker_01"]) == {"beta": ["worker_01"]}
    assert resolve_targets(plan, ["web:web"]) == {"alpha": ["web"]}
    assert resolve_targets(plan, ["worker:*"]) == {"beta": ["worker_00", "worker_01"]}
    assert resolve_targets(plan, ["worker_00", "alpha", "worker"]) == {
        "beta": ["worker_00", "worker_01"], "alpha": ["web", "idle"]}


def test_every_program_is_a_supervisor_group_of_its_own(plan):
    """supervisord's update unit is the program: ``group:process`` is ``program:process``."""
    assert resolve_targets(plan, ["worker:worker_01"]) == {"beta": ["worker_01"]}
    assert resolve_targets(plan, ["worker:*"]) == {"beta": ["worker_00", "worker_01"]}
    assert resolve_targets(plan, ["beta:*"]) == {"beta": ["worker_00", "worker_01"]}
    assert control.supervisorctl_args(plan, plan.instances["beta"], ["stop", "worker_01"]) == \
        ["stop", "worker:worker_01"]
    with pytest.raises(UsageError, match="group worker has no program 'web'"):
        resolve_targets(plan, ["worker:web"])


def test_a_name_of_an_instance_and_a_program_is_ambiguous(short_dir):
    text = SITE.format(base=short_dir) + '\n[programs.beta]\ninstance = "alpha"\ncommand = "x"\n'
    plan = plan_from(text, short_dir)
    with pytest.raises(UsageError, match="'beta' is both an instance and a program") as info_:
        resolve_targets(plan, ["beta"])
    assert info_.value.hint == "say `beta:*` for the instance, `alpha:beta` for the program"
    assert resolve_targets(plan, ["alpha:beta"]) == {"alpha": ["beta"]}
    assert resolve_targets(plan, ["beta:*"]) == {"beta": ["worker_00", "worker_01"]}


def test_target_names_short_ones_first(plan):
    names = control.target_names(plan)
    assert names[:9] == ["all", "alpha", "beta", "gamma", "web", "idle", "worker", "worker_00",
                         "worker_01"]
    assert {"alpha:*", "beta:worker_01", "gamma:web2"} <= set(names)
    assert len(names) == len(set(names))


def test_did_you_mean_knows_processes(plan):
    with pytest.raises(UsageError, match="did you mean 'worker_01'"):
        resolve_targets(plan, ["wroker_01"])
    with pytest.raises(UsageError, match="no program '\\*'"):  # `all` says it
        resolve_targets(plan, ["*"])


@pytest.mark.parametrize(("args", "expected"), [
    (["stop", "worker_01"], ["stop", "worker:worker_01"]),
    (["restart", "worker", "beta:worker_00"],
     ["restart", "worker:worker_00", "worker:worker_01", "worker:worker_00"]),
    (["signal", "HUP", "worker_00"], ["signal", "HUP", "worker:worker_00"]),
    (["tail", "-f", "worker_01", "stderr"], ["tail", "-f", "worker:worker_01", "stderr"]),
    (["status", "worker:worker_01", "all"], ["status", "worker:worker_01", "all"]),
    (["stop", "web", "nosuch"], ["stop", "web", "nosuch"]),  # alpha's, nothing: as given
    (["reread"], ["reread"]),
    ([], []),
])
def test_ctl_args_get_supervisord_names(plan, args, expected):
    assert control.supervisorctl_args(plan, plan.instances["beta"], args) == expected


# --------------------------------------------------------------------------------------------
# control


def results(result: control.ControlResult) -> dict[str, tuple[bool, str]]:
    return {f"{r.instance}:{r.process}": (r.ok, r.message) for r in result.outcomes}


def test_start_goes_starting_then_running(plan, endpoints):
    fake = endpoints["alpha"] = FakeEndpoint(before={"web": "STOPPED"},
                                             scripts={"web": ["STARTING", "STARTING", "RUNNING"]})
    rows = control.control(plan, "start", ["web"])
    assert results(rows) == {"alpha:web": (True, "started")}
    assert fake.methods("supervisor.startProcess") == [("web:web", False)]
    # the state just before the request (in the same multicall), then three polls
    assert len(fake.methods("supervisor.getProcessInfo")) == 4
    assert [m for m, _ in fake.calls[:2]] == ["supervisor.getProcessInfo", "supervisor.startProcess"]


def test_start_that_goes_fatal(plan, endpoints):
    endpoints["alpha"] = FakeEndpoint(scripts={"web": ["STARTING", "BACKOFF", "FATAL"]})
    rows = control.control(plan, "start", ["web"])
    assert results(rows) == {"alpha:web": (False, "FATAL: exited too quickly")}


def test_spawn_error_is_followed_to_where_the_process_lands(plan, endpoints):
    # supervisord answers SPAWN_ERROR when the process died before it looked; the state it
    # then reaches (FATAL, or RUNNING after a retry) is the answer
    endpoints["alpha"] = FakeEndpoint(before={"web": "STOPPED"},
                                      start_faults={"web": Fault(50, "SPAWN_ERROR: web:web")},
                                      scripts={"web": ["BACKOFF", "FATAL"]})
    assert results(control.control(plan, "start", ["web"])) == \
        {"alpha:web": (False, "FATAL: exited too quickly")}
    endpoints["alpha"] = FakeEndpoint(before={"web": "STOPPED"},
                                      start_faults={"web": Fault(50, "SPAWN_ERROR: web:web")},
                                      scripts={"web": ["BACKOFF", "STARTING", "RUNNING"]})
    assert results(control.control(plan, "start", ["web"])) == {"alpha:web": (True, "started")}


def test_fatal_shows_spawnerr(plan):
    fake = FakeEndpoint(scripts={"spawnerr": ["FATAL"]})
    result = control._apply(fake, plan.instances["alpha"], "start", ["spawnerr"])  # type: ignore[arg-type]
    assert result == {"spawnerr": (False, "FATAL: can't find command 'nope'")}


def test_start_already_running_is_ok_and_not_polled(plan, endpoints):
    fake = endpoints["alpha"] = FakeEndpoint(
        start_faults={"web": Fault(60, "ALREADY_STARTED: web:web")})
    assert results(control.control(plan, "start", ["web"])) == \
        {"alpha:web": (True, "already running")}
    assert len(fake.methods("supervisor.getProcessInfo")) == 1  # the state before; no polling


def test_stop_not_running_is_ok(plan, endpoints):
    endpoints["alpha"] = FakeEndpoint(before={"web": "STOPPED"},
                                      stop_faults={"web": Fault(70, "NOT_RUNNING: web:web")})
    assert results(control.control(plan, "stop", ["web"])) == \
        {"alpha:web": (True, "already stopped")}


def test_stop_waits_for_stopped(plan, endpoints):
    fake = endpoints["beta"] = FakeEndpoint(
        scripts={"worker_00": ["STOPPING", "STOPPED"], "worker_01": ["EXITED"]})
    assert results(control.control(plan, "stop", ["worker"])) == {
        "beta:worker_00": (True, "stopped"), "beta:worker_01": (True, "stopped")}
    assert fake.methods("supervisor.stopProcess") == [("worker:worker_00", False),
                                                      ("worker:worker_01", False)]


def test_bad_name_is_not_ok(plan, endpoints):
    endpoints["alpha"] = FakeEndpoint(start_faults={"web": Fault(10, "BAD_NAME: web:web")})
    ((ok, message),) = results(control.control(plan, "start", ["web"])).values()
    assert not ok
    assert "not loaded" in message


@pytest.mark.parametrize("action", ["start", "stop"])
def test_other_faults_show_their_text(plan, endpoints, action):
    fault = Fault(20, "NO_FILE: web:web")
    endpoints["alpha"] = FakeEndpoint(start_faults={"web": fault}, stop_faults={"web": fault})
    assert results(control.control(plan, action, ["web"])) == \
        {"alpha:web": (False, "NO_FILE: web:web")}


def test_already_started_on_stop_is_not_treated_as_ok(plan, endpoints):
    # ALREADY_STARTED only means success for a start, NOT_RUNNING only for a stop
    endpoints["alpha"] = FakeEndpoint(start_faults={"web": Fault(70, "NOT_RUNNING: x")})
    assert results(control.control(plan, "start", ["web"]))["alpha:web"] == \
        (False, "NOT_RUNNING: x")


def test_start_that_exits_at_once_does_not_hang(plan, endpoints, clock):
    # startsecs = 0: STARTING -> RUNNING -> EXITED can happen between two polls
    endpoints["alpha"] = FakeEndpoint(scripts={"web": ["EXITED"]})
    before = clock.now
    ((ok, message),) = results(control.control(plan, "start", ["web"])).values()
    assert ok
    assert "exited with status 0" in message
    assert clock.now - before < 1


def test_start_that_never_gets_there_times_out(plan, endpoints, clock):
    endpoints["beta"] = FakeEndpoint(scripts={"worker_00": ["STARTING"], "worker_01": ["RUNNING"]})
    before = clock.now
    rows = results(control.control(plan, "start", ["worker"]))
    # the limit is the instance's longest startsecs (default 3) plus 10 s
    assert rows == {"beta:worker_00": (False, "still STARTING after 13 s"),
                    "beta:worker_01": (True, "started")}
    assert 13 <= clock.now - before < 14


def test_stop_timeout_uses_stopwaitsecs(plan, endpoints, clock):
    endpoints["beta"] = FakeEndpoint(scripts={"worker_00": ["STOPPING"], "worker_01": ["STOPPED"]})
    rows = results(control.control(plan, "stop", ["worker"]))
    assert rows["beta:worker_00"] == (False, "still STOPPING after 15 s")


def test_restart_stops_then_starts(plan, endpoints):
    fake = endpoints["alpha"] = FakeEndpoint(scripts={"web": ["STOPPED", "STARTING", "RUNNING"]})
    assert results(control.control(plan, "restart", ["web"])) == {"alpha:web": (True, "restarted")}
    methods = [m for m, _ in fake.calls if m != "supervisor.getProcessInfo"]
    assert methods == ["supervisor.stopProcess", "supervisor.startProcess"]


def test_restart_of_a_stopped_process(plan, endpoints):
    fake = endpoints["alpha"] = FakeEndpoint(before={"web": "STOPPED"},
                                             stop_faults={"web": Fault(70, "NOT_RUNNING: x")},
                                             scripts={"web": ["STOPPED", "STARTING", "RUNNING"]})
    assert results(control.control(plan, "restart", ["web"])) == {"alpha:web": (True, "restarted")}
    assert fake.methods("supervisor.startProcess") == [("web:web", False)]


def test_restart_that_fails_to_start(plan, endpoints):
    endpoints["alpha"] = FakeEndpoint(scripts={"web": ["STOPPED", "FATAL"]})
    assert results(control.control(plan, "restart", ["web"])) == \
        {"alpha:web": (False, "FATAL: exited too quickly")}


def test_restart_does_not_start_what_failed_to_stop(plan, endpoints):
    fake = endpoints["beta"] = FakeEndpoint(
        stop_faults={"worker_00": Fault(10, "BAD_NAME: x")},
        scripts={"worker_01": ["STOPPED", "RUNNING"]})
    rows = results(control.control(plan, "restart", ["worker"]))
    assert rows["beta:worker_00"][0] is False
    assert "not loaded" in rows["beta:worker_00"][1]
    assert rows["beta:worker_01"] == (True, "restarted")
    assert fake.methods("supervisor.startProcess") == [("worker:worker_01", False)]


# Other commands acting on the same processes at the same time (issue 11, defect 9): what
# counts is the process's pid and start time, not who moved it.

ALREADY_STARTED = Fault(60, "ALREADY_STARTED: web:web")
NOT_RUNNING_FAULT = Fault(70, "NOT_RUNNING: web:web")


def test_restart_that_another_restart_finished_first(plan, endpoints, clock):
    # we asked for the stop; before we saw STOPPED another restart had started a new process
    fake = endpoints["alpha"] = FakeEndpoint(scripts={"web": [("STARTING", 1), ("RUNNING", 1)]})
    before = clock.now
    assert results(control.control(plan, "restart", ["web"])) == {"alpha:web": (True, "restarted")}
    assert fake.methods("supervisor.startProcess") == []  # its start counts as ours
    assert clock.now - before < 1  # no waiting for a STOPPED that never comes


def test_restart_that_another_restart_is_stopping(plan, endpoints):
    # our stop finds it STOPPING (NOT_RUNNING); the other command starts it again
    fake = endpoints["alpha"] = FakeEndpoint(before={"web": "STOPPING"},
                                             stop_faults={"web": NOT_RUNNING_FAULT},
                                             scripts={"web": ["STOPPING", ("RUNNING", 1)]})
    assert results(control.control(plan, "restart", ["web"])) == {"alpha:web": (True, "restarted")}
    assert fake.methods("supervisor.startProcess") == []


def test_restart_whose_start_another_restart_made(plan, endpoints):
    fake = endpoints["alpha"] = FakeEndpoint(start_faults={"web": ALREADY_STARTED},
                                             scripts={"web": ["STOPPED", ("STARTING", 1),
                                                              ("RUNNING", 1)]})
    assert results(control.control(plan, "restart", ["web"])) == {"alpha:web": (True, "restarted")}
    assert len(fake.methods("supervisor.startProcess")) == 1


def test_start_lost_to_another_stop_is_asked_again(plan, endpoints):
    # our start reached the process while another command stopped it: supervisord's spawn
    # did nothing, the process ends up STOPPED with its old start time
    fake = endpoints["alpha"] = FakeEndpoint(before={"web": "STOPPING"},
                                             scripts={"web": ["STOPPING", "STOPPED", "STARTING",
                                                              "RUNNING"]})
    assert results(control.control(plan, "start", ["web"])) == {"alpha:web": (True, "started")}
    assert len(fake.methods("supervisor.startProcess")) == 2


def test_start_that_another_command_keeps_stopping_gives_up(plan, endpoints):
    fake = endpoints["alpha"] = FakeEndpoint(before={"web": "STOPPED"}, scripts={"web": ["STOPPED"]})
    assert results(control.control(plan, "start", ["web"])) == \
        {"alpha:web": (False, "another command stopped it each time it was started")}
    assert len(fake.methods("supervisor.startProcess")) == 3


def test_restart_whose_new_process_another_restart_stopped(plan, endpoints):
    # three `restart worker` at once: ours started it, a third one's stop hit our new process
    # (and that one starts it again too): ask again, it comes up
    fake = endpoints["alpha"] = FakeEndpoint(
        start_faults={"web": [True, ALREADY_STARTED]},
        scripts={"web": ["STOPPED", ("STARTING", 1), ("STOPPING", 1), "STOPPED", ("STARTING", 2),
                         ("RUNNING", 2)]})
    assert results(control.control(plan, "restart", ["web"])) == {"alpha:web": (True, "restarted")}
    assert len(fake.methods("supervisor.startProcess")) == 2


@pytest.mark.parametrize(("script", "expected"), [
    (["STARTING", "RUNNING"], (True, "already running")),
    (["BACKOFF", "FATAL"], (False, "FATAL: exited too quickly")),
])
def test_start_of_a_process_another_start_is_starting(plan, endpoints, script, expected):
    fake = endpoints["alpha"] = FakeEndpoint(before={"web": "STARTING"},
                                             start_faults={"web": ALREADY_STARTED},
                                             scripts={"web": script})
    fake.acted.add("web")  # the other command's start
    assert results(control.control(plan, "start", ["web"])) == {"alpha:web": expected}


def test_stop_while_another_command_starts_it_again(plan, endpoints):
    endpoints["alpha"] = FakeEndpoint(scripts={"web": ["STOPPING", ("STARTING", 1)]})
    assert results(control.control(plan, "stop", ["web"])) == \
        {"alpha:web": (True, "stopped (and started again since by another command)")}


def test_stop_of_a_process_another_command_is_stopping(plan, endpoints):
    fake = endpoints["alpha"] = FakeEndpoint(before={"web": "STOPPING"},
                                             stop_faults={"web": NOT_RUNNING_FAULT},
                                             scripts={"web": ["STOPPING", "STOPPED"]})
    fake.acted.add("web")
    assert results(control.control(plan, "stop", ["web"])) == {"alpha:web": (True, "stopped")}


def test_a_process_that_vanished_before_the_request(plan, endpoints):
    class Vanished(FakeEndpoint):
        def process_info(self, process: str) -> Any:
            return Fault(10, f"BAD_NAME: {process}:{process}")

    endpoints["alpha"] = Vanished(scripts={"web": ["RUNNING"]})
    ((ok, message),) = results(control.control(plan, "restart", ["web"])).values()
    assert not ok
    assert "not loaded" in message


def test_instances_fail_independently(plan, endpoints):
    endpoints["alpha"] = FakeEndpoint(error=RpcError(NOT_RUNNING, "nothing is listening at u\nmore",
                                                     "run `siteboot up`"))
    endpoints["beta"] = FakeEndpoint(scripts={"worker_00": ["RUNNING"], "worker_01": ["RUNNING"]})
    endpoints["gamma"] = KeyAccessError("instance gamma belongs to someone-else")
    rows = control.control(plan, "start", ["all", "gamma:*"])
    assert [(r.instance, r.process) for r in rows.outcomes] == [
        ("alpha", "web"), ("alpha", "idle"), ("beta", "worker_00"), ("beta", "worker_01"),
        ("gamma", "web2")]
    assert results(rows) == {
        "alpha:web": (False, "nothing is listening at u; run `siteboot up`"),
        "alpha:idle": (False, "nothing is listening at u; run `siteboot up`"),
        "beta:worker_00": (True, "started"),
        "beta:worker_01": (True, "started"),
        "gamma:web2": (False, "instance gamma belongs to someone-else"),
    }


def test_unknown_action_and_names_are_usage_errors(plan, endpoints):
    with pytest.raises(UsageError, match="unknown action"):
        control.control(plan, "reload", ["web"])
    with pytest.raises(UsageError, match="did you mean 'web'"):
        control.control(plan, "start", ["wbe"])


# --------------------------------------------------------------------------------------------
# status


def running_alpha() -> FakeEndpoint:
    return FakeEndpoint(infos=[info("web", "RUNNING", pid=12, start=970, now=1000),
                               info("idle", "STOPPED")])


def running_beta(second: str = "RUNNING") -> FakeEndpoint:
    return FakeEndpoint(infos=[info("worker_00", "RUNNING", pid=21, start=1, now=2),
                               info("worker_01", second, pid=22 if second == "RUNNING" else 0)])


def test_status_all_running(plan, endpoints):
    endpoints["alpha"] = running_alpha()
    endpoints["beta"] = running_beta()
    report = control.status(plan, "alpha")
    assert report.exit_code == STATUS_OK
    (alpha,) = report.instances
    assert (alpha.name, alpha.state, alpha.pid, alpha.error) == ("alpha", RUNNING, 4242, None)
    assert alpha.url == plan.instances["alpha"].unix_url
    assert [(p.name, p.state, p.uptime_s) for p in alpha.programs] == \
        [("web", "RUNNING", 30), ("idle", "STOPPED", None)]
    data = report.as_json()
    assert data["ok"] is True
    assert set(data["instances"][0]) == {"name", "user", "state", "pid", "url", "error", "host", "programs"}

    report = control.status(plan, "beta")
    assert report.exit_code == STATUS_OK
    assert [p.name for p in report.instances[0].programs] == ["worker_00", "worker_01"]
    # one request: the restart count comes from the main log's tail in the same multicall
    assert endpoints["beta"].calls == [
        ("supervisor.getState", ()), ("supervisor.getPID", ()),
        ("supervisor.getAllProcessInfo", ()), ("supervisor.readLog", (-MAIN_LOG_TAIL, 0))]


@pytest.mark.parametrize(("second", "code"), [
    ("RUNNING", STATUS_OK),
    ("STARTING", STATUS_WARNING),
    ("BACKOFF", STATUS_WARNING),
    ("FATAL", STATUS_CRITICAL),
    ("STOPPED", STATUS_CRITICAL),
    ("EXITED", STATUS_CRITICAL),
])
def test_status_exit_code_follows_program_states(plan, endpoints, second, code):
    endpoints["beta"] = running_beta(second)
    assert control.status(plan, "beta").exit_code == code


@pytest.mark.parametrize(("reason", "code"), [
    (REFUSED, STATUS_UNKNOWN),
    (NOT_ANSWERING, STATUS_CRITICAL),
    (NO_ACCESS, STATUS_UNKNOWN),
    (NOT_RUNNING, STATUS_CRITICAL),
])
def test_status_rpc_errors(plan, endpoints, reason, code):
    endpoints["alpha"] = FakeEndpoint(error=RpcError(reason, f"{reason} at u", "a hint"))
    report = control.status(plan, "alpha")
    (alpha,) = report.instances
    assert alpha.state == reason
    assert alpha.programs == []
    assert report.exit_code == code
    assert alpha.error is not None
    if reason == NOT_RUNNING:  # own instance: what to do, not the transport detail
        assert alpha.error == f"nothing is listening at {alpha.url}; run `siteboot up`"
    else:
        assert alpha.error.startswith(f"{reason} at u")


def test_status_not_running_of_granted_instance_keeps_the_message(plan, endpoints):
    endpoints["gamma"] = FakeEndpoint(error=RpcError(NOT_RUNNING, "nothing is listening at h"))
    (gamma,) = control.status(plan, "gamma").instances
    assert gamma.url == plan.instances["gamma"].http_url
    assert gamma.state == NOT_RUNNING
    assert gamma.error == "nothing is listening at h"


def test_status_without_key(plan, endpoints):
    alpha = plan.instances["alpha"]
    endpoints["alpha"] = KeyAccessError("no key for instance alpha yet")
    # own instance, no socket: simply not running
    (row,) = control.status(plan, "alpha").instances
    assert row.state == NOT_RUNNING
    assert str(alpha.socket_path) in (row.error or "")
    assert "siteboot up" in (row.error or "")
    assert control.status(plan, "alpha").exit_code == STATUS_CRITICAL
    # a socket but no key: the key is the problem
    alpha.runtime_dir.mkdir(parents=True)
    alpha.socket_path.write_text("")
    (row,) = control.status(plan, "alpha").instances
    assert row.state == NO_KEY
    assert row.error == "no key for instance alpha yet"
    assert control.status(plan, "alpha").exit_code == STATUS_UNKNOWN


def test_status_key_of_someone_else(plan):
    # the real connect: gamma belongs to another user and grants no group
    report = control.status(plan, "gamma")
    (gamma,) = report.instances
    assert gamma.state == statusreport.NOT_YOURS
    assert "owned by someone-else, no grant: run as someone-else" in (gamma.error or "")
    assert report.exit_code == STATUS_OK  # nothing for this user to monitor there


def test_status_with_realconnect_and_no_supervisord(plan):
    alpha = plan.instances["alpha"]
    alpha.key_path.parent.mkdir(parents=True)
    alpha.key_path.write_text("k\n")
    (row,) = control.status(plan, "alpha").instances
    assert row.state == NOT_RUNNING
    assert row.url == alpha.unix_url
    assert "siteboot up" in (row.error or "")


def test_status_of_a_supervisord_shutting_down(plan, endpoints):
    endpoints["alpha"] = FakeEndpoint(state={"statecode": -1, "statename": "SHUTDOWN"},
                                      infos=[info("web", "RUNNING", pid=1), info("idle", "STOPPED")])
    report = control.status(plan, "alpha")
    (alpha,) = report.instances
    assert alpha.state == "shutting down"
    assert "SHUTDOWN" in (alpha.error or "")
    assert report.exit_code == STATUS_CRITICAL


def test_status_of_every_instance_concurrently(plan, endpoints):
    endpoints["alpha"] = running_alpha()
    endpoints["beta"] = running_beta("FATAL")
    endpoints["gamma"] = FakeEndpoint(error=RpcError(REFUSED, "refused"))
    report = control.status(plan)
    assert [i.name for i in report.instances] == ["alpha", "beta", "gamma"]
    assert [i.severity for i in report.instances] == [STATUS_OK, STATUS_CRITICAL, STATUS_UNKNOWN]
    assert report.exit_code == STATUS_CRITICAL
    assert report.as_json()["ok"] is False


def test_status_of_unknown_instance(plan, endpoints):
    with pytest.raises(UsageError, match="no instance 'delta'"):
        control.status(plan, "delta")


def test_status_of_named_programs(plan, endpoints):
    endpoints["alpha"] = running_alpha()
    endpoints["beta"] = running_beta("FATAL")
    report = control.status(plan, None, ["worker_00", "web"])
    assert [(i.name, [p.name for p in i.programs]) for i in report.instances] == [
        ("alpha", ["web"]), ("beta", ["worker_00"])]
    assert report.exit_code == STATUS_OK  # worker_01 is FATAL, but not asked about
    assert control.status(plan, None, ["worker"]).exit_code == STATUS_CRITICAL
    assert [i.name for i in control.status(plan, ["beta"], ["worker_00", "web"]).instances] == \
        ["beta"]
    with pytest.raises(UsageError, match="web: not in instance beta"):
        control.status(plan, "beta", ["web"])


def test_status_of_several_instances(plan, endpoints):
    endpoints["alpha"] = running_alpha()
    endpoints["beta"] = running_beta()
    report = control.status(plan, ["beta", "alpha", "beta"])
    assert [i.name for i in report.instances] == ["alpha", "beta"]


def test_a_stopped_program_has_no_exit_status(plan, endpoints):
    """supervisord's -1 for a STOPPED process is its stop signal, not an exit to report."""
    endpoints["beta"] = FakeEndpoint(infos=[info("worker_00", "STOPPED", exitstatus=-1),
                                            info("worker_01", "EXITED", exitstatus=3)])
    (beta,) = control.status(plan, "beta").instances
    assert [(p.state, p.exitstatus) for p in beta.programs] == [("STOPPED", None), ("EXITED", 3)]


def test_an_env_is_in_use_when_something_of_it_answers(plan):
    def report(*states: str) -> StatusResult:
        return StatusResult("t", "dev", [InstanceStatus(f"i{n}", "me", state, "u")
                                         for n, state in enumerate(states)])

    assert not statusreport.in_use(report(NOT_RUNNING, NO_KEY, statusreport.NOT_YOURS, statusreport.ERROR))
    assert statusreport.in_use(report(NOT_RUNNING, RUNNING))
    assert statusreport.in_use(report(NOT_ANSWERING))
    assert statusreport.in_use(report(statusreport.ORPHANED))


def test_status_of_every_env_in_use(monkeypatch, short_dir):
    """`status --all-envs`: envs with an instance that answers, or recorded as started."""
    from siteboot import ops

    plans = [plan_from(own_site_text(short_dir), short_dir, env) for env in ("dev", "staging", "prod")]
    states = {"dev": NOT_RUNNING, "staging": NOT_RUNNING, "prod": RUNNING}

    def status(plan: Plan, instance: Any, names: Any) -> StatusResult:
        return StatusResult("t", plan.env, [InstanceStatus("alpha", "me", states[plan.env], "u")])

    class Record:
        env = "staging"

    monkeypatch.setattr(ops, "status", status)
    monkeypatch.setattr("siteboot.records.starts_of", lambda user, site: [Record()])
    result = ops.status_all_envs(plans, "dev")
    assert [r.env for r in result.reports] == ["staging", "prod"]
    assert result.exit_code == STATUS_CRITICAL
    assert [e["env"] for e in result.as_json()["envs"]] == ["staging", "prod"]
    monkeypatch.setattr("siteboot.records.starts_of", lambda user, site: [])
    states["prod"] = NOT_RUNNING  # nothing anywhere: the env asked about, saying so
    assert [r.env for r in ops.status_all_envs(plans, "dev").reports] == ["dev"]


def test_unexpected_errors_reach_the_caller(plan, endpoints):
    endpoints["alpha"] = FakeEndpoint(error=RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        control.status(plan, "alpha")


# --------------------------------------------------------------------------------------------
# restarts and crash loops (issue 11, defect 11), from supervisord's main log

NOW = 1_700_000_000


def log_line(at: float, text: str, level: str = "INFO") -> str:
    """A line as supervisord's logger writes it: local time, milliseconds, level, message."""
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(at))},123 {level} {text}\n"


def crash_log(name: str, exits: list[float], pid: int = 500, first: float = NOW - 3600) -> str:
    """A process spawned at ``first``, then exiting at each of ``exits`` and respawned 1 s later."""
    text = log_line(first, f"spawned: '{name}' with pid {pid}")
    for n, at in enumerate(exits, start=1):
        text += log_line(at, f"exited: {name} (exit status 3; not expected)", "WARN")
        text += log_line(at + 1, f"spawned: '{name}' with pid {pid + n}")
        text += log_line(at + 2, f"success: {name} entered RUNNING state, process has stayed "
                         "up for > than 1 seconds (startsecs)")
    return text


def beta_with_log(main_log: Any, worker_pid: int = 504) -> FakeEndpoint:
    return FakeEndpoint(infos=[info("worker_00", "RUNNING", pid=worker_pid, start=NOW - 5, now=NOW),
                               info("worker_01", "RUNNING", pid=22, start=NOW - 4000, now=NOW)],
                        main_log=main_log)


def test_a_crash_loop_longer_than_startsecs_is_a_warning(plan, endpoints):
    # each run reaches RUNNING (so no BACKOFF/FATAL), but 4 restarts in 300 s is more than 3
    log = crash_log("worker_00", [NOW - 200, NOW - 150, NOW - 100, NOW - 8]) + \
        log_line(NOW - 4000, "spawned: 'worker_01' with pid 22")
    endpoints["beta"] = beta_with_log(log)
    report = control.status(plan, "beta")
    worker_00, worker_01 = report.instances[0].programs
    assert (worker_00.restarts, worker_00.crash_looping) == (4, True)
    assert worker_00.severity == STATUS_WARNING
    assert (worker_01.restarts, worker_01.crash_looping) == (0, False)
    assert report.exit_code == STATUS_WARNING
    data = report.as_json()["instances"][0]["programs"]
    assert data[0]["restarts"] == 4
    assert data[0]["last_exit"] == {"ago_s": 8, "reason": "exit status 3", "expected": False}
    assert data[0]["state"] == "RUNNING"  # every field there was is still there
    assert (data[1]["restarts"], data[1]["last_exit"]) == (0, None)


def test_restarts_outside_the_window_or_at_the_limit_are_fine(plan, endpoints):
    endpoints["beta"] = beta_with_log(crash_log("worker_00", [NOW - 900, NOW - 800, NOW - 100,
                                                              NOW - 50, NOW - 8]))
    report = control.status(plan, "beta")
    assert report.instances[0].programs[0].restarts == 3  # not more than 3
    assert report.exit_code == STATUS_OK


def test_operator_restarts_are_not_crashes(plan, endpoints):
    log = log_line(NOW - 100, "spawned: 'worker_00' with pid 500")
    for n in range(1, 6):  # five `siteboot restart`s
        log += log_line(NOW - 100 + n * 10, "stopped: worker_00 (terminated by SIGTERM)")
        log += log_line(NOW - 99 + n * 10, f"spawned: 'worker_00' with pid {500 + n}")
    endpoints["beta"] = beta_with_log(log, worker_pid=505)
    (worker_00, _) = control.status(plan, "beta").instances[0].programs
    assert worker_00.restarts == 0
    assert worker_00.history is not None
    assert worker_00.history.last_exit is None


def test_a_log_written_in_another_time_zone(plan, endpoints):
    # supervisord ran with TZ an hour off ours: its spawn of the running pid tells the offset
    hour = 3600
    log = crash_log("worker_00", [NOW - 200 - hour, NOW - 150 - hour, NOW - 100 - hour,
                                  NOW - 8 - hour], first=NOW - 2 * hour)
    endpoints["beta"] = beta_with_log(log, worker_pid=504)
    endpoints["beta"].infos[0]["start"] = NOW - 7  # spawned 1 s after the last exit
    (worker_00, _) = control.status(plan, "beta").instances[0].programs
    assert worker_00.restarts == 4
    assert worker_00.history is not None
    assert worker_00.history.last_exit is not None
    assert worker_00.history.last_exit.ago_s == 8


def test_without_a_main_log_restarts_are_unknown(plan, endpoints):
    endpoints["beta"] = beta_with_log(Fault(60, "NO_FILE: /x/supervisord.log"))
    report = control.status(plan, "beta")
    assert [p.restarts for p in report.instances[0].programs] == [None, None]
    assert report.exit_code == STATUS_OK
    assert report.as_json()["instances"][0]["programs"][0]["restarts"] is None


def test_a_log_tail_that_starts_inside_a_character_is_read_again(plan, endpoints):
    log = crash_log("worker_00", [NOW - 200, NOW - 150, NOW - 100, NOW - 8])

    def read(params: tuple[Any, ...]) -> Any:
        if params[0] in (-MAIN_LOG_TAIL, -MAIN_LOG_TAIL - 1):
            return Fault(30, "FAILED: <class 'UnicodeDecodeError'>:'utf-8' codec can't decode")
        return log

    endpoints["beta"] = fake = beta_with_log(read)
    (worker_00, _) = control.status(plan, "beta").instances[0].programs
    assert worker_00.restarts == 4
    assert [params for params in fake.methods("supervisor.readLog")] == [
        (-MAIN_LOG_TAIL, 0), (-MAIN_LOG_TAIL - 1, 0), (-MAIN_LOG_TAIL - 2, 0),
        (-MAIN_LOG_TAIL - 3, 0)]


def test_counting_turned_off(short_dir: Path, endpoints):
    plan = plan_from(SITE.format(base=short_dir).replace(
        'numprocs = 2', 'numprocs = 2\ncrash_loop_window = 0'), short_dir)
    endpoints["beta"] = fake = beta_with_log(crash_log("worker_00", [NOW - 3, NOW - 2, NOW - 1,
                                                                     NOW - 0.5]))
    report = control.status(plan, "beta")
    assert [p.restarts for p in report.instances[0].programs] == [None, None]
    assert fake.methods("supervisor.readLog") == []  # not even read


def test_the_limit_is_per_program(short_dir: Path, endpoints):
    plan = plan_from(SITE.format(base=short_dir).replace(
        'numprocs = 2', 'numprocs = 2\ncrash_loop_restarts = 0\ncrash_loop_window = 60'), short_dir)
    endpoints["beta"] = beta_with_log(crash_log("worker_00", [NOW - 100, NOW - 8]))
    report = control.status(plan, "beta")
    assert report.instances[0].programs[0].restarts == 1  # the one 100 s ago is outside 60 s
    assert report.exit_code == STATUS_WARNING


# --------------------------------------------------------------------------------------------
# one instance that cannot be asked never hides the others (issue 11, defect 5)


@pytest.mark.parametrize("error", [
    PermissionError(13, "Permission denied"),
    UsageError("user jaws does not exist on this host"),
])
def test_an_instance_that_cannot_be_asked_reports_its_own_error(plan, endpoints, error):
    endpoints["alpha"] = error
    endpoints["beta"] = running_beta()
    endpoints["gamma"] = FakeEndpoint(infos=[info("web2", "RUNNING", pid=3)])
    report = control.status(plan)
    alpha, beta, gamma = report.instances
    assert alpha.state == statusreport.ERROR
    assert str(error.args[-1] if isinstance(error, OSError) else error) in (alpha.error or "")
    assert (beta.state, gamma.state) == (RUNNING, RUNNING)
    assert report.exit_code == STATUS_UNKNOWN
    endpoints["beta"] = running_beta("FATAL")
    assert control.status(plan).exit_code == STATUS_CRITICAL  # CRITICAL still wins


@pytest.mark.parametrize("kind", ["directory", "fifo", "unreadable"])
def test_a_key_file_that_is_no_key_file(plan, endpoints, monkeypatch, kind):
    from siteboot import rpc

    alpha = plan.instances["alpha"]
    alpha.runtime_dir.mkdir(parents=True)
    alpha.socket_path.write_text("")  # it runs: the key is the problem
    alpha.key_path.parent.mkdir(parents=True)
    if kind == "directory":
        alpha.key_path.mkdir()
    elif kind == "fifo":
        os.mkfifo(alpha.key_path)
    else:
        alpha.key_path.write_text("k\n")
        real_open = os.open

        def refuse(path: Any, *args: Any) -> int:
            if Path(path) == alpha.key_path:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args)

        monkeypatch.setattr(os, "open", refuse)

    def some_connect(plan_: Plan, inst: Any, timeout: float = 5.0) -> Any:
        if inst.name == "alpha":
            return rpc.connect(plan_, inst, timeout)
        return running_beta() if inst.name == "beta" else \
            FakeEndpoint(infos=[info("web2", "RUNNING", pid=3)])

    monkeypatch.setattr(control, "connect", some_connect)
    report = control.status(plan, None)
    alpha_row, beta_row, _gamma = report.instances
    assert alpha_row.state == NO_KEY
    expected = {"directory": "is a directory, not a regular file",
                "fifo": "is a FIFO, not a regular file", "unreadable": "permission denied"}[kind]
    assert expected in (alpha_row.error or "")
    assert str(alpha.key_path) in (alpha_row.error or "")
    assert beta_row.state == RUNNING
    assert len(beta_row.programs) == 2
    assert report.exit_code == STATUS_UNKNOWN
    assert report.as_json()["instances"][0]["state"] == "no key"


# --------------------------------------------------------------------------------------------
# tail


def test_tail_once(plan, endpoints):
    fake = endpoints["alpha"] = FakeEndpoint()
    fake.tails[("web:web", 0, 100)] = ["last lines\n", 100, False]
    out: list[str] = []
    control.tail(plan, "web", out.append, nbytes=100)
    assert out == ["last lines\n"]
    assert fake.calls == [("supervisor.tailProcessStdoutLog", ("web:web", 0, 100))]


def test_tail_stderr_of_one_numprocs_process(plan, endpoints):
    fake = endpoints["beta"] = FakeEndpoint()
    fake.tails[("worker:worker_01", 0, 4096)] = ["err\n", 4, False]
    out: list[str] = []
    control.tail(plan, "beta:worker_01", out.append, stderr=True)
    assert out == ["err\n"]
    assert fake.calls[0][0] == "supervisor.tailProcessStderrLog"


def test_tail_needs_exactly_one_process(plan, endpoints):
    with pytest.raises(UsageError, match="names 2 processes") as info_:
        control.tail(plan, "worker", print)
    assert "beta:worker_00" in (info_.value.hint or "")


def test_tail_fault_is_a_usage_error(plan, endpoints):
    fake = endpoints["alpha"] = FakeEndpoint()
    fake.tails[("web:web", 0, 4096)] = Fault(10, "BAD_NAME: web:web")
    with pytest.raises(UsageError, match="cannot tail web:web: BAD_NAME"):
        control.tail(plan, "web", print)


def test_tail_follow_over_rpc_reads_from_its_offset(plan, endpoints):
    # supervisord's tailProcessStdoutLog answers the *last* bytes whatever the offset: asked
    # with a big length it sent the whole log again on every poll (18 lines, 91 printed)
    fake = endpoints["alpha"] = FakeEndpoint()
    fake.log_bytes = b"".join(f"line {n}\n".encode() for n in range(18))
    fake.tails[("web:web", 0, 256)] = [fake.log_bytes.decode(), len(fake.log_bytes), False]
    out: list[str] = []
    stop = threading.Event()

    def write(text: str) -> None:
        out.append(text)
        if len(out) < 4:  # the program writes on
            fake.log_bytes += f"more {len(out)}\n".encode()
        else:
            stop.set()

    first = len(fake.log_bytes)
    control.tail(plan, "web", write, follow=True, nbytes=16, stop=stop, interval=0.01)
    assert "".join(out) == "line 16\nline 17\nmore 1\nmore 2\nmore 3\n"
    reads = fake.methods("supervisor.readProcessStdoutLog")
    # from the offset, less the bytes seen last (all of them here: fewer than 256)
    assert reads[0] == ("web:web", 0, first + RPC_CHUNK)
    ends = [start + length - RPC_CHUNK for _, start, length in reads]
    assert ends == sorted(ends)  # each read starts where the last one ended


def test_tail_follow_over_rpc_of_a_log_that_is_not_there(plan, endpoints):
    answers = iter([Fault(20, "NO_FILE: /x/web.out.log"), "late\n",
                    Fault(30, "FAILED: <class 'PermissionError'>:...")])

    class Missing(FakeEndpoint):
        def one(self, method: str, params: tuple[Any, ...]) -> Any:
            return next(answers) if "readProcess" in method else super().one(method, params)

    fake = endpoints["alpha"] = Missing()
    fake.tails[("web:web", 0, 4096)] = ["", 0, False]  # supervisord's answer: no file
    out: list[str] = []
    with pytest.raises(UsageError, match="cannot follow web:web: FAILED"):
        control.tail(plan, "web", out.append, follow=True, interval=0.01)
    assert "".join(out) == "late\n"


def test_tail_follow_of_the_owner_reads_the_files(plan, endpoints):
    endpoints["alpha"] = FakeEndpoint()
    log = plan.instances["alpha"].programs[0].log_path("web")
    log.parent.mkdir(parents=True)
    log.write_text("old\nnew\n")
    out: list[str] = []
    stop = threading.Event()

    def write(text: str) -> None:
        out.append(text)
        stop.set()

    control.tail(plan, "web", write, follow=True, nbytes=4, stop=stop, interval=0.01)
    assert out == ["new\n"]
    assert endpoints["alpha"].calls == []  # files only


def test_tail_of_the_owner_reads_the_files_without_follow_too(plan, endpoints):
    # supervisord puts control characters raw into XML-RPC: the owner never needs it to read
    endpoints["alpha"] = FakeEndpoint()
    log = plan.instances["alpha"].programs[0].log_path("web", "stderr")
    log.parent.mkdir(parents=True)
    log.write_bytes(b"old\n\x1b[31mred\x1b[0m \x00\x07\r\n")
    out: list[str] = []
    control.tail(plan, "web", out.append, stderr=True, nbytes=17)
    assert out == ["\x1b[31mred\x1b[0m \x00\x07\r\n"]
    assert endpoints["alpha"].calls == []


@pytest.mark.parametrize(("names", "instance", "expected"), [
    (["worker"], ["beta"], {"beta": ["worker_00", "worker_01"]}),
    (["web", "worker_01"], ["beta"], {"beta": ["worker_01"]}),
    ([], ["beta", "alpha"], {"alpha": ["web", "idle"], "beta": ["worker_00", "worker_01"]}),
    ([], ["gamma"], {"gamma": ["web2"]}),  # named: tried, though it grants nothing
    ([], [], {"alpha": ["web", "idle"], "beta": ["worker_00", "worker_01"]}),  # all: readable
])
def test_names_narrowed_to_instances(plan, names, instance, expected):
    assert control.select_targets(plan, names, instance) == expected


def test_tail_takes_the_instance_apart(plan, endpoints):
    fake = endpoints["beta"] = FakeEndpoint()
    fake.tails[("worker:worker_01", 0, 4096)] = ["w1\n", 3, False]
    out: list[str] = []
    control.tail(plan, "worker_01", out.append, instance="beta")
    assert out == ["w1\n"]
    with pytest.raises(UsageError, match="alpha:web: not in instance beta"):
        control.tail(plan, "alpha:web", out.append, instance="beta")
    with pytest.raises(UsageError, match="'worker' names 2 processes"):
        control.tail(plan, "worker", out.append, instance=["beta", "alpha"])


def test_tail_an_end_that_starts_inside_a_character(plan, endpoints):
    fake = endpoints["alpha"] = FakeEndpoint()
    undecodable = Fault(30, "FAILED: <class 'UnicodeDecodeError'>:'utf-8' codec can't decode")
    fake.tails[("web:web", 0, 5)] = undecodable
    fake.tails[("web:web", 0, 4)] = undecodable
    fake.tails[("web:web", 0, 3)] = ["€\n", 9, True]
    fake.tails[("web:web", 0, 2)] = undecodable
    out: list[str] = []
    control.tail(plan, "web", out.append, nbytes=5)
    assert out == ["€\n"]


# --------------------------------------------------------------------------------------------
# settle


def test_settle_waits_while_warning(plan, endpoints):
    endpoints["alpha"] = running_alpha()
    fake = endpoints["beta"] = running_beta("STARTING")
    endpoints["gamma"] = FakeEndpoint(infos=[info("web2", "RUNNING", pid=3)])
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds
        if now[0] >= 1.0:
            fake.infos[1] = info("worker_01", "RUNNING", pid=22)

    report = control.settle(plan, 30, clock=lambda: now[0], sleep=sleep)
    assert report.exit_code == STATUS_OK
    assert 1.0 <= now[0] < 2.0


def test_settle_gives_up_at_the_deadline(plan, endpoints):
    endpoints["alpha"] = running_alpha()
    endpoints["beta"] = running_beta("BACKOFF")
    endpoints["gamma"] = FakeEndpoint(error=RpcError(REFUSED, "refused"))
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    report = control.settle(plan, 2, clock=lambda: now[0], sleep=sleep)
    # gamma is UNKNOWN, beta only WARNING: the worst is UNKNOWN at once, nothing to wait for
    assert report.exit_code == STATUS_UNKNOWN
    assert now[0] == 0.0
    endpoints["gamma"] = FakeEndpoint(infos=[info("web2", "RUNNING", pid=3)])
    report = control.settle(plan, 2, clock=lambda: now[0], sleep=sleep)
    assert report.exit_code == STATUS_WARNING
    assert 2.0 <= now[0] < 2.5


def test_settle_for_every_program_waits_past_a_critical_one(plan, endpoints):
    """A deploy judges each program: one FATAL must not cut the wait for one still STARTING."""
    endpoints["alpha"] = running_alpha()
    fake = endpoints["beta"] = running_beta("STARTING")
    endpoints["gamma"] = FakeEndpoint(error=RpcError(REFUSED, "refused"))
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds
        if now[0] >= 1.0:
            fake.infos[1] = info("worker_01", "RUNNING", pid=22)

    report = control.settle(plan, 30, clock=lambda: now[0], sleep=sleep, every_program=True)
    assert report.exit_code == STATUS_UNKNOWN  # gamma's verdict stays, nothing is STARTING
    assert 1.0 <= now[0] < 2.0


# --------------------------------------------------------------------------------------------
# converge: what should run is started, what an operator stopped stays stopped


def test_starts_what_should_run_and_leaves_the_rest(plan: Plan, endpoints: dict[str, Any]):
    fake = endpoints["alpha"] = FakeEndpoint(
        infos=[info("web", "FATAL"), info("idle", "STOPPED")],  # idle: autostart = false
        scripts={"web": ["STARTING", "RUNNING"]})
    done = control.converge(plan, plan.instances["alpha"], held=set())
    assert done.notes == ["started web (was FATAL)"]
    assert done.failed == []
    assert fake.methods("supervisor.startProcess") == [("web:web", False)]


def test_operator_stops_are_respected_and_restored(plan: Plan, endpoints: dict[str, Any]):
    fake = endpoints["beta"] = FakeEndpoint(
        infos=[info("worker_00", "RUNNING", pid=5), info("worker_01", "EXITED")],
        scripts={"worker_00": ["STOPPED"]})
    done = control.converge(plan, plan.instances["beta"], held={"worker_00", "worker_01"})
    assert fake.methods("supervisor.startProcess") == []
    assert fake.methods("supervisor.stopProcess") == [("worker:worker_00", False)]
    assert done.notes[0].startswith("stopped worker_00 again: an operator stopped it")
    assert "siteboot start beta:worker_00" in done.notes[0]


def test_a_program_that_will_not_start_is_a_failure(plan: Plan, endpoints: dict[str, Any]):
    endpoints["alpha"] = FakeEndpoint(infos=[info("web", "EXITED")],
                                      scripts={"web": ["STARTING", "BACKOFF", "FATAL"]})
    done = control.converge(plan, plan.instances["alpha"], held=set())
    assert done.notes == []
    assert done.failed == ["web: FATAL: exited too quickly"]


def test_nothing_to_do(plan: Plan, endpoints: dict[str, Any]):
    fake = endpoints["alpha"] = FakeEndpoint(infos=[info("web", "RUNNING", pid=3),
                                                    info("idle", "STOPPED")])
    done = control.converge(plan, plan.instances["alpha"], held={"idle"})
    assert (done.notes, done.failed) == ([], [])
    assert [m for m, _ in fake.calls] == ["supervisor.getAllProcessInfo"]


def test_a_fatal_program_that_up_does_not_start_still_fails_it(plan: Plan, endpoints: dict[str, Any]):
    endpoints["alpha"] = FakeEndpoint(infos=[info("web", "RUNNING", pid=3), info("idle", "FATAL")])
    done = control.converge(plan, plan.instances["alpha"], held=set())
    assert done.failed == ["idle: FATAL (autostart = false: `siteboot start alpha:idle` starts it "
                           "again)"]
    # stopped by an operator, it is theirs
    assert control.converge(plan, plan.instances["alpha"], held={"idle"}).failed == []


# --------------------------------------------------------------------------------------------
# The end of a failing program's log, where its error is


def write_log(plan: Plan, instance: str, process: str, text: str, stream: str = "stderr") -> None:
    program = next(p for p in plan.instances[instance].programs if process in p.process_names())
    path = program.log_path(process, stream)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


TRACEBACK = ("Traceback (most recent call last):\n"
             "  File \"app.py\", line 1, in <module>\n"
             "\x1b[31mModuleNotFoundError\x1b[0m: No module named 'flask'\x07\n"
             + "can't open file '/srv/app.py'\n" * 3 + "\n")


def test_status_shows_the_end_of_a_failing_programs_own_log(plan, endpoints):
    endpoints["beta"] = running_beta("FATAL")
    write_log(plan, "beta", "worker_01", "old line\n" * 20 + TRACEBACK)
    write_log(plan, "beta", "worker_00", "a healthy one's log is not read\n")
    (beta,) = control.status(plan, "beta").instances
    healthy, failing = beta.programs
    assert healthy.log_tail is None
    assert failing.log_tail is not None
    assert failing.log_tail.stream == "stderr"
    # colours and control characters are taken out; the same line at each retry comes once
    assert failing.log_tail.lines == [
        "old line  [20 times]", "Traceback (most recent call last):",
        "  File \"app.py\", line 1, in <module>",
        "ModuleNotFoundError: No module named 'flask'",
        "can't open file '/srv/app.py'  [3 times]"]
    assert failing.as_json()["log_tail"] == {"stream": "stderr", "lines": failing.log_tail.lines}
    # the owner reads the file: supervisord is asked nothing more
    assert not [m for m, _ in endpoints["beta"].calls if "tail" in m]


def test_with_redirect_stderr_the_tail_comes_from_stdout(short_dir, endpoints):
    plan = plan_from(SITE.format(base=short_dir).replace(
        "stopwaitsecs = 5", "stopwaitsecs = 5\nredirect_stderr = true"), short_dir)
    endpoints["beta"] = running_beta("BACKOFF")
    write_log(plan, "beta", "worker_01", "boom\n", stream="stdout")
    (beta,) = control.status(plan, "beta").instances
    assert beta.programs[1].log_tail == statusreport.LogTail("stdout", ["boom"])


def test_a_granted_member_gets_the_tail_from_supervisord(plan, endpoints):
    fake = endpoints["gamma"] = FakeEndpoint(infos=[info("web2", "BACKOFF")])
    fake.tails[("web2:web2", 0, 4096)] = ["ImportError: no app\n", 120, False]
    (gamma,) = control.status(plan, "gamma").instances
    assert gamma.programs[0].log_tail == statusreport.LogTail("stderr", ["ImportError: no app"])


def test_start_that_goes_fatal_shows_why(plan, endpoints):
    endpoints["alpha"] = FakeEndpoint(scripts={"web": ["STARTING", "BACKOFF", "FATAL"]})
    write_log(plan, "alpha", "web", "Address already in use\n")
    (row,) = control.control(plan, "start", ["web"]).outcomes
    assert (row.ok, row.message) == (False, "FATAL: exited too quickly")
    assert row.log_tail == statusreport.LogTail("stderr", ["Address already in use"])
    assert row.as_json()["log_tail"] == {"stream": "stderr", "lines": ["Address already in use"]}


def test_up_shows_why_a_program_would_not_start(plan, endpoints):
    endpoints["alpha"] = FakeEndpoint(infos=[info("web", "EXITED")],
                                      scripts={"web": ["STARTING", "BACKOFF", "FATAL"]})
    write_log(plan, "alpha", "web", "SyntaxError: invalid syntax\n")
    done = control.converge(plan, plan.instances["alpha"], held=set())
    assert done.tails == {"web": statusreport.LogTail("stderr", ["SyntaxError: invalid syntax"])}
