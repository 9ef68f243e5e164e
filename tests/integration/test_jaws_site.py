"""The real `sites/jaws.toml` brought up, in all three envs side by side, under two real
accounts (useradd), as JAWS ran in 2021: `sbt_jwjaws` runs the jaws instance (and central, on
its own host), `sbt_jwjtm` the jtm instance, which sbt_jwjaws controls through the group grant.

The test site is generated from the real file (tomllib), changed only where a test box must
differ: accounts and groups, paths under a temp dir, free ports where the real ones are taken.
Everything else is the real file: hosts (this machine plays cori20.nersc.gov and jaws.lbl.gov
through SITEBOOT_HOST), the preamble (the accounts' login profile defines a stand-in `module`),
venvs from the checkout's wheels (`make pkg`'s */dist, built here with stand-in executables,
tests/fixtures/jaws_standins.py), the templates, files, dirs, vars and programs.
"""

from __future__ import annotations

import base64
import csv
import grp
import hashlib
import io
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import REPO, free_ports, install_for_all, kill_all, processes_under, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.users]

JAWS, JTM = "sbt_jwjaws", "sbt_jwjtm"
ACCOUNTS = {"jaws": JAWS, "jaws_jtm": JTM}  # the real file's account (and group) -> the test's
CORI, CENTRAL = "cori20.nersc.gov", "jaws.lbl.gov"
ENVS = ("dev", "staging", "prod")
LEVELS = {"dev": "DEBUG", "staging": "DEBUG", "prod": "INFO"}
SECRETS = {"JAWS_DB_PW": "db-pw-7f3a", "JAWS_RMQ_PW": "rmq-pw-91c2", "SITE_RMQ_PW": "cori-rmq-5d0e",
           "JAWS_GLOBUS_CLIENT_SECRET": "globus-c4b8"}
STANDINS = REPO / "tests" / "fixtures" / "jaws_standins.py"
# The Lmod stand-in each account's login profile defines: loading the module JAWS used on Cori
# puts the site's interpreters and java (here: the stand-ins) on PATH; an unknown one fails.
MODULE_FUNCTION = """\
module() {{
    if [ "$1" = load ] && [ "$2" = python/3.8-anaconda-2020.11 ]; then
        export PATH="{bin}:$PATH"
    else
        echo "module: cannot $*" >&2; return 1
    fi
}}
"""


# ------------------------------------------------------------------------------------------
# the test site, from the real one


FLAT_TABLES = ("site", "vars", "runner")


def toml_text(data: dict[str, Any]) -> str:
    """``data`` (as tomllib read it: tables of tables of strings, integers, lists and inline
    tables) written back as TOML."""
    def value(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, (int, str)):
            return json.dumps(item)
        if isinstance(item, list):
            return "[" + ", ".join(value(v) for v in item) + "]"
        return "{ " + ", ".join(f"{json.dumps(k)} = {value(v)}" for k, v in item.items()) + " }"

    lines = []
    for top, table in data.items():
        sections = ([(top, table)] if top in FLAT_TABLES
                    else [(f"{top}.{json.dumps(name)}", keys) for name, keys in table.items()])
        for header, keys in sections:
            lines += [f"[{header}]", *(f"{json.dumps(k)} = {value(v)}" for k, v in keys.items()), ""]
    return "\n".join(lines)


def bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def remap_ports(data: dict[str, Any]) -> dict[int, int]:
    """Every port of the site kept where it is free here, else moved to a free one."""
    tables = [t["port"] for t in [*data["instances"].values(), *data["programs"].values()]
              if "port" in t]
    moved: dict[int, int] = {}
    for table in tables:
        for env, port in table.items():
            if port not in moved:
                moved[port] = port if bindable(port) else free_ports(1)[0]
            table[env] = moved[port]
    return moved


def site_for_the_box(real: Path, base: Path) -> tuple[str, dict[str, Any]]:
    """The real site file with only what a test box needs changed."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib

    data: dict[str, Any] = tomllib.loads(real.read_text())
    site, variables = data["site"], data["vars"]
    site["runtime_dir"] = site["runtime_dir"].replace("/tmp/", f"{base}/tmp/")
    site["shared_dir"] = f"{base}/shared/{{user}}-{{env}}"
    for name, folder in (("install_dir", "cfs/jaws-install"), ("jaws_scratch", "scratch/jaws"),
                         ("jtm_scratch", "scratch/jaws_jtm"), ("central_install_dir", "opt/jaws")):
        variables[name] = f"{base}/{folder}/" + variables[name].rsplit("/", 1)[1]
    for instance in data["instances"].values():
        instance["user"] = ACCOUNTS[instance["user"]]
        if "group" in instance:
            instance["group"] = ACCOUNTS[instance["group"]]
    for spec in data["dirs"].values():
        spec["group"] = ACCOUNTS[spec["group"]]
    remap_ports(data)
    return toml_text(data), data


# ------------------------------------------------------------------------------------------
# the checkout: `make pkg`'s wheels, with the stand-ins as the console scripts


def build_wheel(dist: Path, name: str, files: dict[str, str], scripts: dict[str, str],
                requires: tuple[str, ...] = ()) -> None:
    """A pure-Python wheel ``name``-2.5.0 into ``dist`` (what `python setup.py bdist_wheel`
    made in each part of the JAWS checkout)."""
    info = f"{name}-2.5.0.dist-info"
    contents = dict(files)
    contents[f"{info}/METADATA"] = ("Metadata-Version: 2.1\n" f"Name: {name}\nVersion: 2.5.0\n"
                                    + "".join(f"Requires-Dist: {r}\n" for r in requires))
    contents[f"{info}/WHEEL"] = ("Wheel-Version: 1.0\nGenerator: siteboot-tests\n"
                                 "Root-Is-Purelib: true\nTag: py3-none-any\n")
    if scripts:
        contents[f"{info}/entry_points.txt"] = "[console_scripts]\n" + "".join(
            f"{script} = {target}\n" for script, target in scripts.items())
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for path, text in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        writer.writerow([path, f"sha256={digest.decode()}", len(text.encode())])
    writer.writerow([f"{info}/RECORD", "", ""])
    contents[f"{info}/RECORD"] = record.getvalue()
    dist.mkdir(parents=True)
    with zipfile.ZipFile(dist / f"{name}-2.5.0-py3-none-any.whl", "w") as wheel:
        for path, text in contents.items():
            wheel.writestr(path, text)


def make_checkout(checkout: Path, site_text: str) -> None:
    standins = STANDINS.read_text()
    build_wheel(checkout / "rpc/dist", "jaws_rpc",
                {"jaws_rpc/__init__.py": "", "jaws_standins.py": standins}, {})
    for part, name, script in (("site", "jaws_site", "jaws-site"), ("jtm", "jaws_jtm", "jtm"),
                               ("central", "jaws_central", "jaws-central")):
        target = "jaws_standins:" + script.replace("-", "_")
        build_wheel(checkout / part / "dist", name, {f"{name}/__init__.py": ""},
                    {script: target}, requires=("jaws_rpc",))
    shutil.copytree(REPO / "templates" / "jaws", checkout / "templates" / "jaws")
    (checkout / "sites").mkdir()
    (checkout / "sites" / "jaws.toml").write_text(site_text)


# ------------------------------------------------------------------------------------------
# the box


@dataclass
class JawsBox:
    base: Path
    python: Path
    site: Path
    data: dict[str, Any]
    vars: dict[str, str] = field(default_factory=dict)

    def run(self, user: str, host: str, *args: str, timeout: float = 600
            ) -> subprocess.CompletedProcess[str]:
        """`siteboot ARGS` as ``user`` on ``host``, in the checkout (the site root: its
        sites/jaws.toml, templates/ and wheels), with the secrets a deploy job has."""
        home = pwd.getpwnam(user).pw_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith("SITEBOOT_")}
        env.update({f"SITEBOOT_SECRET_{k}": v for k, v in SECRETS.items()},
                   HOME=home, NO_COLOR="1", SITEBOOT_SITE="jaws", SITEBOOT_HOST=host)
        return subprocess.run(
            ["runuser", "-u", user, "--", str(self.python), "-c",
             "from siteboot.cli import main; main()", *args],
            env=env, cwd=str(self.site.parent.parent), capture_output=True, text=True, timeout=timeout,
            check=False)

    def ran(self, user: str, host: str, *args: str) -> str:
        """`siteboot ARGS` as for ``run``, which must succeed; its output."""
        result = self.run(user, host, *args)
        assert result.returncode == 0, (result.stdout + result.stderr + self.program_errors())
        return result.stdout

    def program_errors(self) -> str:
        """The end of every program's stderr log: what a stand-in said when it refused."""
        logs = sorted(self.base.glob("tmp/jaws-supervisord-*/*/logs/*.err.log"))
        return "".join(f"\n--- {log}:\n{log.read_text()[-600:]}" for log in logs
                       if log.stat().st_size)

    def status(self, user: str, host: str, env: str) -> dict[str, Any]:
        result = self.run(user, host, "status", "--json", "--env", env, timeout=120)
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def path(self, name: str, env: str) -> Path:
        return Path(self.vars[name].replace("{env}", env))

    def port(self, program: str, env: str) -> int:
        return int(self.data["programs"][program]["port"][env])


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def _drop_accounts() -> None:
    for user in (JAWS, JTM):
        subprocess.run(["userdel", "-r", "-f", user], capture_output=True, check=False)
        subprocess.run(["groupdel", user], capture_output=True, check=False)


def _account_exists(name: str) -> bool:
    """A user or a group of that name."""
    for lookup in (pwd.getpwnam, grp.getgrnam):
        try:
            lookup(name)
        except KeyError:
            continue
        return True
    return False


def _owned_dir(path: Path, owner: str, group: str, mode: int) -> None:
    """What JAWS's deploy made before anything ran (setup_dir): an install or scratch base."""
    path.mkdir(parents=True)
    shutil.chown(path, owner, group)
    os.chmod(path, mode)


@pytest.fixture(scope="module")
def jaws_box() -> Iterator[JawsBox]:
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("needs root and useradd")
    _drop_accounts()
    base = Path(tempfile.mkdtemp(prefix="sbj-", dir="/tmp"))
    os.chmod(base, 0o755)
    box = None
    try:
        for user in (JAWS, JTM):
            _sh("useradd", "-m", "-U", "-s", "/bin/bash", user)
        _sh("usermod", "-aG", JTM, JAWS)  # the grant: jaws is in jaws_jtm's group
        python = install_for_all(base)
        standin_bin = base / "opt" / "bin"
        standin_bin.mkdir(parents=True)
        shutil.copy(STANDINS, standin_bin / "jaws_standins.py")
        (standin_bin / "java").write_text(f"#!{python}\nimport sys\n"
                                          f"sys.path.insert(0, {str(standin_bin)!r})\n"
                                          "import jaws_standins\njaws_standins.java()\n")
        os.chmod(standin_bin / "java", 0o755)
        for user in (JAWS, JTM):
            profile = Path(pwd.getpwnam(user).pw_dir) / ".bash_profile"
            profile.write_text(MODULE_FUNCTION.format(bin=standin_bin))
            shutil.chown(profile, user, user)

        text, data = site_for_the_box(REPO / "sites" / "jaws.toml", base)
        checkout = base / "checkout"
        make_checkout(checkout, text)
        _sh("chmod", "-R", "a+rX", str(checkout), str(base / "opt"))
        for env in ENVS:  # /tmp's stand-in: the runtime dirs' shared parents, root's and sticky
            (base / "tmp" / f"jaws-supervisord-{env}").mkdir(parents=True)
            os.chmod(base / "tmp" / f"jaws-supervisord-{env}", 0o1777)
        os.chmod(base / "tmp", 0o1777)
        (base / "shared").mkdir()
        os.chmod(base / "shared", 0o1777)  # a project dir both accounts write, sticky
        _owned_dir(base / "scratch" / "jaws", JAWS, JAWS, 0o755)  # $SCRATCH of each account
        _owned_dir(base / "scratch" / "jaws_jtm", JTM, JTM, 0o755)
        _owned_dir(base / "opt" / "jaws", JAWS, JAWS, 0o755)  # CENTRAL_INSTALL_BASEDIR
        box = JawsBox(base, python, checkout / "sites" / "jaws.toml", data, data["vars"])
        for env in ENVS:  # INSTALL_DIR with deploy-cromwell's jar, for both accounts
            install = box.path("install_dir", env)
            _owned_dir(install, JAWS, JTM, 0o2770)
            (install / "cromwell.jar").write_bytes(b"PK\x05\x06" + bytes(18))
            shutil.chown(install / "cromwell.jar", JAWS, JTM)
            os.chmod(install / "cromwell.jar", 0o640)
        yield box
    finally:
        if box is not None:
            for env in ENVS:
                for user, host in ((JAWS, CORI), (JTM, CORI), (JAWS, CENTRAL)):
                    box.run(user, host, "down", "--env", env, timeout=300)
        leftovers = processes_under(base)
        kill_all(leftovers)
        _drop_accounts()
        shutil.rmtree(base, ignore_errors=True)
        assert not leftovers, f"processes left running: {leftovers}"
        assert not _account_exists(JAWS)
        assert not _account_exists(JTM)


# ------------------------------------------------------------------------------------------
# checks


def programs_of(status: dict[str, Any], instance: str) -> dict[str, dict[str, Any]]:
    """The site's programs of ``instance`` (not the readiness listener siteboot adds)."""
    [found] = [i for i in status["instances"] if i["name"] == instance]
    assert found["state"] == "running", found
    return {p["name"]: p for p in found["programs"] if p["name"] != "siteboot-healer"}


def environ(pid: int) -> dict[str, str]:
    return psutil.Process(pid).environ()


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def assert_dir(path: Path, owner: str, group: str) -> None:
    info = path.stat()
    assert (pwd.getpwuid(info.st_uid).pw_name, stat.S_IMODE(info.st_mode)) == (owner, 0o2770), path
    assert grp.getgrgid(info.st_gid).gr_name == group, path


def assert_file(path: Path, owner: str, *secrets: str) -> None:
    info = path.stat()
    assert (pwd.getpwuid(info.st_uid).pw_name, stat.S_IMODE(info.st_mode)) == (owner, 0o600), path
    text = path.read_text()
    for name in secrets:
        assert f"password = {SECRETS[name]}" in text or f'password = "{SECRETS[name]}"' in text, \
            (path, name)


def check_env(box: JawsBox, env: str) -> None:
    """Everything of one env on Cori: programs, their environment, files, dirs, ports."""
    level = LEVELS[env]
    status = box.status(JAWS, CORI, env)  # jaws sees both instances: its own and the granted jtm
    jaws, jtm = programs_of(status, "jaws"), programs_of(status, "jtm")
    assert sorted(jaws) == ["jaws-site-central-rpc", "jaws-site-daemon", "jaws-site-jtm-rpc"]
    # jtm grants jaws deploy: its owner's deploy agent runs beside its programs
    assert jtm.pop("siteboot-deploy-agent")["state"] == "RUNNING"
    assert sorted(jtm) == ["jaws-cromwell", "jaws-jtm"]
    [central] = [i for i in status["instances"] if i["name"] == "central"]
    assert central["state"] == "elsewhere"  # on its own host: not asked from this one
    for name, program in {**jaws, **jtm}.items():
        assert program["state"] == "RUNNING", (env, name, program)
        variables = environ(program["pid"])
        assert variables["LOG_LEVEL"] == level, (env, name)
        assert (variables["LC_ALL"], variables["LANG"], variables["PYTHONIOENCODING"]) == (
            "en_US.UTF-8", "en_US.UTF-8", "utf-8"), (env, name)
    state = Path(pwd.getpwnam(JAWS).pw_dir) / f".local/state/siteboot/jaws-{env}"
    jtm_state = Path(pwd.getpwnam(JTM).pw_dir) / f".local/state/siteboot/jaws-{env}"
    assert environ(jtm["jaws-jtm"]["pid"])["JTM_CONFIG_FILE"] == str(jtm_state / "jaws-jtm.conf")
    scratch = box.path("jtm_scratch", env)
    assert psutil.Process(jtm["jaws-cromwell"]["pid"]).cwd() == str(scratch)
    assert listening(box.port("jaws-cromwell", env))  # its port, from cromwell.conf
    logs = box.path("install_dir", env) / "logs"
    for name in jaws:
        log = (logs / name.replace("jaws-", "")).with_suffix(".log").read_text()
        assert f"log level {level}" in log, (env, name, log)
    assert (scratch / "jtm" / "jtm-manager.log").exists()

    assert_file(state / "jaws-site.conf", JAWS, "JAWS_DB_PW", "SITE_RMQ_PW", "JAWS_RMQ_PW")
    assert_file(jtm_state / "jaws-jtm.conf", JTM, "SITE_RMQ_PW", "JAWS_DB_PW")
    assert_file(jtm_state / "cromwell.conf", JTM, "JAWS_DB_PW")
    assert f"port = {box.port('jaws-cromwell', env)}" in (jtm_state / "cromwell.conf").read_text()
    assert_dir(logs, JAWS, JTM)
    assert_dir(box.path("jaws_scratch", env) / "inputs", JAWS, JTM)
    for folder in ("", "jtm", "cromwell-tmp", "cromwell-workflow-logs"):
        assert_dir(scratch / folder if folder else scratch, JTM, JTM)


def check_central(box: JawsBox, env: str) -> None:
    status = box.status(JAWS, CENTRAL, env)
    central = programs_of(status, "central")
    assert sorted(central) == ["central-auth", "central-rest", "central-rpc"]
    for name, program in central.items():
        assert program["state"] == "RUNNING", (env, name, program)
        assert environ(program["pid"])["LOG_LEVEL"] == LEVELS[env]
    assert listening(box.port("central-auth", env))
    assert listening(box.port("central-rest", env))
    state = Path(pwd.getpwnam(JAWS).pw_dir) / f".local/state/siteboot/jaws-{env}"
    assert_file(state / "jaws-central.conf", JAWS, "JAWS_DB_PW", "JAWS_RMQ_PW")
    assert_dir(box.path("central_install_dir", env) / "logs", JAWS, JAWS)


def test_the_real_site_runs_in_three_envs_under_two_accounts(jaws_box):
    box = jaws_box
    wheels = str(box.site.parent.parent / "rpc" / "dist")  # offline: pip uses local wheels only
    for env in ENVS:
        # the workload account first: its init does not wait for the jaws account's
        box.ran(JTM, CORI, "init", "--env", env, "--wheelhouse", wheels)
        output = box.ran(JAWS, CORI, "init", "--env", env, "--wheelhouse", wheels)
        assert "central: skipped: on jaws.lbl.gov" in output, output
    central_ports = [box.port(p, e) for p in ("central-auth", "central-rest") for e in ENVS]
    assert not any(listening(port) for port in central_ports)  # Cori's init left central alone
    for env in ENVS:
        check_env(box, env)

    for env in ENVS:  # then on central's host
        box.ran(JAWS, CENTRAL, "init", "--env", env, "--wheelhouse", wheels)
        check_central(box, env)

    # the jaws account controls jtm through the grant
    before = box.status(JTM, CORI, "staging")
    old = programs_of(before, "jtm")["jaws-jtm"]["pid"]
    box.ran(JAWS, CORI, "restart", "jaws-jtm", "--env", "staging")
    after = programs_of(box.status(JTM, CORI, "staging"), "jtm")["jaws-jtm"]
    assert after["state"] == "RUNNING"
    assert after["pid"] != old
    assert environ(after["pid"])["LOG_LEVEL"] == "DEBUG"

    for env in ENVS:
        for user, host in ((JAWS, CORI), (JTM, CORI), (JAWS, CENTRAL)):
            box.ran(user, host, "down", "--env", env)
    wait_until(lambda: not processes_under(box.base), timeout=60)
    assert not any(listening(port) for port in central_ports)
