"""Instances placed on hosts: only this host's are acted on; the others are listed as `on <host>`."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from siteboot import control, instances, records, statusreport
from siteboot.accounts import this_host
from siteboot.errors import STATUS_OK, UsageError
from siteboot.plan import InstancePlan, Plan, make_plan
from siteboot.ports import Listener, in_use_problems
from siteboot.rpc import connect
from siteboot.site import load_site, parse_site, same_host
from tests.helpers import invoke_cli

SITE = """
[site]
name = "h"
envs = ["dev", "prod"]
runtime_dir = "{base}/run"
state_dir = "{base}/state"

[instances.site]
host = "jaws.lbl.gov"
port = {{ dev = 40001, prod = 40002 }}

[instances.central]
host = "central.lbl.gov"
port = {{ dev = 40001, prod = 40002 }}

[programs.rest]
instance = "central"
command = "sleep 1000"
port = {{ dev = 41001, prod = 41002 }}

[programs.daemon]
instance = "site"
command = "sleep 1000"
port = {{ dev = 41001, prod = 41002 }}
"""


def write(base: Path, text: str = SITE) -> Path:
    path = base / "h.toml"
    path.write_text(textwrap.dedent(text).format(base=base))
    return path


def plan_on(base: Path, host: str, text: str = SITE) -> Plan:
    return make_plan(load_site(write(base, text)), "dev", host=host)


@pytest.mark.parametrize(("declared", "actual", "same"), [
    ("jaws.lbl.gov", "jaws.lbl.gov", True),
    ("JAWS.lbl.gov.", "jaws.LBL.gov", True),
    ("jaws.lbl.gov", "jaws", True),  # a host set up with its short name
    ("jaws", "jaws.lbl.gov", True),
    ("jaws.lbl.gov", "jaws.nersc.gov", False),
    ("jaws.lbl.gov", "central.lbl.gov", False),
    ("jaws", "jawsx", False),
])
def test_host_names_match_short_or_full(declared, actual, same):
    assert same_host(declared, actual) is same


def test_this_host_is_the_override_else_the_kernels_name(monkeypatch):
    monkeypatch.setenv("SITEBOOT_HOST", "login07.perlmutter.nersc.gov")
    assert this_host() == "login07.perlmutter.nersc.gov"
    monkeypatch.delenv("SITEBOOT_HOST")
    import os

    assert this_host() == os.uname().nodename


def test_ports_clash_only_on_one_host(tmp_path):
    _, problems = parse_site(write(tmp_path))
    assert problems == []  # the same ports on two hosts
    anywhere = SITE.replace('host = "central.lbl.gov"\n', "")
    _, problems = parse_site(write(tmp_path, anywhere))
    # an instance without a host may run on jaws.lbl.gov too
    messages = sorted(p.message for p in problems)
    assert messages == ["port 40001 is used by both supervisord-site (dev) and supervisord-central (dev)",
                        "port 40002 is used by both supervisord-site (prod) and supervisord-central (prod)",
                        "port 41001 is used by both program rest (dev) and program daemon (dev)",
                        "port 41002 is used by both program rest (prod) and program daemon (prod)"]
    short = SITE.replace('host = "central.lbl.gov"', 'host = "jaws"')
    _, problems = parse_site(write(tmp_path, short))
    assert len(problems) == 4  # `jaws` is jaws.lbl.gov


def test_a_bad_host_name_is_refused(tmp_path):
    _, problems = parse_site(write(tmp_path, SITE.replace('"jaws.lbl.gov"', '"jaws lbl"')))
    assert ["'host' must be a host name" in p.message for p in problems] == [True]


def test_the_plan_knows_which_instances_are_here(tmp_path):
    plan = plan_on(tmp_path, "jaws")
    assert plan.host == "jaws"
    assert plan.instance("site").here
    assert not plan.instance("central").here
    assert plan.elsewhere(plan.instance("central")) == "on central.lbl.gov"
    assert plan.elsewhere(plan.instance("site")) is None


def test_status_lists_the_other_hosts_instances_without_asking_them(tmp_path, monkeypatch):
    plan = plan_on(tmp_path, "central.lbl.gov")
    asked = []

    def query(plan: Plan, inst: InstancePlan) -> statusreport.InstanceStatus:
        asked.append(inst.name)
        return statusreport.InstanceStatus(inst.name, inst.user, statusreport.RUNNING, "u")

    monkeypatch.setattr(control, "_query", query)
    report = control.status(plan)
    assert asked == ["central"]
    site, central = report.instances
    assert (site.state, site.host, site.error) == (statusreport.ELSEWHERE, "jaws.lbl.gov", None)
    assert central.host == "central.lbl.gov"
    assert report.exit_code == STATUS_OK  # another host's instance is not counted
    data = report.as_json()["instances"]
    assert [(i["name"], i["state"], i["host"]) for i in data] == [
        ("site", "elsewhere", "jaws.lbl.gov"), ("central", "running", "central.lbl.gov")]


def test_up_and_down_skip_the_other_hosts_instances(tmp_path, monkeypatch):
    plan = plan_on(tmp_path, "jaws.lbl.gov")
    done = []

    def start(inst: InstancePlan) -> instances.InstanceOutcome:
        done.append(inst.name)
        return instances.InstanceOutcome(inst.name, "started")

    outcomes = instances.each_owned(plan, None, start)
    assert done == ["site"]
    assert [(o.instance, o.action, o.detail) for o in outcomes] == [
        ("site", "started", ""), ("central", "skipped", "on central.lbl.gov")]


def test_nothing_is_sent_to_another_hosts_instance(tmp_path):
    plan = plan_on(tmp_path, "jaws.lbl.gov")
    with pytest.raises(UsageError, match=r"instance central runs on central.lbl.gov, not on this "
                                         r"host \(jaws.lbl.gov\)"):
        connect(plan, plan.instance("central"))
    targets = control.resolve_targets(plan, ["all"])
    assert targets == {"site": ["daemon"]}


def test_start_records_of_other_hosts_sharing_a_home_are_not_ours(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    plan = plan_on(tmp_path, "jaws.lbl.gov")
    monkeypatch.setenv("SITEBOOT_HOST", "jaws.lbl.gov")
    record = records.write_start(plan, plan.instance("site"), 4242, 1.0)
    assert record.host == "jaws.lbl.gov"
    assert [r.instance for r in records.read_starts(plan.invoker)] == ["site"]
    monkeypatch.setenv("SITEBOOT_HOST", "central")
    assert records.read_starts(plan.invoker) == []
    # a record from before hosts were recorded is read on every host
    data = json.loads(record.path.read_text())
    data["host"] = ""
    record.path.write_text(json.dumps(data))
    assert [r.instance for r in records.read_starts(plan.invoker)] == ["site"]


def test_an_instance_moved_to_another_host_is_an_orphan_here(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SITEBOOT_HOST", "central.lbl.gov")
    one_instance = """
        [site]
        name = "h"
        envs = ["dev"]
        runtime_dir = "{base}/run"
        state_dir = "{base}/state"

        [instances.site]
        port = {{ dev = 40001 }}
        """
    before = plan_on(tmp_path, "central.lbl.gov", one_instance)
    records.write_start(before, before.instance("site"), 4242, 1.0)
    assert records.orphaned(before) == []
    after = plan_on(tmp_path, "central.lbl.gov", one_instance + 'host = "jaws.lbl.gov"\n')
    assert [r.instance for r in records.orphaned(after)] == ["site"]


def test_ports_in_use_count_only_for_this_hosts_instances(tmp_path, monkeypatch):
    site = load_site(write(tmp_path))
    listeners = [Listener(40001, 99, "x", "nc"), Listener(41001, 98, "x", "nc")]
    monkeypatch.setenv("SITEBOOT_HOST", "jaws.lbl.gov")
    problems = in_use_problems(site, "warning", probe=lambda ports: listeners,
                               ours=lambda pid, paths: False, envs={"dev"})
    assert sorted(p.message.split(" is in use")[0] for p in problems) == [
        "port 40001 of supervisord-site (dev)", "port 41001 of program daemon (dev)"]
    monkeypatch.setenv("SITEBOOT_HOST", "elsewhere.example.org")
    assert in_use_problems(site, "warning", probe=lambda ports: listeners,
                           ours=lambda pid, paths: False) == []


def test_status_table_and_up_say_on_which_host(tmp_path, monkeypatch):
    path = write(tmp_path)
    monkeypatch.setenv("SITEBOOT_HOST", "nowhere.example.org")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NO_COLOR", "1")
    status = invoke_cli("status", "--site", path)
    assert status.exit_code == 0, status.stderr
    me = make_plan(load_site(path), "dev").invoker
    assert status.stdout.splitlines()[1:] == [f"site ({me}) on jaws.lbl.gov",
                                              f"central ({me}) on central.lbl.gov"]
    up = invoke_cli("up", "--site", path)
    assert up.exit_code == 0, up.stderr
    assert "site: skipped: on jaws.lbl.gov" in up.stdout
    assert "central: skipped: on central.lbl.gov" in up.stdout
