"""Start records and operator stops: what an account started, found again without the site."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from siteboot import records
from siteboot.plan import Plan
from siteboot.records import (
    is_running,
    mark_stopped,
    operator_stops,
    orphaned,
    read_starts,
    record_of,
    remove_start,
    starts_of,
    write_start,
)
from tests.helpers import dead_pid, own_site_text, plan_from


@pytest.fixture
def home(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(short_dir / "home"))
    return short_dir / "home"


@pytest.fixture
def plan(short_dir: Path, home: Path) -> Plan:
    result: Plan = plan_from(own_site_text(short_dir), short_dir)
    return result


def test_a_start_record_round_trips_privately(plan: Plan, home: Path):
    inst = plan.instances["main"]
    record = write_start(plan, inst, pid=1234, started_at=5.0)
    assert record.path == record_of(plan, inst)
    assert record.path.parent == home / ".local/state/siteboot/started"
    assert os.stat(record.path).st_mode & 0o777 == 0o600
    assert os.stat(record.path.parent).st_mode & 0o777 == 0o700
    (back,) = read_starts(plan.invoker)
    assert back == record
    assert back.stop_waits == {"web": 10}
    assert back.matches(inst)
    rebuilt = back.instance_plan()
    assert (rebuilt.conf_path, rebuilt.socket_path, rebuilt.key_path) == \
        (inst.conf_path, inst.socket_path, inst.key_path)
    assert starts_of(plan.invoker, "t", "dev") == [record]
    assert starts_of(plan.invoker, "t", "prod") == []
    remove_start(record.path)
    remove_start(record.path)  # gone already: fine
    assert read_starts(plan.invoker) == []


def test_records_of_a_moved_runtime_dir_live_side_by_side(short_dir: Path, home: Path):
    before = plan_from(own_site_text(short_dir), short_dir)
    old = write_start(before, before.instances["main"], 1, 1.0)
    after = plan_from(own_site_text(short_dir, runtime=f"{short_dir}/elsewhere-{{env}}"), short_dir)
    new = write_start(after, after.instances["main"], 2, 2.0)
    assert old.path != new.path
    assert orphaned(after) == [old]
    assert orphaned(before) == [new]


def test_unreadable_or_foreign_files_are_passed_over(plan: Plan, home: Path):
    write_start(plan, plan.instances["main"], 1, 1.0)
    folder = records.records_dir(plan.invoker)
    (folder / "garbage.json").write_text("{not json")
    (folder / "other.json").write_text('{"unexpected": 1}')
    (folder / "notes.txt").write_text("hello")
    assert len(read_starts(plan.invoker)) == 1


def test_is_running_needs_the_same_pid_owner_and_config(plan: Plan, home: Path):
    inst = plan.instances["main"]
    assert not is_running(write_start(plan, inst, dead_pid(), 1.0))
    # a live process that is not this instance's supervisord (this test itself)
    assert not is_running(write_start(plan, inst, os.getpid(), 1.0))


def test_is_running_recognises_the_recorded_supervisord(plan: Plan, home: Path, spawn):
    inst = plan.instances["main"]
    sleep = "import time; time.sleep(30)"
    # a command line as supervisord's (`python -m supervisor.supervisord -c CONF`) reads
    looks_right = spawn(sys.executable, "-c", sleep, "supervisor.supervisord", "-c",
                        str(inst.conf_path))
    # "supervisord" as a late argument is not the program (e.g. `tail -f .../supervisord-x.conf`)
    late = spawn(sys.executable, "-c", sleep, "x", "supervisord", "-c", str(inst.conf_path))
    wrong_conf = spawn(sys.executable, "-c", sleep, "supervisor.supervisord", "-c", "/other.conf")
    assert is_running(write_start(plan, inst, looks_right.pid, 1.0))
    assert not is_running(write_start(plan, inst, late.pid, 1.0))
    assert not is_running(write_start(plan, inst, wrong_conf.pid, 1.0))


def test_operator_stops_are_remembered_until_started(plan: Plan):
    inst = plan.instances["main"]
    assert operator_stops(inst) == set()
    mark_stopped(inst, ["web"], stopped=True)
    assert operator_stops(inst) == {"web"}
    assert os.stat(inst.state_dir / records.STOPS_FILE).st_mode & 0o777 == 0o600
    mark_stopped(inst, ["web"], stopped=True)  # idempotent
    mark_stopped(inst, ["web"], stopped=False)
    assert operator_stops(inst) == set()
    (inst.state_dir / records.STOPS_FILE).write_text("{broken")
    assert operator_stops(inst) == set()
