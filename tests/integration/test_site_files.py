"""[files], secrets and [dirs] with real supervisord: programs read their rendered file and a
secret from their environment; a changed file restarts only its users; dirs get their mode and
group and survive a purge."""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_until

pytestmark = pytest.mark.slow

SECRET = "hunter2-not-shown"
READER = """\
import os, sys, time
print("conf:", open(sys.argv[1]).read().strip().replace("\\n", " | "), flush=True)
print("env:", os.environ["DB_PASSWORD"], os.environ["LOG_LEVEL"], flush=True)
time.sleep(3600)
"""
TEMPLATE = "greeting={{ vars.greeting }} password={{ secret('DB_PASSWORD') }} web={{ port('web') }}\n"
PROGRAMS = """
[vars]
greeting = "hello"
log_level = { dev = "DEBUG", default = "INFO" }

[files.conf]
template = "templates/app.conf.j2"
path = "{state_dir}/app.conf"
instance = "alpha"

[programs.web]
instance = "alpha"
command = "{python} -m siteboot.demo serve --port {port}"
port = { dev = PORT_WEB }
startsecs = 1

[programs.reader]
instance = "alpha"
command = "{python} {state_dir}/../reader.py {file:conf}"
files = ["conf"]
environment = { DB_PASSWORD = "{secret:DB_PASSWORD}", LOG_LEVEL = "{var:log_level}" }
startsecs = 1

[programs.bystander]
instance = "alpha"
command = "{python} -m siteboot.demo work --interval 5"
startsecs = 1
"""


def files_site(site_factory: Any) -> Any:
    site = site_factory(PROGRAMS)
    (site.base / "templates").mkdir()
    (site.base / "templates" / "app.conf.j2").write_text(TEMPLATE)
    (site.base / "reader.py").write_text(READER)
    site.env["SITEBOOT_ROOT"] = str(site.base)  # where templates/ is
    return site


def pids(site: Any) -> dict[str, int]:
    _, data = site.status()
    return {p["name"]: p["pid"] for p in data["instances"][0]["programs"]}


def log_of(site: Any, program: str) -> str:
    path = site.runtime("alpha") / "logs" / f"{program}.out.log"
    return path.read_text() if path.exists() else ""


def test_programs_read_their_file_and_a_secret_that_is_never_shown(site_factory):
    site = files_site(site_factory)
    missing = site.run("up", "-i", "alpha")
    assert missing.returncode == 1
    assert "secret DB_PASSWORD is not set" in missing.stdout
    assert "SITEBOOT_SECRET_DB_PASSWORD" in missing.stdout
    assert "secrets.toml" in missing.stdout
    assert not site.runtime("alpha").exists()  # nothing touched

    with_secret = {"SITEBOOT_SECRET_DB_PASSWORD": SECRET}
    up = site.run("up", check=True, extra_env=with_secret)
    site.wait_status(0)
    line = wait_until(lambda: "env:" in log_of(site, "reader") and log_of(site, "reader"))
    assert f"conf: greeting=hello password={SECRET} web={site.ports['web']}" in line
    assert f"env: {SECRET} DEBUG" in line
    # the CI variable reaches no program (nor supervisord): only the environment naming it
    for pid in pids(site).values():
        assert b"SITEBOOT_SECRET_" not in Path(f"/proc/{pid}/environ").read_bytes()
    conf = site.state() / "app.conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    config = site.runtime("alpha") / "supervisord-alpha.conf"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600  # it holds an environment secret
    assert SECRET in config.read_text()

    # cron's `revive` has no CI variables: what serves keeps serving, and it says why
    revived = site.run("revive")
    assert revived.returncode == 0, revived.stdout + revived.stderr
    assert "dev alpha: already running: still serving" in revived.stdout
    assert "secret DB_PASSWORD is not set" in revived.stdout
    assert f"password={SECRET}" in conf.read_text()

    status = site.run("status", "--json")
    render_out = site.run("render", "--out", str(site.base / "out"), check=True)
    previews = "".join(p.read_text() for p in (site.base / "out").rglob("*") if p.is_file())
    assert "{secret:DB_PASSWORD}" in previews
    for shown in (up.stdout, up.stderr, status.stdout, status.stderr, render_out.stdout, previews,
                  revived.stdout, revived.stderr):
        assert SECRET not in shown


def test_a_changed_file_restarts_only_the_programs_that_read_it(site_factory):
    site = files_site(site_factory)
    secret = {"SITEBOOT_SECRET_DB_PASSWORD": SECRET}
    site.run("up", check=True, extra_env=secret)
    site.wait_status(0)
    before = pids(site)

    again = site.run("up", check=True, extra_env=secret)
    assert "alpha: already running: nothing to do" in again.stdout
    assert pids(site) == before

    # the file changes (and `render` writes it first): `up` still restarts its reader, alone
    site.path.write_text(site.path.read_text().replace('greeting = "hello"', 'greeting = "hi"'))
    site.run("render", "-i", "alpha", check=True, extra_env=secret)
    changed = site.run("up", check=True, extra_env=secret)
    assert "alpha: updated: restarted reader: file conf changed" in changed.stdout
    site.wait_status(0)
    after = pids(site)
    assert after["reader"] != before["reader"]
    assert {k: v for k, v in after.items() if k != "reader"} == \
           {k: v for k, v in before.items() if k != "reader"}
    wait_until(lambda: "greeting=hi" in log_of(site, "reader"))
    assert "alpha: already running: nothing to do" in site.run("up", check=True,
                                                               extra_env=secret).stdout


GROUP = "sbt_i10grp"


@pytest.fixture
def real_group() -> Iterator[str]:
    if os.geteuid() != 0 or not shutil.which("groupadd"):
        pytest.skip("needs root and groupadd")
    subprocess.run(["groupdel", GROUP], capture_output=True, check=False)
    subprocess.run(["groupadd", GROUP], check=True)
    try:
        yield GROUP
    finally:
        subprocess.run(["groupdel", GROUP], check=False)


@pytest.mark.users
def test_dirs_get_their_mode_and_group_and_survive_a_purge(site_factory, real_group):
    site = site_factory(f"""
        [dirs.scratch]
        path = "{{state_dir}}/../scratch-{{env}}"
        mode = "2770"
        group = "{real_group}"
        instance = "beta"

        [programs.worker]
        instance = "beta"
        command = "{{python}} -m siteboot.demo work --interval 5"
        directory = "{{dir:scratch}}"
        startsecs = 1
        """)
    scratch = site.base / "scratch-dev"
    up = site.run("up", check=True)
    assert f"dir scratch: created {site.state()}/../scratch-dev (mode 2770, group {real_group})" \
        in up.stdout
    info = scratch.stat()
    assert stat.S_IMODE(info.st_mode) == 0o2770
    assert info.st_gid == grp.getgrnam(real_group).gr_gid
    site.wait_status(0)

    os.chmod(scratch, 0o2775)  # another script's idea of its mode
    os.chown(scratch, -1, 0)
    fixed = site.run("up", check=True)
    assert f"dir scratch: group root -> {real_group}" in fixed.stdout
    assert "dir scratch: mode 2775 -> 2770" in fixed.stdout
    assert stat.S_IMODE(scratch.stat().st_mode) == 0o2770

    site.run("down", "--purge", check=True)
    assert not site.runtime("beta").exists()
    assert scratch.is_dir()  # never deleted, not even by a purge
    assert stat.S_IMODE(Path(scratch).stat().st_mode) == 0o2770
