"""The port matrix, check() across sites, and ports in use on this host."""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from siteboot.accounts import current_user
from siteboot.errors import InstanceError, SitebootError
from siteboot.fsutil import owner_name
from siteboot.plan import UNALLOCATED, Plan, make_plan, read_port_record
from siteboot.ports import (
    AUTO_PORTS,
    Listener,
    allocate,
    allocation_problems,
    check,
    held_ports,
    matrix,
    port_is_free,
    probe_listeners,
)
from siteboot.resources import all_site_paths
from siteboot.site import load_site
from tests.helpers import REPO, plan_from

JAWS_MATRIX = {
    "jaws-cromwell": {"dev": 50101, "staging": 50102, "prod": 50103},
    "central-auth": {"dev": 3001, "staging": 3002, "prod": 3003},
    "central-rest": {"dev": 5001, "staging": 5002, "prod": 5003},
    "supervisord-jaws": {"dev": 64101, "staging": 64102, "prod": 64103},
    "supervisord-jtm": {"dev": 64111, "staging": 64112, "prod": 64113},
    "supervisord-central": {"dev": 64121, "staging": 64122, "prod": 64123},
}


def one_instance(port: int, name: str = "t", base: int = 40000) -> str:
    return (f'[site]\nname = "{name}"\n\n[instances.main]\n'
            f"port = {{ dev = {port}, staging = {base + 2}, prod = {base + 3} }}\n")


def no_listeners(ports: set[int]) -> list[Listener]:
    return []


def never_ours(pid: int, config_paths: set[str]) -> bool:
    return False


@pytest.fixture
def listener() -> Iterator[int]:
    """A real TCP listener of this process on a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_jaws_matrix():
    rows = matrix(load_site(REPO / "sites" / "jaws.toml"))
    assert rows == JAWS_MATRIX
    assert list(rows) == list(JAWS_MATRIX)  # programs first, then supervisords


def test_matrix_skips_programs_without_ports_and_shows_auto_ones_as_none():
    rows = matrix(load_site(REPO / "sites" / "local.toml"))
    assert "worker" not in rows
    assert rows["web"] == {"dev": None, "staging": None, "prod": None}
    assert rows["supervisord-services"]["dev"] is None


def test_shipped_sites_check_clean_together():
    report = check(all_site_paths(None), probe=no_listeners)
    assert report.errors == []
    assert report.as_json()["ok"] is True


def test_probe_is_asked_about_every_port_of_the_site(write_site):
    asked: list[set[int]] = []

    def probe(ports: set[int]) -> list[Listener]:
        asked.append(ports)
        return []

    check([write_site()], probe=probe)
    assert asked == [{40001, 40002, 40003, 41001, 41002, 41003}]


def test_port_in_use_is_a_warning_then_an_error_when_strict(write_site):
    path = write_site()

    def probe(ports: set[int]) -> list[Listener]:
        return [Listener(41002, 4242, "alice", "nginx"), Listener(41002, 4242, "alice", "nginx")]

    report = check([path], probe=probe, ours=never_ours)
    assert report.errors == []
    (warning,) = report.warnings  # the same port seen twice (IPv4 and IPv6) is reported once
    text = str(warning)
    assert text.startswith(f"{path}: warning: port 41002")
    assert "program web (staging)" in text
    assert "pid 4242" in text
    assert "user alice" in text
    assert "nginx" in text

    strict = check([path], strict=True, probe=probe, ours=never_ours)
    assert strict.warnings == []
    assert len(strict.errors) == 1
    assert strict.as_json()["ok"] is False


def test_pid_not_visible(write_site):
    report = check([write_site()], probe=lambda ports: [Listener(40001, None, None, None)],
                   ours=never_ours)
    (warning,) = report.warnings
    assert "port 40001 of supervisord-main (dev)" in str(warning)
    assert "pid not visible" in str(warning)


def test_the_sites_own_processes_are_not_reported(write_site):
    seen: list[tuple[int, set[str]]] = []

    def ours(pid: int, config_paths: set[str]) -> bool:
        seen.append((pid, config_paths))
        return True

    report = check([write_site()], strict=True,
                   probe=lambda ports: [Listener(40001, 99, "me", "supervisord")], ours=ours)
    assert report.problems == []
    ((pid, config_paths),) = seen
    assert pid == 99
    assert f"/tmp/t-{current_user()}-supervisord-dev/main/supervisord-main.conf" in config_paths
    assert len(config_paths) == 3  # one config per env


def test_real_listener_names_port_pid_and_user(write_site, listener):
    path = write_site(one_instance(listener))
    report = check([path])
    assert report.errors == []
    # only this port: the site's other ports may happen to be bound on the test host
    (warning,) = [w for w in report.warnings if f"port {listener} " in str(w)]
    text = str(warning)
    assert f"port {listener} of supervisord-main (dev)" in text
    assert f"pid {os.getpid()}" in text
    assert f"user {owner_name(os.geteuid())}" in text

    strict = check([path], strict=True)
    assert text.replace("warning: ", "") in [str(p) for p in strict.errors]
    assert strict.warnings == []


def test_clash_between_sites(tmp_path):
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "a.toml").write_text(one_instance(40001, "a", 40000))
    (sites / "b.toml").write_text(one_instance(40001, "b", 40010))
    (sites / "c.toml").write_text(one_instance(40021, "c", 40020))
    paths = all_site_paths(tmp_path)
    assert [p.name for p in paths] == ["a.toml", "b.toml", "c.toml"]
    # each alone is fine
    for path in paths:
        assert check([path], probe=no_listeners).errors == []
    report = check(paths, probe=no_listeners)
    (error,) = report.errors
    assert "port 40001 is used by both a: supervisord-main (dev) and b: supervisord-main (dev)" in str(error)
    assert str(error).startswith(str(sites / "b.toml"))
    assert report.sites == [str(p) for p in paths]


def test_every_file_is_checked_even_after_a_syntax_error(tmp_path):
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "a.toml").write_text('[site]\nname = "a"\nenvs = ["dev",\n')
    (sites / "b.toml").write_text(one_instance(80000, "b"))
    report = check(all_site_paths(tmp_path), probe=no_listeners)
    text = "\n".join(str(p) for p in report.errors)
    assert f"{sites / 'a.toml'}" in text
    assert "line 4, column" in text
    assert "'port.dev' = 80000 is outside 1024-65535" in text
    assert len(report.errors) == 2


def test_every_problem_of_a_site_at_once(write_site):
    path = write_site("""
        [instances.main]
        port = { dev = 40001, staging = 40001, prod = 1000 }
        prot = 1

        [programs.web]
        instance = "main"
        command = "x"
        port = { dev = "41001", staging = 41002 }
        """)
    report = check([path], probe=no_listeners)
    text = "\n".join(str(p) for p in report.errors)
    assert "unknown key 'prot' (did you mean 'port'?)" in text
    assert "port 40001 is used by both supervisord-main (dev) and supervisord-main (staging)" in text
    assert "'port.prod' = 1000 is outside 1024-65535" in text
    assert "'port.dev' must be an integer port, not string '41001'" in text
    assert "'port' has no port for env 'prod'" in text


# --------------------------------------------------------------------------------------------
# Auto ports: the port record, allocation, and what reads it

AUTO_SITE = """
[site]
name = "t"
envs = ["dev", "prod"]
runtime_dir = "{base}/run-{{env}}"
state_dir = "{base}/state/{{site}}-{{env}}"

[instances.main]
port = "auto"

[instances.fixed]
port = {{ dev = 40001, prod = 40002 }}

[programs.web]
instance = "main"
command = "serve --port {{port}}"
port = {{ dev = "auto", prod = 41002 }}

[programs.api]
instance = "fixed"
command = "api --port {{port}}"
port = "auto"

[programs.worker]
instance = "main"
command = "work"
"""


def prog(inst: Any, name: str) -> Any:
    program = inst.program(name)
    assert program is not None
    return program


def always_free(port: int) -> bool:
    return True


def no_one(ports: set[int]) -> list[Listener]:
    return []


def never_held(pid: int, inst: Any, process: str | None) -> bool:
    return False


@pytest.fixture
def auto_plan(short_dir: Path) -> Plan:
    result: Plan = plan_from(AUTO_SITE.format(base=short_dir), short_dir)
    return result


def record_of(plan: Plan) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(plan.port_record(plan.instances["main"]).read_text())
    return data


def test_auto_ports_parse_whole_table_or_per_env(auto_plan):
    site = auto_plan.site
    assert site.instances["main"].port == {"dev": None, "prod": None}
    assert site.programs["web"].port == {"dev": None, "prod": 41002}
    assert ("main", "supervisord-main", "dev") in site.auto_ports()
    assert ("main", "program web", "prod") not in site.auto_ports()
    assert site.port_users() == [("program web", "prod", 41002), ("supervisord-fixed", "dev", 40001),
                                 ("supervisord-fixed", "prod", 40002)]


def test_a_plan_shows_unallocated_auto_ports_as_0_and_never_allocates(auto_plan):
    main = auto_plan.instances["main"]
    assert main.port == UNALLOCATED
    assert prog(main, "web").port == UNALLOCATED
    assert "--port 0" in prog(main, "web").command
    assert auto_plan.unallocated() == ["supervisord-main", "program web", "program api"]
    assert not auto_plan.port_record(main).exists()
    assert not main.state_dir.exists()  # reading never creates anything


def test_allocate_gives_each_auto_port_a_number_once_and_keeps_it(auto_plan):
    first = allocate(auto_plan, probe=no_one, free=always_free)
    plan = first.plan
    main, fixed = plan.instances["main"], plan.instances["fixed"]
    ports = {main.port, prog(main, "web").port, prog(fixed, "api").port}
    assert len(ports) == 3
    assert all(port in AUTO_PORTS for port in ports)
    assert plan.unallocated() == []
    assert fixed.port == 40001  # fixed stays fixed
    assert f"--port {prog(main, 'web').port}" in prog(main, "web").command
    assert first.notes == {"main": [f"auto port of program web: {prog(main, 'web').port}",
                                    f"auto port of supervisord-main: {main.port}"],
                           "fixed": [f"auto port of program api: {prog(fixed, 'api').port}"]}
    path = plan.port_record(main)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert record_of(plan) == {"site": "t", "env": "dev", "user": current_user(), "ports": {
        "program api": prog(fixed, "api").port, "program web": prog(main, "web").port,
        "supervisord-main": main.port}}
    # a new plan reads it; allocating again changes nothing and says nothing
    again = allocate(make_plan(plan.site, "dev"), probe=no_one, free=always_free)
    assert again.notes == {}
    assert again.plan.instances["main"].port == main.port
    # the same user, site, env and name start from the same point: a lost record comes back
    path.unlink()
    lost = allocate(make_plan(plan.site, "dev"), probe=no_one, free=always_free).plan
    assert lost.instances["main"].port == main.port


def test_allocation_skips_fixed_ports_taken_ports_and_other_envs(auto_plan, monkeypatch):
    import siteboot.ports as ports_module

    monkeypatch.setattr(ports_module, "AUTO_PORTS", range(41000, 41010))
    prod = allocate(make_plan(auto_plan.site, "prod"), probe=no_one, free=always_free).plan
    prod_ports = {prod.instances["main"].port, prog(prod.instances["fixed"], "api").port}
    busy = {41003, 41004}
    dev = allocate(auto_plan, probe=no_one, free=lambda port: port not in busy).plan
    dev_ports = {dev.instances["main"].port, prog(dev.instances["main"], "web").port,
                 prog(dev.instances["fixed"], "api").port}
    assert len(dev_ports) == 3
    assert not dev_ports & (prod_ports | busy | {41002})  # 41002: web's fixed port in prod


def test_no_free_port_left_is_a_clear_error(auto_plan):
    with pytest.raises(InstanceError, match="no free port left in 20000-32767 for"):
        allocate(auto_plan, probe=no_one, free=lambda port: False)


def test_only_the_invokers_instances_and_the_selected_one_are_allocated(short_dir):
    text = AUTO_SITE.format(base=short_dir).replace(
        '[instances.fixed]\n', '[instances.fixed]\nuser = "someone-else"\n')
    plan = plan_from(text, short_dir)
    result = allocate(plan, "main", probe=no_one, free=always_free)
    assert set(result.notes) == {"main"}
    assert prog(result.plan.instances["fixed"], "api").port == UNALLOCATED
    assert set(record_of(result.plan)["ports"]) == {"program web", "supervisord-main"}


def test_a_squatted_port_moves_and_the_note_names_the_holder(auto_plan):
    plan = allocate(auto_plan, probe=no_one, free=always_free).plan
    web = prog(plan.instances["main"], "web").port
    squatter = Listener(web, 4242, "mallory", "python3", "python3 -m http.server")

    moved = allocate(make_plan(plan.site, "dev"), probe=lambda ports: [squatter],
                     free=lambda port: port != web)
    new = prog(moved.plan.instances["main"], "web").port
    assert new != web
    assert moved.notes == {"main": [
        f"auto port of program web: {web} is held by pid 4242 (python3 -m http.server, user "
        f"mallory): moved to {new}"]}
    assert record_of(moved.plan)["ports"]["program web"] == new


def test_a_port_held_by_the_instance_itself_stays(auto_plan):
    plan = allocate(auto_plan, probe=no_one, free=always_free).plan
    main = plan.instances["main"]
    ours = [Listener(main.port, 10, "me", "python3"), Listener(prog(main, "web").port, 11, "me", "x")]
    asked: list[tuple[int, str]] = []

    def held(pid: int, inst: Any, process: str | None) -> bool:
        asked.append((pid, inst.name))
        return True

    again = allocate(make_plan(plan.site, "dev"), probe=lambda ports: ours, held=held,
                     free=always_free)
    assert again.notes == {}
    assert again.plan.instances["main"].port == main.port
    assert sorted(asked) == [(10, "main"), (11, "main")]


def test_a_site_edit_that_makes_an_auto_port_fixed_moves_it(auto_plan, short_dir):
    plan = allocate(auto_plan, probe=no_one, free=always_free).plan
    main = plan.instances["main"]
    web, own = prog(main, "web").port, main.port
    edited = AUTO_SITE.format(base=short_dir).replace(
        "port = { dev = 40001, prod = 40002 }", f"port = {{ dev = {web}, prod = {own} }}")
    plan = plan_from(edited, short_dir)
    assert [str(p) for p in allocation_problems(plan.site) if p.level == "warning"] == [
        f"{plan.site.path}: warning: port {own} of supervisord-main (auto) (dev) is also used by "
        "supervisord-fixed (prod): `siteboot up` allocates it another",
        f"{plan.site.path}: warning: port {web} of program web (auto) (dev) is also used by "
        "supervisord-fixed (dev): `siteboot up` allocates it another"]
    # the program moves (up restarts it); the running supervisord keeps its port until restarted
    running = [Listener(own, 10, "me", "supervisord")]
    result = allocate(plan, probe=lambda ports: running, held=lambda pid, inst, process: True,
                      free=always_free)
    assert prog(result.plan.instances["main"], "web").port not in (web, own)
    assert result.plan.instances["main"].port == own
    notes = result.notes["main"]
    assert f"auto port of program web: {web} is now a fixed port of the site: moved to" in notes[0]
    assert notes[1] == (f"auto port of supervisord-main: {own} is now a fixed port of the site; "
                        "it keeps it while it runs: `siteboot down -i main` then `siteboot up -i "
                        "main` moves it")
    # stopped, it moves too
    stopped = allocate(result.plan, probe=no_one, free=always_free).plan
    assert stopped.instances["main"].port not in (web, own)


def test_what_is_no_longer_auto_is_dropped_from_the_record(auto_plan, short_dir):
    allocate(auto_plan, probe=no_one, free=always_free)
    edited = AUTO_SITE.format(base=short_dir).replace('port = { dev = "auto", prod = 41002 }',
                                                      "port = { dev = 41001, prod = 41002 }")
    plan = allocate(plan_from(edited, short_dir), probe=no_one, free=always_free).plan
    assert set(record_of(plan)["ports"]) == {"supervisord-main", "program api"}


def test_two_allocations_at_once_agree(auto_plan):
    """Two `init`s of one user at once: the lock makes the second read what the first chose."""
    import threading

    barrier = threading.Barrier(6)
    results: list[Plan] = []

    def slow_free(port: int) -> bool:
        time.sleep(0.01)  # widen the window in which a second allocation could interleave
        return True

    def one() -> None:
        plan = make_plan(auto_plan.site, "dev")
        barrier.wait()
        results.append(allocate(plan, probe=no_one, free=slow_free).plan)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seen = {(p.instances["main"].port, prog(p.instances["main"], "web").port,
             prog(p.instances["fixed"], "api").port) for p in results}
    assert len(results) == 6
    assert len(seen) == 1
    assert UNALLOCATED not in next(iter(seen))


@pytest.mark.parametrize(("spoil", "message"), [
    (lambda path: path.chmod(0o644), "refusing port record .*: it must be a regular file of "
                                     ".*, mode 0600 \\(it is uid \\d+, mode 644\\)"),
    (lambda path: os.chown(path, 65534, -1), "refusing port record .* \\(it is uid 65534"),
    (lambda path: path.write_text("{not json"), "port record .* is corrupted \\(JSONDecodeError"),
    (lambda path: path.write_text('{"ports": {"web": "x"}}'), "is corrupted \\(ValueError: "
                                                              "'ports' must map names to ports"),
    (lambda path: path.write_text('{"ports": {"web": 80}}'), "is corrupted"),
    (lambda path: path.write_text("[]"), "is corrupted \\(TypeError"),
])
def test_a_spoiled_or_planted_record_is_refused_with_what_to_do(auto_plan, spoil, message):
    plan = allocate(auto_plan, probe=no_one, free=always_free).plan
    path = plan.port_record(plan.instances["main"])
    if os.geteuid() != 0 and "65534" in message:
        pytest.skip("needs root to give the file away")
    spoil(path)
    before = path.read_bytes()
    for attempt in (lambda: make_plan(plan.site, "dev"),
                    lambda: allocate(auto_plan, probe=no_one, free=always_free)):
        with pytest.raises(SitebootError, match=message) as info:
            attempt()
        assert f"remove {path}: `siteboot up` allocates the auto ports again" in str(info.value)
    assert path.read_bytes() == before  # never overwritten behind the operator's back


def test_a_symlink_or_fifo_as_record_is_refused(auto_plan, tmp_path):
    plan = allocate(auto_plan, probe=no_one, free=always_free).plan
    path = plan.port_record(plan.instances["main"])
    target = tmp_path / "elsewhere.json"
    target.write_text(path.read_text())
    target.chmod(0o600)
    path.unlink()
    path.symlink_to(target)
    with pytest.raises(SitebootError, match=r"cannot read port record .* \(a symlink\?\)"):
        make_plan(plan.site, "dev")
    path.unlink()
    os.mkfifo(path, 0o600)
    with pytest.raises(SitebootError, match="refusing port record"):  # and no hang
        make_plan(plan.site, "dev")


def test_another_accounts_record_is_read_only_to_show_its_ports(auto_plan):
    plan = allocate(auto_plan, probe=no_one, free=always_free).plan
    path = plan.port_record(plan.instances["main"])
    assert read_port_record(path, current_user(), strict=False) == record_of(plan)["ports"]
    path.chmod(0o644)
    assert read_port_record(path, current_user(), strict=False) == {}
    assert read_port_record(path, "no-such-user-p9", strict=False) == {}


def test_a_lost_record_of_a_running_instance_comes_back_from_its_start_record(
        auto_plan, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # where start records are kept
    from siteboot import records

    plan = allocate(auto_plan, probe=no_one, free=always_free).plan
    main = plan.instances["main"]
    records.write_start(plan, main, 4242, 0.0)
    plan.port_record(main).unlink()  # the state dir was wiped while it runs
    monkeypatch.setattr(records, "is_running", lambda record: True)
    busy = main.port  # held by that supervisord, so not free
    result = allocate(make_plan(plan.site, "dev"), probe=no_one, free=lambda port: port != busy)
    assert result.plan.instances["main"].port == main.port
    assert f"auto port of supervisord-main: {main.port}, where it runs (its port record was " \
        "lost)" in result.notes["main"]
    records.remove_start(records.record_of(plan, main))


def test_a_lost_record_of_a_running_program_finds_it_where_it_runs(auto_plan, monkeypatch,
                                                                  tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # where start records are kept
    from siteboot import records

    plan = allocate(auto_plan, probe=no_one, free=always_free).plan
    web = prog(plan.instances["main"], "web").port
    records.write_start(plan, plan.instances["main"], 4242, 0.0)
    monkeypatch.setattr(records, "is_running", lambda record: True)
    plan.port_record(plan.instances["main"]).unlink()
    running = Listener(web, 77, "me", "python3")

    def probe(ports: set[int]) -> list[Listener]:
        return [running] if web in ports else []

    def held(pid: int, inst: Any, process: str | None) -> bool:  # web of main, under it
        return pid == 77 and inst.name == "main" and process in (None, "web")

    result = allocate(make_plan(plan.site, "dev"), probe=probe, held=held,
                      free=lambda port: port != web)
    assert prog(result.plan.instances["main"], "web").port == web
    assert result.notes["main"][0] == \
        f"auto port of program web: {web}, where it runs (its port record was lost)"
    # held by anything else, that port is not its
    plan.port_record(plan.instances["main"]).unlink()
    other = allocate(make_plan(plan.site, "dev"), probe=probe,
                     held=lambda pid, inst, process: False, free=lambda port: port != web)
    assert prog(other.plan.instances["main"], "web").port != web
    records.remove_start(records.record_of(plan, plan.instances["main"]))


def test_matrix_and_check_show_allocated_ports(auto_plan):
    assert matrix(auto_plan.site, [auto_plan])["web"] == {"dev": None, "prod": 41002}
    plans = [allocate(make_plan(auto_plan.site, env), probe=no_one, free=always_free).plan
             for env in ("dev", "prod")]
    rows = matrix(auto_plan.site, plans)
    assert rows["web"] == {"dev": prog(plans[0].instances["main"], "web").port, "prod": 41002}
    assert rows["supervisord-main"]["prod"] == plans[1].instances["main"].port
    # a check probes allocated ports too, and names them as auto
    web = prog(plans[0].instances["main"], "web").port
    report = check([auto_plan.site.path],
                   probe=lambda ports: [Listener(web, 99, "bob", "nc")] if web in ports else [],
                   ours=never_ours)
    (warning,) = report.warnings
    assert f"port {web} of program web (auto) (dev) is in use on this host by pid 99 (nc, user bob)" \
        in str(warning)


def test_check_reports_a_refused_record(auto_plan):
    plan = allocate(auto_plan, probe=no_one, free=always_free).plan
    plan.port_record(plan.instances["main"]).chmod(0o640)
    report = check([auto_plan.site.path], probe=no_listeners)
    (error,) = report.errors
    assert "env dev: refusing port record" in str(error)


def test_held_ports_names_every_holder_but_the_instance_itself(auto_plan):
    main = auto_plan.instances["main"]
    listeners = [Listener(41001, 7, "me", "python3", "python3 -m siteboot.demo"),
                 Listener(41005, None, "bob", None), Listener(41006, None, None, None),
                 Listener(41007, 8, "root", "nginx", "nginx: master process")]
    lines = held_ports(main, {41001: "program web", 41005: "program a", 41006: "program b",
                              41007: "supervisord-main"},
                       probe=lambda ports: listeners, held=lambda pid, inst, process: pid == 7)
    assert lines == ["port 41005 (program a) is held by a process of user bob (pid not visible)",
                     "port 41006 (program b) is held by a process of another user (pid not visible)",
                     "port 41007 (supervisord-main) is held by pid 8 (nginx: master process, "
                     "user root)"]


def test_probe_names_the_user_of_a_socket_whose_pid_is_hidden(monkeypatch, listener):
    import psutil

    from siteboot import probes

    real = psutil.net_connections

    def hidden(kind: str = "inet") -> list[Any]:
        return [c._replace(pid=None) for c in real(kind)]

    monkeypatch.setattr(psutil, "net_connections", hidden)
    monkeypatch.setattr(probes, "tcp_sockets", lambda: [(listener, 0, "0A", 65534)])
    (found,) = probe_listeners({listener})
    assert found.pid is None
    assert found.user == owner_name(65534)
    assert found.describe() == f"a process of user {owner_name(65534)} (pid not visible)"


def test_port_is_free_sees_any_listener(listener):
    assert not port_is_free(listener)


def test_port_of_another_program_is_its_auto_port_once_allocated(short_dir):
    text = AUTO_SITE.format(base=short_dir).replace(
        'command = "work"', 'command = "work"\nenvironment = { API = "http://127.0.0.1:{port:api}" }')
    plan = plan_from(text, short_dir)
    assert prog(plan.instances["main"], "worker").environment == {"API": "http://127.0.0.1:0"}
    # `up -i main` allocates api's port too (another instance's): the worker needs it
    allocated = allocate(plan, "main", probe=no_one, free=always_free).plan
    api = prog(allocated.instances["fixed"], "api").port
    assert api in AUTO_PORTS
    assert prog(allocated.instances["main"], "worker").environment == {
        "API": f"http://127.0.0.1:{api}"}
    assert allocated.ports["api"] == api


def test_an_instance_placed_on_another_host_gets_its_ports_there(short_dir, monkeypatch):
    monkeypatch.setenv("SITEBOOT_HOST", "here.example.org")
    text = AUTO_SITE.format(base=short_dir).replace(
        '[instances.fixed]\n', '[instances.fixed]\nhost = "there.example.org"\n')
    result = allocate(plan_from(text, short_dir), probe=no_one, free=always_free)
    assert set(result.notes) == {"main"}
    assert prog(result.plan.instances["fixed"], "api").port == UNALLOCATED  # allocated there
    assert "program api" not in record_of(result.plan)["ports"]
