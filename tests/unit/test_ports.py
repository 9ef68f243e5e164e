"""The port matrix, check() across sites, and ports in use on this host."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from siteboot.fsutil import owner_name
from siteboot.plan import current_user
from siteboot.ports import Listener, check, matrix
from siteboot.resources import all_site_paths
from siteboot.site import load_site
from tests.helpers import REPO

JAWS_MATRIX = {
    "central-auth": {"dev": 3001, "staging": 3002, "prod": 3003},
    "central-rest": {"dev": 5001, "staging": 5002, "prod": 5003},
    "cromwell": {"dev": 50101, "staging": 50102, "prod": 50103},
    "supervisord-jaws": {"dev": 64101, "staging": 64102, "prod": 64103},
    "supervisord-jtm": {"dev": 64111, "staging": 64112, "prod": 64113},
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
