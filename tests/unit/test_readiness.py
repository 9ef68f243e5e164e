"""depends_on, ready, ready_timeout and restart: validation, rendering, and the waves siteboot
acts in (with fakes for supervisord, probes and the clock)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from siteboot import readiness
from siteboot.control import ControlResult, ProcessOutcome
from siteboot.errors import STATUS_OK, STATUS_WARNING
from siteboot.health import NOT_READY, READY, UNKNOWN, health_of
from siteboot.keys import PLACEHOLDER_HASH
from siteboot.render import render_instance
from siteboot.site import parse_site
from siteboot.statusreport import ProgramStatus
from tests.helpers import plan_from, supervisor_parse

SITE = """
[site]
name = "t"
envs = ["dev"]
runtime_dir = "{base}/run"
state_dir = "{base}/state"

[instances.a]
port = {{ dev = 40001 }}

[instances.b]
port = {{ dev = 40002 }}

[programs.db]
instance = "b"
command = "db --port {{port}}"
port = {{ dev = 41001 }}
ready = {{ tcp = "{{port}}" }}
ready_timeout = 5

[programs.auth]
instance = "a"
command = "auth"
depends_on = ["db"]

[programs.rest]
instance = "a"
command = "rest --port {{port}}"
port = {{ dev = 41002 }}
depends_on = ["auth", "db"]
ready = {{ http = "http://127.0.0.1:{{port}}/health", status = 200 }}
restart = {{ backoff_max = 30 }}

[programs.lone]
instance = "a"
command = "lone"
priority = 5
"""


def make_plan(tmp_path: Path, extra: str = "") -> Any:
    return plan_from(SITE.format(base=tmp_path) + extra, tmp_path)


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "t.toml"
    path.write_text(text)
    _, problems = parse_site(path)
    return [str(p) for p in problems if p.level == "error"]


# ------------------------------------------------------------------------------------------
# The site file


def test_unknown_dependencies_and_cycles_are_refused_with_file_and_line(tmp_path):
    text = SITE.format(base=tmp_path).replace('depends_on = ["auth", "db"]',
                                              'depends_on = ["auht", "db"]')
    text += '\n[programs.x]\ninstance = "a"\ncommand = "x"\ndepends_on = ["y"]\n' \
            '\n[programs.y]\ninstance = "a"\ncommand = "y"\ndepends_on = ["x"]\n'
    errors = errors_of(tmp_path, text)
    lines = text.splitlines()
    rest_line = lines.index('depends_on = ["auht", "db"]') + 1
    x_line = lines.index('depends_on = ["y"]') + 1
    assert errors == [
        f"{tmp_path}/t.toml:{rest_line}: [programs.rest] depends_on: depends on 'auht', which is "
        "not a program of the site (did you mean 'auth'?)",
        f"{tmp_path}/t.toml:{x_line}: [programs.x] depends_on: dependency cycle: x -> y -> x "
        "(nothing in it could ever start)"]


@pytest.mark.parametrize(("program", "message"), [
    ('ready = { tcp = "{port}" }', "'ready.tcp' uses {port} but the program has no 'port' table"),
    ('ready = { command = "check {prot}" }', "uses undefined placeholder {prot}"),
    ('ready = "{port}"', "'ready': must be a table"),
    ("restart = { backoff_max = 0 }", "'restart.backoff_max' must be a number of seconds"),
    ("restart = 30", "'restart' must be a table like { backoff_max = 300 }"),
    ("ready_timeout = 0", "'ready_timeout' must be at least 1"),
    ('depends_on = ["z"]', "depends on 'z', which is not a program of the site"),
    ('depends_on = ["x"]', "dependency cycle: x -> x"),
])
def test_bad_values_are_named(tmp_path, program, message):
    text = (f'[site]\nname = "t"\n[instances.a]\nport = {{ dev = 40001, staging = 40002, '
            f'prod = 40003 }}\n[programs.x]\ninstance = "a"\ncommand = "x"\n{program}\n')
    assert any(message in e for e in errors_of(tmp_path, text)), errors_of(tmp_path, text)


def test_the_listener_name_is_reserved(tmp_path):
    text = ('[site]\nname = "t"\n[instances.a]\nport = { dev = 40001, staging = 40002, '
            'prod = 40003 }\n[programs.siteboot-healer]\ninstance = "a"\ncommand = "x"\n')
    assert any("siteboot's event listener" in e for e in errors_of(tmp_path, text))


def test_the_plan_fills_probe_placeholders_and_tells_what_waits(tmp_path):
    plan = make_plan(tmp_path)
    a, b = plan.instances["a"], plan.instances["b"]
    me = b.user
    # a probe of the program's own port names its account: nobody else may hold that port
    assert b.program("db").probe == {"tcp": "41001", "owner": me}
    rest = a.program("rest")
    assert rest.probe == {"http": "http://127.0.0.1:41002/health", "status": 200, "owner": me}
    assert rest.backoff_max == 30
    assert (rest.autostart, rest.starts_with_supervisord) == (True, False)
    assert a.program("lone").starts_with_supervisord
    assert a.heals
    assert b.heals
    assert a.health_path == tmp_path / "state" / "health-a.json"


def test_dependants_are_rendered_not_autostarted_and_a_listener_runs(tmp_path):
    plan = make_plan(tmp_path)
    text = render_instance(plan, plan.instances["a"], PLACEHOLDER_HASH, True, None)
    path = tmp_path / "a.conf"
    path.write_text(text)
    opts = supervisor_parse(path)
    configs = {pc.name: pc for g in opts.process_group_configs for pc in g.process_configs}
    assert (configs["auth"].autostart, configs["rest"].autostart, configs["lone"].autostart) == \
        (False, False, True)
    listener = next(g for g in opts.process_group_configs if g.name == "siteboot-healer")
    assert {e.__name__ for e in listener.pool_events} == {"ProcessStateEvent", "Tick5Event"}
    command = listener.process_configs[0].command
    assert "-I -m siteboot.healer" in command
    assert command.endswith(str(plan.instances["a"].healer_spec_path))


def test_a_site_without_the_new_keys_renders_as_before(tmp_path):
    plan = plan_from(f"""
        [site]
        name = "t"
        envs = ["dev"]
        runtime_dir = "{tmp_path}/run"

        [instances.a]
        port = {{ dev = 40001 }}

        [programs.web]
        instance = "a"
        command = "web"
        """, tmp_path)
    text = render_instance(plan, plan.instances["a"], PLACEHOLDER_HASH, True, None)
    assert "eventlistener" not in text
    assert "autostart = true" in text
    assert not plan.instances["a"].heals


# ------------------------------------------------------------------------------------------
# Waiting and starting in order (fakes)


class World:
    """supervisord states per instance, probes that pass from a given time, and a clock."""

    def __init__(self, plan: Any, states: dict[str, dict[str, str]],
                 ready_at: dict[str, float]) -> None:
        self.plan = plan
        self.states = states
        self.ready_at = ready_at  # probe target -> clock time from which it passes
        self.now = 0.0
        self.started: list[tuple[float, str, list[str]]] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def infos(self, inst: Any) -> list[dict[str, Any]] | str:
        if inst.name not in self.states:
            return "nothing is listening"
        return [{"name": n, "statename": s, "spawnerr": ""} for n, s in self.states[inst.name].items()]

    def check(self, probe: Any) -> str | None:
        target = next(iter(probe.values()))
        return None if self.now >= self.ready_at.get(target, float("inf")) else "connection refused"

    def apply(self, inst: Any, processes: list[str]) -> dict[str, tuple[bool, str]]:
        self.started.append((self.now, inst.name, list(processes)))
        for process in processes:
            self.states[inst.name][process] = "RUNNING"
        return {p: (True, "started") for p in processes}

    def start(self, instances: list[str], held: dict[str, set[str]] | None = None) -> Any:
        return readiness.start_dependants(self.plan, instances, held or {}, infos=self.infos,
                                          check=self.check, clock=self.clock, sleep=self.sleep,
                                          apply=self.apply)


def test_each_program_starts_once_what_it_depends_on_is_ready(tmp_path):
    plan = make_plan(tmp_path)
    world = World(plan, {"a": {"auth": "STOPPED", "rest": "STOPPED", "lone": "RUNNING"},
                         "b": {"db": "RUNNING"}},
                  ready_at={"41001": 2.0, "http://127.0.0.1:41002/health": 0})
    results = world.start(["a", "b"])
    assert [(inst, procs) for _, inst, procs in world.started] == [("a", ["auth"]), ("a", ["rest"])]
    assert world.started[0][0] >= 2.0  # after db's port accepted
    assert results["a"].failed == []
    assert results["a"].notes == ["started auth once what it depends on was ready",
                                  "started rest once what it depends on was ready"]


def test_a_readiness_timeout_stops_the_chain_and_names_the_probe(tmp_path):
    plan = make_plan(tmp_path)
    world = World(plan, {"a": {"auth": "STOPPED", "rest": "STOPPED", "lone": "RUNNING"},
                         "b": {"db": "RUNNING"}}, ready_at={})
    results = world.start(["a"])
    assert world.started == []
    assert 5.0 <= world.now < 6.0  # db's ready_timeout, waited once
    why = "b:db not ready after 5 s: tcp 127.0.0.1:41001: connection refused"
    assert results["a"].failed == [f"auth: not started: {why}", f"rest: not started: {why}"]


def test_running_held_and_unwanted_dependants_are_left_alone(tmp_path):
    plan = make_plan(tmp_path, "")
    world = World(plan, {"a": {"auth": "RUNNING", "rest": "FATAL", "lone": "RUNNING"},
                         "b": {"db": "RUNNING"}}, ready_at={})
    results = world.start(["a"], held={"a": {"rest"}})
    assert world.started == []  # nothing to start, so nothing is waited for
    assert world.now == 0
    assert results["a"].failed == []


def test_a_dependency_of_an_instance_that_cannot_be_read_is_judged_by_its_probe(tmp_path):
    plan = make_plan(tmp_path)
    world = World(plan, {"a": {"auth": "STOPPED", "rest": "RUNNING", "lone": "RUNNING"}},
                  ready_at={"41001": 1.0})
    world.start(["a"])
    assert [procs for _, _, procs in world.started] == [["auth"]]


def test_await_ready_reports_each_program_that_is_not(tmp_path):
    plan = make_plan(tmp_path)
    world = World(plan, {"a": {"auth": "BACKOFF", "rest": "RUNNING", "lone": "RUNNING"}},
                  ready_at={"http://127.0.0.1:41002/health": 0})
    late = readiness.await_ready(plan, [(plan.instances["a"], plan.instances["a"].program(n))
                                        for n in ("auth", "rest")], {"auth": 3, "rest": 3},
                                 world.infos, world.check, world.clock, world.sleep)
    assert [str(m) for m in late] == ["a:auth not ready after 3 s: auth is BACKOFF"]


def test_readiness_of_a_program_without_a_probe_and_unknown_state(tmp_path):
    plan = make_plan(tmp_path)
    auth = plan.instances["a"].program("auth")
    assert readiness.readiness(auth, "no key") == \
        "its state cannot be read (no key) and it has no ready probe"
    assert readiness.readiness(auth, []) == "not loaded in its supervisord"
    assert readiness.readiness(auth, [{"name": "auth", "statename": "RUNNING"}]) is None


# ------------------------------------------------------------------------------------------
# start / stop / restart of several, and down


def test_several_programs_act_in_waves_stopping_in_reverse(tmp_path, monkeypatch):
    plan = make_plan(tmp_path)
    steps: list[tuple[str, str, list[str]]] = []

    def act(plan: Any, step: str, inst: str, processes: list[str]) -> list[ProcessOutcome]:
        steps.append((step, inst, sorted(processes)))
        return [ProcessOutcome(inst, p, True, "stopped" if step == "stop" else "started")
                for p in processes]

    monkeypatch.setattr(readiness, "_act", act)
    monkeypatch.setattr(readiness, "await_ready", lambda *a, **k: [])
    result = readiness.control_in_waves(plan, "restart", ["all"])
    # lone (priority 5) starts before db (999) and stops after it
    assert steps == [("stop", "a", ["rest"]), ("stop", "a", ["auth"]), ("stop", "b", ["db"]),
                     ("stop", "a", ["lone"]),
                     ("start", "a", ["lone"]), ("start", "b", ["db"]), ("start", "a", ["auth"]),
                     ("start", "a", ["rest"])]
    assert {o.message for o in result.outcomes} == {"restarted"}
    assert len(result.outcomes) == 4


def test_a_start_waits_for_dependencies_among_the_targets(tmp_path, monkeypatch):
    plan = make_plan(tmp_path)
    monkeypatch.setattr(readiness, "_act", lambda plan, step, inst, procs: [
        ProcessOutcome(inst, p, True, "started") for p in procs])
    monkeypatch.setattr(readiness, "await_ready", lambda plan, items, timeouts, **k: [
        readiness.NotReady("b", "db", 5, "tcp 127.0.0.1:41001: connection refused")]
        if any(p.name == "db" for _, p in items) else [])
    result = readiness.control_in_waves(plan, "start", ["db", "auth"])
    outcomes = {o.process: (o.ok, o.message) for o in result.outcomes}
    assert outcomes == {"db": (True, "started"), "auth": (
        False, "not started: b:db not ready after 5 s: tcp 127.0.0.1:41001: connection refused")}


def test_one_wave_is_plain_control(tmp_path, monkeypatch):
    plan = make_plan(tmp_path)
    calls = []

    def control(plan: Any, action: str, names: list[str]) -> ControlResult:
        calls.append(names)
        return ControlResult([])

    monkeypatch.setattr(readiness, "control", control)
    readiness.control_in_waves(plan, "stop", ["auth"])
    assert calls == [["auth"]]


def test_down_stops_dependants_before_what_they_depend_on(tmp_path, monkeypatch):
    plan = make_plan(tmp_path)
    steps = []

    def act(plan: Any, step: str, inst: str, processes: list[str]) -> list[ProcessOutcome]:
        steps.append((inst, processes))
        return [ProcessOutcome(inst, p, True, "stopped") for p in processes]

    monkeypatch.setattr(readiness, "_act", act)
    notes = readiness.stop_dependants_first(plan)
    assert steps == [("a", ["rest"]), ("a", ["auth"]), ("b", ["db"])]
    assert notes["a"] == ["stopped rest in dependency order (dependants first)",
                          "stopped auth in dependency order (dependants first)"]


def test_down_on_one_host_leaves_what_runs_on_another_to_that_host(tmp_path, monkeypatch):
    monkeypatch.setenv("SITEBOOT_HOST", "cori20.nersc.gov")
    plan = plan_from(SITE.format(base=tmp_path).replace(
        "[instances.b]\n", '[instances.b]\nhost = "jaws.lbl.gov"\n'), tmp_path)
    steps = []

    def act(plan: Any, step: str, inst: str, processes: list[str]) -> list[ProcessOutcome]:
        steps.append((inst, processes))
        return [ProcessOutcome(inst, p, True, "stopped") for p in processes]

    monkeypatch.setattr(readiness, "_act", act)
    readiness.stop_dependants_first(plan)
    assert steps == [("a", ["rest"]), ("a", ["auth"])]  # b's db is not asked from here


# ------------------------------------------------------------------------------------------
# What status makes of the healer's records


@pytest.mark.parametrize(("probed", "state", "record", "expected"), [
    (False, "RUNNING", None, READY),
    (False, "FATAL", None, NOT_READY),
    (True, "RUNNING", None, UNKNOWN),
    (True, "RUNNING", {"pid": 7, "health": "ready", "checked_at": 995.0}, READY),
    (True, "RUNNING", {"pid": 7, "health": "not ready", "checked_at": 995.0, "detail": "HTTP 500"},
     NOT_READY),
    (True, "RUNNING", {"pid": 6, "health": "ready", "checked_at": 995.0}, UNKNOWN),  # older run
    (True, "RUNNING", {"pid": 7, "health": "ready", "checked_at": 900.0}, UNKNOWN),  # stale
    (True, "RUNNING", {"pid": 7, "health": 3, "checked_at": "x"}, UNKNOWN),  # garbage
])
def test_health_from_records(probed, state, record, expected):
    assert health_of(probed, state, 7, record, 1000.0).state == expected


def test_backoff_state_and_an_unhealthy_running_program_warns():
    waiting = health_of(False, "FATAL", None, {"attempts": 3, "next_try": 1004.4}, 1000.0)
    assert (waiting.attempts, waiting.next_try_s) == (3, 4)
    assert waiting.backoff_json() == {"attempts": 3, "next_try_s": 4}
    row = ProgramStatus("web", "t-dev", "RUNNING", 7, 10, None, "", True,
                        health=health_of(True, "RUNNING", 7, {"pid": 7, "health": "not ready",
                                                              "checked_at": 999.0}, 1000.0))
    assert row.severity == STATUS_WARNING
    assert row.as_json()["health"] == "not ready"
    row.health = health_of(True, "RUNNING", 7, None, 1000.0)
    assert row.severity == STATUS_OK  # unknown is not a verdict


def test_a_dependency_that_did_not_start_is_not_waited_for(tmp_path, monkeypatch):
    plan = make_plan(tmp_path)
    monkeypatch.setattr(readiness, "_act", lambda plan, step, inst, procs: [
        ProcessOutcome(inst, p, p != "db", "started" if p != "db" else "FATAL: exited too quickly")
        for p in procs])

    def never(*args: Any, **kwargs: Any) -> list[readiness.NotReady]:
        raise AssertionError("waited for a dependency that did not start")

    monkeypatch.setattr(readiness, "await_ready", never)
    result = readiness.control_in_waves(plan, "start", ["db", "auth"])
    outcomes = {o.process: (o.ok, o.message) for o in result.outcomes}
    assert outcomes["auth"] == (False, "not started: db did not start: FATAL: exited too quickly")


def test_the_listener_spec_says_what_to_heal_and_what_waits(tmp_path):
    from siteboot.healer import spec_for

    plan = make_plan(tmp_path)
    spec = spec_for(plan, plan.instances["a"])
    assert spec["health_path"] == str(tmp_path / "state" / "health-a.json")
    assert spec["stops_path"] == str(tmp_path / "state" / "operator-stops.json")
    rest = spec["programs"]["rest"]
    assert (rest["backoff_max"], rest["start_when_ready"]) == (30, True)
    assert rest["depends_on"] == [
        {"name": "auth", "local": True, "processes": ["auth"], "probe": None},
        {"name": "db", "local": False, "processes": ["db"],
         "probe": {"tcp": "41001", "owner": plan.instances["b"].user}}]
    assert spec["programs"]["lone"]["start_when_ready"] is False
