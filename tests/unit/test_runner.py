"""gitlab-runner: the [runner] table, its plan, the supervised program, and how a runner is
identified (fakes of the process table; real processes only where /proc itself is under test)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from siteboot import runner as runner_mod
from siteboot.errors import EXIT_FAILED, EXIT_USAGE, SitebootError, UsageError
from siteboot.keys import PLACEHOLDER_HASH
from siteboot.plan import Plan, make_plan
from siteboot.render import render_instance
from siteboot.runner import (
    ProcessView,
    find_runners,
    identity,
    is_runner,
    processes_of,
)
from siteboot.site import load_site, parse_site
from tests.helpers import STAND_IN_RUNNER as STAND_IN
from tests.helpers import plan_from, supervisor_parse, wait_until
from tests.helpers import runner_site_text as site_text


def fake_binary(folder: Path, name: str = "gitlab-runner") -> Path:
    path = folder / "bin" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF not really")
    path.chmod(0o755)
    return path


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    return fake_binary(tmp_path)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "config.toml"
    path.parent.mkdir()
    path.write_text("concurrent = 1\n")
    return path


def detached_plan(folder: Path, executable: Path | str, config: Path, extra: str = "",
                  instance_extra: str = "") -> Plan:
    text = site_text(folder, f'instance = "main"\nmode = "detached"\nexecutable = "{executable}"\n'
                     f'config = "{config}"\ndrain_timeout = 30\n{extra}', instance_extra)
    plan: Plan = plan_from(text, folder)
    return plan


def view(*cmdline: str, exe: str = "", cwd: str = "", uid: int | None = None, pid: int = 4242,
         created: float = 1000.0, config_env: str | None = None) -> ProcessView:
    return ProcessView(pid, os.geteuid() if uid is None else uid, exe, tuple(cmdline), cwd, created,
                       config_env)


# --------------------------------------------------------------------------------------------
# The site model


def test_defaults(write_site):
    site = load_site(write_site(site_text(Path("/tmp/x"), 'instance = "main"')))
    assert site.runner is not None
    assert site.runner.mode == "supervised"
    assert site.runner.executable == "gitlab-runner"
    assert site.runner.config == "~/.gitlab-runner/config.toml"
    assert site.runner.working_directory is None
    assert site.runner.drain_timeout == 7200


def test_a_site_without_runner_says_so(write_site):
    plan = make_plan(load_site(write_site()), "dev")
    assert plan.runner is None
    with pytest.raises(UsageError, match=r"site t declares no \[runner\]") as info:
        plan.require_runner()
    assert info.value.exit_code == EXIT_USAGE


def test_every_runner_problem_at_once(write_site):
    path = write_site(site_text(Path("/tmp/x"), '''
        instance = "mian"
        mode = "nohup"
        executable = "./gitlab-runner"
        config = "{home}/config.toml"
        working_directory = "builds"
        drain_timeout = -1
        host = "login01"
        '''))
    _, problems = parse_site(path)
    text = "\n".join(str(p) for p in problems)
    assert "instance 'mian' is not declared (did you mean 'main'?)" in text
    assert "'mode' must be one of supervised, detached, not 'nohup'" in text
    assert "'executable' must be an absolute path (or start with ~), or a name on PATH" in text
    assert "'config' uses undefined placeholder {home}" in text
    assert "'working_directory' must be an absolute path" in text
    assert "'drain_timeout' must be at least 0, not -1" in text
    assert "unknown key 'host'" in text
    assert all("[runner]" in str(p) for p in problems)
    assert all(str(path) in str(p) for p in problems)


@pytest.mark.parametrize(("mode", "refused"), [("supervised", True), ("detached", False)])
def test_a_supervised_runner_cannot_share_its_program_name(write_site, mode, refused):
    path = write_site(site_text(Path("/tmp/x"), f'instance = "main"\nmode = "{mode}"\n', extra='''
        [programs.gitlab-runner]
        instance = "main"
        command = "sleep 1"
        '''))
    errors = [str(p) for p in parse_site(path)[1] if p.level == "error"]
    assert any("[programs.gitlab-runner] exists already" in e for e in errors) is refused
    assert len(errors) == int(refused)


# --------------------------------------------------------------------------------------------
# The plan


def test_paths_are_filled_and_records_live_in_the_owners_state_dir(tmp_path: Path, binary: Path):
    plan = plan_from(site_text(tmp_path, f'''
        instance = "main"
        mode = "detached"
        executable = "{binary}"
        config = "{{state_dir}}/runner-{{env}}/config.toml"
        working_directory = "~/builds-{{site}}"
        drain_timeout = 60
        '''), tmp_path)
    runner = plan.require_runner()
    owner = plan.instances["main"]
    assert runner.user == owner.user == plan.invoker
    assert runner.state_dir == owner.state_dir == tmp_path / "state"
    assert runner.config == owner.state_dir / "runner-dev" / "config.toml"
    assert runner.working_directory == runner.cwd == Path(os.path.expanduser("~/builds-t"))
    assert runner.resolved == binary
    assert runner.drain_timeout == 60
    assert runner.record_path.parent == runner.log_path.parent == owner.state_dir
    assert runner.lock_path.parent == owner.state_dir / "locks"
    assert runner.argv() == [str(binary), "run", "--config", str(runner.config),
                             "--working-directory", str(runner.working_directory)]
    assert [p.name for p in owner.programs] == []  # detached: no program


def test_a_bare_executable_is_looked_up_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    binary = fake_binary(tmp_path)
    monkeypatch.setenv("PATH", str(binary.parent))
    runner = plan_from(site_text(tmp_path, 'instance = "main"'), tmp_path).require_runner()
    assert runner.executable == "gitlab-runner"
    assert runner.resolved == binary
    assert runner.cwd == Path(os.path.expanduser("~"))  # no working_directory: the owner's home
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    runner = plan_from(site_text(tmp_path, 'instance = "main"'), tmp_path).require_runner()
    assert runner.resolved is None
    assert runner.config == Path(os.path.expanduser("~/.gitlab-runner/config.toml"))


def test_supervised_runner_is_one_more_program(tmp_path: Path, binary: Path):
    plan = plan_from(site_text(tmp_path, f'''
        instance = "main"
        executable = "{binary}"
        config = "/srv/runner dir/config.toml"
        drain_timeout = 900
        '''), tmp_path)
    (program,) = plan.instances["main"].programs
    assert program.name == "gitlab-runner"
    assert program.command == f"{binary} run --config '/srv/runner dir/config.toml'"
    assert program.directory == os.path.expanduser("~")
    assert program.options["stopsignal"] == "QUIT"
    assert program.options["stopwaitsecs"] == 900
    assert program.options["autorestart"] == "true"
    assert program.options["redirect_stderr"] is True
    assert program.port is None


def test_supervised_runner_renders_and_parses(tmp_path: Path, binary: Path):
    from supervisor.datatypes import RestartUnconditionally

    plan = plan_from(site_text(tmp_path, f'''
        instance = "main"
        executable = "{binary}"
        config = "{{state_dir}}/config 100%.toml"
        working_directory = "/srv/builds"
        drain_timeout = 3600
        '''), tmp_path)
    inst = plan.instances["main"]
    path = tmp_path / "main.conf"
    path.write_text(render_instance(plan, inst, PLACEHOLDER_HASH, True, None))
    (group,) = supervisor_parse(path).process_group_configs
    (pc,) = group.process_configs
    assert pc.name == "gitlab-runner"
    assert pc.command == inst.programs[0].command
    assert pc.stopsignal == signal.SIGQUIT
    assert pc.stopwaitsecs == 3600
    assert pc.autorestart is RestartUnconditionally
    assert pc.directory == "/srv/builds"
    assert pc.redirect_stderr


def test_supervised_runner_values_supervisord_cannot_carry_are_refused(tmp_path: Path, binary: Path):
    from siteboot.errors import RenderError

    plan = plan_from(site_text(tmp_path, f'instance = "main"\nexecutable = "{binary}"\n'
                               'config = "/srv/a ;b/config.toml"'), tmp_path)
    with pytest.raises(RenderError, match=r"gitlab-runner.*whitespace followed by"):
        render_instance(plan, plan.instances["main"], PLACEHOLDER_HASH, True, None)


def test_the_port_matrix_and_check_ignore_the_runner(tmp_path: Path, binary: Path):
    from siteboot import ops

    path = tmp_path / "t.toml"
    path.write_text(site_text(tmp_path, f'instance = "main"\nexecutable = "{binary}"'))
    assert ops.ports(load_site(path)).ports == {"supervisord-main": {"dev": 40001}}
    result = ops.check([path])
    assert result.errors == []


# --------------------------------------------------------------------------------------------
# Identity (fake process tables)


@pytest.fixture
def ident_of(tmp_path: Path, binary: Path, config: Path) -> Any:
    def make(executable: Path = binary, cfg: Path = config) -> Any:
        return identity(detached_plan(tmp_path, executable, cfg).require_runner())

    return make


def identified(ident: Any, v: ProcessView) -> bool:
    return is_runner(v, ident)


# Each case: argv and what /proc says (exe, cwd); {B} is the binary, {C} the config, {T} the
# folder both are in (`bin/gitlab-runner` and `etc/config.toml` relative to it).
IDENTITY_CASES = [
    ("--config X", ["{B}", "run", "--config", "{C}"], "{B}", "", True),
    ("-c X", ["{B}", "run", "-c", "{C}"], "{B}", "", True),
    ("--config=X", ["{B}", "run", "--config={C}"], "{B}", "", True),
    ("-c=X", ["{B}", "run", "-c={C}"], "{B}", "", True),
    ("other flags first", ["{B}", "run", "--working-directory", "/w", "-c", "{C}"], "{B}", "", True),
    # JAWS on LRC: nohup ./usr/bin/gitlab-runner run -c configuration/config.toml &
    ("relative exe and config", ["./bin/gitlab-runner", "run", "-c", "etc/config.toml"], "", "{T}", True),
    ("found on PATH", ["gitlab-runner", "run", "-c", "{C}"], "{B}", "", True),
    ("binary replaced by an upgrade", ["gitlab-runner", "run", "-c", "{C}"], "{B} (deleted)", "", True),
    ("global flag", ["{B}", "--debug", "run", "-c", "{C}"], "{B}", "", True),
    ("global flag with a value", ["{B}", "--log-level", "debug", "run", "-c", "{C}"], "{B}", "", True),
    ("run as a flag value", ["{B}", "--log-level", "run", "register", "-c", "{C}"], "{B}", "", False),
    ("register", ["{B}", "register", "-c", "{C}"], "{B}", "", False),
    ("register named run", ["{B}", "register", "--name", "run", "-c", "{C}"], "{B}", "", False),
    ("run-single", ["{B}", "run-single", "-c", "{C}"], "{B}", "", False),
    ("another config", ["{B}", "run", "-c", "{T}/other.toml"], "{B}", "", False),
    ("the last config counts", ["{B}", "run", "-c", "{C}", "-c", "/other.toml"], "{B}", "", False),
    ("relative config elsewhere", ["{B}", "run", "-c", "etc/config.toml"], "{B}", "/", False),
    ("relative config, cwd unknown", ["{B}", "run", "-c", "etc/config.toml"], "{B}", "", False),
    ("an editor on the binary", ["/usr/bin/vim", "{B}", "run", "-c", "{C}"], "/usr/bin/vim", "", False),
    ("a shell's text", ["sh", "-c", "{B} run -c {C}"], "/bin/sh", "", False),
    ("grep", ["grep", "gitlab-runner run"], "/bin/grep", "", False),
    ("another binary", ["/opt/gitlab-runner", "run", "-c", "{C}"], "/opt/gitlab-runner", "", False),
]


@pytest.mark.parametrize(("argv", "exe", "cwd", "expected"), [
    pytest.param(argv, exe, cwd, expected, id=name) for name, argv, exe, cwd, expected in IDENTITY_CASES])
def test_identity_reads_argv_like_gitlab_runner(ident_of, binary, config, tmp_path, argv, exe, cwd,
                                                expected):
    def fill(text: str) -> str:
        return text.format(B=binary, C=config, T=tmp_path)

    process = view(*(fill(a) for a in argv), exe=fill(exe), cwd=fill(cwd))
    assert identified(ident_of(), process) is expected


def test_another_accounts_process_is_never_the_runner(ident_of, binary, config):
    other = view(str(binary), "run", "-c", str(config), exe=str(binary), uid=os.geteuid() + 1)
    assert not identified(ident_of(), other)


def test_symlinked_executable_and_config_compare_by_real_path(ident_of, binary, config, tmp_path):
    (tmp_path / "current").symlink_to(binary)
    (tmp_path / "conf.toml").symlink_to(config)
    ident = ident_of(tmp_path / "current", tmp_path / "conf.toml")
    assert identified(ident, view(str(binary), "run", "-c", str(config), exe=str(binary)))
    assert identified(ident, view("current", "run", "-c", "conf.toml", exe=str(binary), cwd=str(tmp_path)))


def test_without_config_flag_the_runner_reads_config_file_or_its_default(ident_of, binary, tmp_path):
    ident = ident_of(cfg=tmp_path / "etc" / "config.toml")
    bare = view("gitlab-runner", "run", exe=str(binary), cwd="/")
    assert not identified(ident, bare)
    env = view("gitlab-runner", "run", exe=str(binary), cwd=str(tmp_path), config_env="etc/config.toml")
    assert identified(ident, env)
    flag_wins = view("gitlab-runner", "run", "-c", "/x.toml", exe=str(binary), config_env=str(tmp_path))
    assert not identified(ident, flag_wins)
    default = ident_of(cfg=Path(ident.default_config))
    assert identified(default, bare)  # JAWS on Cori: `nohup ./gitlab-runner run &`


@pytest.mark.parametrize("prefix", [("python3",), ("/usr/bin/env", "python3"),
                                    ("/usr/bin/python3", "-u")])
def test_a_script_runs_after_its_interpreter(ident_of, config, prefix):
    ident = ident_of(STAND_IN)
    assert ident.interpreter == ("env", "python3")
    assert identified(ident, view(*prefix, str(STAND_IN), "run", "-c", str(config), exe="/usr/bin/python3"))
    assert not identified(ident, view("vim", str(STAND_IN), "run", "-c", str(config), exe="/usr/bin/vim"))
    assert not identified(ident, view("python3", "-c", "x", str(STAND_IN), "run", "-c", str(config)))


def test_find_runners_oldest_first(tmp_path, binary, config):
    runner = detached_plan(tmp_path, binary, config).require_runner()
    table = [view(str(binary), "run", "-c", str(config), exe=str(binary), pid=9, created=20.0),
             view(str(binary), "register", exe=str(binary), pid=8, created=5.0),
             view(str(binary), "run", "-c", str(config), exe=str(binary), pid=7, created=10.0)]
    assert [v.pid for v in find_runners(runner, lambda uid: table)] == [7, 9]


def test_an_executable_not_found_cannot_be_identified(tmp_path, config, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    plan = detached_plan(tmp_path, "gitlab-runner", config)
    with pytest.raises(SitebootError, match="cannot find gitlab-runner on PATH"):
        find_runners(plan.require_runner())
    report = runner_mod.status(plan)
    assert (report.state, report.exit_code) == ("unknown", 3)


# --------------------------------------------------------------------------------------------
# status, revive, drain, stop with a fake process table


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> list[ProcessView]:
    views: list[ProcessView] = []
    monkeypatch.setattr(runner_mod, "processes_of", lambda uid: list(views))
    return views


def test_status_running_not_running_and_doubled(tmp_path, binary, config, table):
    plan = detached_plan(tmp_path, binary, config)
    runner = plan.require_runner()
    report = runner_mod.status(plan)
    assert (report.state, report.exit_code, report.pids) == ("not running", 2, [])
    assert "siteboot runner revive" in report.detail

    now = time.time()
    table.append(view(str(binary), "run", "-c", str(config), exe=str(binary), pid=11, created=now - 50))
    report = runner_mod.status(plan)
    assert (report.state, report.exit_code, report.pids) == ("running", 0, [11])
    assert report.uptime_s is not None
    assert report.uptime_s >= 50
    assert "not started by siteboot" in report.detail

    table.append(view(str(binary), "run", "--config", str(config), exe=str(binary), pid=12, created=now))
    report = runner_mod.status(plan)
    assert (report.state, report.exit_code, report.pids) == ("running", 1, [11, 12])
    assert report.problems == [f"2 runners use {runner.config}: pids 11, 12; drain the newer ones: "
                               "kill -QUIT 12"]
    data = report.as_json()
    assert data["ok"] is False
    assert data["mode"] == "detached"
    assert json.loads(json.dumps(data)) == data


def test_status_tells_what_siteboot_started_and_an_operators_stop(tmp_path, binary, config, table):
    from siteboot.records import mark_stopped

    plan = detached_plan(tmp_path, binary, config)
    runner = plan.require_runner()
    runner.state_dir.mkdir(parents=True)
    runner.record_path.write_text(json.dumps({"pid": 11, "create_time": 1.0, "started_at": "T0"}))
    report = runner_mod.status(plan)
    assert (report.state, report.exit_code) == ("not running", 2)
    assert report.notes == ["last started by siteboot at T0 (pid 11); see its log"]
    mark_stopped(plan.instances["main"], ["gitlab-runner"], stopped=True)
    report = runner_mod.status(plan)
    assert (report.state, report.exit_code) == ("stopped", 0)  # as `siteboot status` counts it
    assert "stopped on purpose" in report.detail
    table.append(view(str(binary), "run", "-c", str(config), exe=str(binary), pid=11))
    assert runner_mod.status(plan).detail == "started by siteboot at T0"


def test_another_accounts_runner(tmp_path, binary, config, table):
    plan = detached_plan(tmp_path, binary, config, instance_extra='user = "nobody"')
    report = runner_mod.status(plan)
    assert (report.state, report.exit_code) == ("not yours", 3)
    assert "owned by nobody" in report.detail
    for action in (runner_mod.revive, runner_mod.drain, runner_mod.stop):
        with pytest.raises(SitebootError, match="owned by nobody: run as nobody") as info:
            action(plan)
        assert info.value.exit_code == EXIT_FAILED
    assert table == []


def test_revive_leaves_a_running_runner_alone(tmp_path, binary, config, table):
    plan = detached_plan(tmp_path, binary, config)
    table.append(view(str(binary), "run", "-c", str(config), exe=str(binary), pid=11))
    outcome = runner_mod.revive(plan)
    assert (outcome.action, outcome.pids, outcome.exit_code) == ("already running", [11], 0)
    table.append(view(str(binary), "run", "-c", str(config), exe=str(binary), pid=12, created=2000.0))
    outcome = runner_mod.revive(plan)
    assert (outcome.action, outcome.pids) == ("already running", [11, 12])
    assert "2 runners use" in outcome.notes[0]
    assert not plan.require_runner().record_path.exists()  # nothing started, nothing recorded


def test_revive_refuses_what_cannot_run(tmp_path, binary, config, table):
    plan = detached_plan(tmp_path, binary, tmp_path / "missing.toml")
    outcome = runner_mod.revive(plan)
    assert (outcome.action, outcome.exit_code) == ("failed", 1)
    assert "config" in outcome.detail
    assert "does not exist: register the runner first" in outcome.detail
    plan = detached_plan(tmp_path, binary, config, extra=f'working_directory = "{tmp_path}/nope"')
    outcome = runner_mod.revive(plan)
    assert outcome.action == "failed"
    assert f"working directory {tmp_path}/nope does not exist" in outcome.detail


def test_an_operators_stop_is_respected_only_when_asked(tmp_path, config, table):
    from siteboot.records import mark_stopped, operator_stops

    exits = tmp_path / "bin" / "gitlab-runner"
    exits.parent.mkdir()
    exits.write_text("#!/bin/sh\necho 'no token'\nexit 3\n")
    exits.chmod(0o755)
    plan = detached_plan(tmp_path, exits, config)
    runner = plan.require_runner()
    mark_stopped(plan.instances["main"], ["gitlab-runner"], stopped=True)
    outcome = runner_mod.revive(plan, respect_operator_stop=True)
    assert outcome.action == "left stopped"
    assert "`siteboot runner revive` starts it" in outcome.detail
    # asked explicitly, it starts: this one exits at once, which is reported with its log
    outcome = runner_mod.revive(plan)
    assert (outcome.action, outcome.exit_code) == ("failed", 1)
    assert "exited with 3 right after its start" in outcome.detail
    assert "no token" in outcome.detail
    assert runner.log_path.stat().st_mode & 0o777 == 0o600
    assert "siteboot runner revive" in runner.log_path.read_text()
    assert operator_stops(plan.instances["main"]) == {"gitlab-runner"}  # failed: still held
    table.append(view(str(exits), "run", "-c", str(config), exe=str(exits), pid=11))
    assert runner_mod.revive(plan, respect_operator_stop=True).action == "already running"
    assert operator_stops(plan.instances["main"]) == {"gitlab-runner"}
    assert runner_mod.revive(plan).action == "already running"
    assert operator_stops(plan.instances["main"]) == set()  # an explicit revive lifts it


def test_drain_and_stop_with_nothing_running_hold_it_stopped(tmp_path, binary, config, table):
    from siteboot.records import operator_stops

    plan = detached_plan(tmp_path, binary, config)
    outcome = runner_mod.drain(plan)
    assert (outcome.action, outcome.exit_code) == ("not running", 0)
    assert operator_stops(plan.instances["main"]) == {"gitlab-runner"}
    assert runner_mod.stop(plan).action == "not running"
    assert operator_stops(plan.instances["main"]) == {"gitlab-runner"}
    assert runner_mod.revive(plan, respect_operator_stop=True).action == "left stopped"


def test_a_supervised_drain_has_no_timeout_of_its_own(tmp_path, binary):
    plan = plan_from(site_text(tmp_path, f'instance = "main"\nexecutable = "{binary}"'), tmp_path)
    with pytest.raises(UsageError, match="stopwaitsecs"):
        runner_mod.drain(plan, timeout=5)


def test_pid_reuse_is_not_the_runner(tmp_path, binary, config):
    """A view whose pid now belongs to another process (other start time) is not signalled."""
    me = psutil.Process()
    assert runner_mod._process(view("x", pid=me.pid, created=me.create_time())) is not None
    assert runner_mod._process(view("x", pid=me.pid, created=me.create_time() - 60)) is None


# --------------------------------------------------------------------------------------------
# /proc itself


def test_processes_of_reads_what_psutil_reads(spawn, tmp_path, config):
    proc = spawn(str(STAND_IN), "run", "--config", str(config))
    plan = detached_plan(tmp_path, STAND_IN, config)
    (found,) = wait_until(lambda: find_runners(plan.require_runner()))
    assert found.pid == proc.pid
    ps = psutil.Process(proc.pid)
    assert found.cmdline == tuple(ps.cmdline())
    assert found.exe == ps.exe()
    assert found.cwd == ps.cwd()
    assert found.create_time == pytest.approx(ps.create_time(), abs=0.01)
    assert found.uid == ps.uids().real
    assert all(v.uid == os.getuid() for v in processes_of(os.getuid()))


def test_config_file_from_the_environment(spawn, tmp_path, config):
    proc = spawn("env", f"CONFIG_FILE={config}", str(STAND_IN), "run")
    plan = detached_plan(tmp_path, STAND_IN, config)
    (found,) = wait_until(lambda: find_runners(plan.require_runner()))
    assert found.pid == proc.pid
    assert found.config_env == str(config)


def test_status_stays_off_the_heavy_imports(tmp_path, config):
    """`siteboot status` will show the runner: its status may not pull in psutil and friends."""
    import subprocess
    import sys

    plan_path = tmp_path / "t.toml"
    plan_path.write_text(site_text(tmp_path, f'instance = "main"\nmode = "detached"\n'
                                   f'executable = "{STAND_IN}"\nconfig = "{config}"'))
    code = ("import sys\nfrom siteboot.plan import make_plan\nfrom siteboot.site import load_site\n"
            "from siteboot.runner import status\n"
            f"print(status(make_plan(load_site(__import__('pathlib').Path({str(plan_path)!r})), 'dev'))"
            ".state)\nheavy = ('psutil', 'subprocess', 'tempfile', 'click', 'jinja2', 'difflib')\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.stdout.split("\n")[:2] == ["not running", "[]"], result.stdout + result.stderr
