"""Privilege separation with two real accounts (useradd), as at JAWS: `sbt_jaws` runs the
services instance, `sbt_jtm` the job runners; `sbt_jaws` is in group `sbt_jtm` and controls the
jtm instance with the key sbt_jtm publishes in shared_dir. `sbt_other` has no grant.
"""

from __future__ import annotations

import base64
import configparser
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import (
    SYSTEM_PYTHON,
    Interactive,
    free_ports,
    install_for_all,
    kill_all,
    processes_under,
    status_code,
    status_verdict,
)

pytestmark = [pytest.mark.slow, pytest.mark.users]

JAWS, JTM, OTHER = "sbt_jaws", "sbt_jtm", "sbt_other"


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def _drop_users() -> None:
    for user in (JAWS, JTM, OTHER):
        subprocess.run(["userdel", "-r", "-f", user], capture_output=True, check=False)
        subprocess.run(["groupdel", user], capture_output=True, check=False)


@dataclass
class TwoUsers:
    base: Path
    python: Path
    site: Path
    ports: dict[str, int]

    def command(self, user: str, *args: str) -> list[str]:
        """`siteboot ARGS` as ``user``, in the site's own venv."""
        home = pwd.getpwnam(user).pw_dir
        return ["runuser", "-u", user, "--", "env", f"HOME={home}", "NO_COLOR=1",
                f"SITEBOOT_SITE={self.site}",
                str(self.python), "-c", "from siteboot.cli import main; main()", *args]

    def run(self, user: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(user, *args), capture_output=True, text=True,
                              cwd=str(self.base), timeout=120, check=False)

    def as_user(self, user: str, code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", user, "--", str(self.python), "-c", code],
                              capture_output=True, text=True, timeout=60, check=False)

    def status(self, user: str, *args: str) -> tuple[int, dict[str, Any]]:
        result = self.run(user, "status", "--json", *args)
        return result.returncode, json.loads(result.stdout)

    def runtime(self, instance: str) -> Path:
        return self.run_root / instance

    @property
    def run_root(self) -> Path:
        return self.base / "tmp" / "pv-run"

    def key_path(self, user: str, instance: str) -> Path:
        return Path(pwd.getpwnam(user).pw_dir) / ".local/state/siteboot/pv-dev/keys" / f"{instance}.key"


@pytest.fixture(scope="module")
def two_users() -> Iterator[TwoUsers]:
    if os.geteuid() != 0 or not shutil.which("useradd") or not Path(SYSTEM_PYTHON).exists():
        pytest.skip("needs root, useradd and /usr/bin/python3")
    _drop_users()
    base = Path(tempfile.mkdtemp(prefix="sbu-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        for user in (JAWS, JTM, OTHER):
            _sh("useradd", "-m", "-U", "-s", "/bin/sh", user)
        _sh("usermod", "-aG", JTM, JAWS)
        python = install_for_all(base)
        (base / "tmp").mkdir()
        os.chmod(base / "tmp", 0o1777)  # stands in for /tmp
        _make_shared_parent(base / "tmp" / "pv-run")
        shared = base / "shared"
        shared.mkdir()
        os.chmod(shared, 0o1777)  # a project directory both accounts can write, sticky
        svc_port, jtm_port, web_port = free_ports(3)
        site = base / "pv.toml"
        site.write_text(textwrap.dedent(f"""
            [site]
            name = "pv"
            envs = ["dev"]
            runtime_dir = "{base}/tmp/pv-run"
            shared_dir = "{shared}/{{user}}"

            [instances.svc]
            user = "{JAWS}"
            port = {{ dev = {svc_port} }}

            [instances.jtm]
            user = "{JTM}"
            port = {{ dev = {jtm_port} }}
            group = "{JTM}"

            [programs.web]
            instance = "svc"
            command = "{{python}} -m siteboot.demo serve --port {{port}}"
            port = {{ dev = {web_port} }}
            startsecs = 1

            [programs.runner]
            instance = "jtm"
            command = "{{python}} -m siteboot.demo work --interval 1"
            startsecs = 1
            """))
        os.chmod(site, 0o644)
        yield TwoUsers(base, python, site, {"svc": svc_port, "jtm": jtm_port, "web": web_port})
    finally:
        for user in (JAWS, JTM):
            try:
                TwoUsers(base, base / "venv/bin/python", base / "pv.toml", {}).run(user, "down")
            except (KeyError, OSError):
                pass
        leftovers = processes_under(base)
        kill_all(leftovers)
        _drop_users()
        shutil.rmtree(base, ignore_errors=True)
        assert not leftovers, f"processes left running: {leftovers}"


def _make_shared_parent(path: Path) -> None:
    """What an admin does for a runtime dir two accounts share (root's, sticky, like /tmp)."""
    path.mkdir()
    os.chmod(path, 0o1777)


def _wait_ok(env: TwoUsers, user: str, *args: str) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + 20
    while True:
        rc, data = env.status(user, *args)
        if rc == 0 or time.monotonic() > deadline:
            assert rc == 0, data
            return data
        time.sleep(0.3)


def test_each_user_starts_its_own_instance_in_either_order(two_users):
    env = two_users
    # the workload account comes first
    result = env.run(JTM, "up")
    assert result.returncode == 0, result.stderr
    assert "jtm: started" in result.stdout
    assert "svc: skipped: owned by sbt_jaws: run as sbt_jaws" in result.stdout
    assert os.stat(env.run_root).st_mode & 0o7777 == 0o1777
    result = env.run(JAWS, "up")
    assert result.returncode == 0, result.stderr
    assert "svc: started" in result.stdout
    _wait_ok(env, JAWS)

    for instance, user in (("svc", JAWS), ("jtm", JTM)):
        info = os.stat(env.runtime(instance))
        assert pwd.getpwuid(info.st_uid).pw_name == user
        assert info.st_mode & 0o777 == 0o700
        supervisord = int((env.runtime(instance) / "supervisord.pid").read_text())
        proc = psutil.Process(supervisord)
        assert proc.username() == user
        assert all(child.username() == user for child in proc.children(recursive=True))

    # and the other order, after both are down
    assert env.run(JAWS, "down").returncode == 0
    assert env.run(JTM, "down").returncode == 0
    shutil.rmtree(env.run_root)
    _make_shared_parent(env.run_root)
    assert env.run(JAWS, "up").returncode == 0
    assert env.run(JTM, "up").returncode == 0
    _wait_ok(env, JAWS)


def test_the_other_user_cannot_reach_the_socket_or_the_key(two_users):
    env = two_users
    if env.run(JTM, "up").returncode or env.run(JAWS, "up").returncode:
        pytest.fail("instances did not start")
    socket_path = env.runtime("jtm") / "supervisor.sock"
    probe = env.as_user(JAWS, textwrap.dedent(f"""
        import socket
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect({str(socket_path)!r})
        except PermissionError:
            print("refused")
        """))
    assert probe.stdout.strip() == "refused", probe.stderr
    for reader, owner, instance in ((JAWS, JTM, "jtm"), (JTM, JAWS, "svc"), (OTHER, JTM, "jtm")):
        read = env.as_user(reader, f"open({str(env.key_path(owner, instance))!r}).read()")
        assert read.returncode != 0
        assert "PermissionError" in read.stderr
    key_file = env.key_path(JTM, "jtm")
    assert os.stat(key_file).st_mode & 0o777 == 0o600
    assert os.stat(key_file.parent.parent).st_mode & 0o777 == 0o700


def _http_status(port: int, key: str | None) -> int:
    body = (b"<?xml version='1.0'?><methodCall><methodName>supervisor.getState</methodName>"
            b"<params></params></methodCall>")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/RPC2", data=body,
                                     headers={"Content-Type": "text/xml"})
    if key is not None:
        token = base64.b64encode(f"siteboot:{key}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_http_port_refuses_without_the_key(two_users):
    env = two_users
    assert env.run(JTM, "up").returncode == 0
    key = env.key_path(JTM, "jtm").read_text().strip()
    assert _http_status(env.ports["jtm"], None) == 401
    assert _http_status(env.ports["jtm"], "wrong") == 401
    assert _http_status(env.ports["jtm"], key) == 200
    # bound to loopback only
    bound = {(c.laddr[0], c.laddr[1]) for c in psutil.net_connections("inet")
             if c.laddr and c.status == "LISTEN"}
    ours = {(ip, port) for ip, port in bound if port in (env.ports["jtm"], env.ports["svc"])}
    assert ("127.0.0.1", env.ports["jtm"]) in ours
    assert {ip for ip, _ in ours} == {"127.0.0.1"}


def test_group_grant_lets_the_member_control_the_instance(two_users):
    env = two_users
    assert env.run(JTM, "up").returncode == 0
    assert env.run(JAWS, "up").returncode == 0
    shared_key = env.base / "shared" / JTM / "jtm.key"
    info = os.stat(shared_key)
    assert info.st_mode & 0o777 == 0o640
    assert grp.getgrgid(info.st_gid).gr_name == JTM

    data = _wait_ok(env, JAWS)
    jtm = next(i for i in data["instances"] if i["name"] == "jtm")
    assert jtm["state"] == "running"
    assert jtm["url"] == f"http://127.0.0.1:{env.ports['jtm']}"
    pid_before = jtm["programs"][0]["pid"]
    result = env.run(JAWS, "restart", "jtm:runner")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "jtm:runner: restarted" in result.stdout
    jtm = next(i for i in env.status(JAWS)[1]["instances"] if i["name"] == "jtm")
    assert jtm["programs"][0]["pid"] != pid_before

    # the member cannot start or stop the owner's supervisord itself
    result = env.run(JAWS, "down", "-i", "jtm")
    assert result.returncode == 1  # named on purpose: a CI job must see that nothing happened
    assert "jtm: failed: owned by sbt_jtm" in result.stdout
    result = env.run(JAWS, "up", "-i", "jtm")
    assert result.returncode == 1
    assert "jtm: failed: owned by sbt_jtm" in result.stdout
    assert env.status(JTM)[1]["instances"][1]["state"] == "running"


def test_no_grant_means_no_control(two_users):
    env = two_users
    assert env.run(JTM, "up").returncode == 0
    assert env.run(JAWS, "up").returncode == 0
    rc, data = env.status(OTHER)
    assert rc == 3
    states = {i["name"]: i for i in data["instances"]}
    assert states["jtm"]["state"] == "no key"
    assert "not in group sbt_jtm" in states["jtm"]["error"]
    assert states["svc"]["state"] == "not yours"
    assert "owned by sbt_jaws, no grant" in states["svc"]["error"]
    # the owner of the jtm instance sees its own as running, and svc as not its business
    rc, data = env.status(JTM)
    svc = next(i for i in data["instances"] if i["name"] == "svc")
    assert svc["state"] == "not yours"
    assert rc == 0
    result = env.run(OTHER, "stop", "runner")
    assert result.returncode == 1
    assert "not in group" in result.stdout


def test_root_never_starts_another_users_instance(two_users):
    env = two_users
    for user in (JAWS, JTM):
        env.run(user, "down")
    result = subprocess.run(
        [str(env.python), "-c", "from siteboot.cli import main; main()", "up", "--site",
         str(env.site)], capture_output=True, text=True, cwd=str(env.base), check=False,
        env=dict(os.environ, NO_COLOR="1"))
    assert result.returncode == 0, result.stderr
    assert "svc: skipped: owned by sbt_jaws" in result.stdout
    assert "jtm: skipped: owned by sbt_jtm" in result.stdout
    assert processes_under(env.base) == []


def test_squatted_runtime_dirs_are_refused(two_users):
    env = two_users
    for user in (JAWS, JTM):
        env.run(user, "down")
    shutil.rmtree(env.run_root, ignore_errors=True)
    # nobody but root made the shared parent (after a reboot): nobody may make it ...
    result = env.run(JTM, "up")
    assert result.returncode == 1
    assert "must be made by root" in result.stdout
    assert f"install -d -m 1777 {env.run_root}" in result.stdout
    # ... because whoever makes it could move the other account's instance dir: a site user
    # (sbt_jaws) that made it first, or someone outside the site, is refused alike
    for squatter in (JAWS, OTHER):
        squat = env.as_user(squatter, textwrap.dedent(f"""
            import os
            os.mkdir({str(env.run_root)!r}); os.chmod({str(env.run_root)!r}, 0o1777)
            """))
        assert squat.returncode == 0, squat.stderr
        result = env.run(JTM, "up")
        assert result.returncode == 1
        assert f"it is {squatter}'s, mode 1777" in result.stdout
        assert not env.runtime("jtm").exists()
        shutil.rmtree(env.run_root)

    # a proper shared parent, but someone outside the site took the instance's own dir
    _make_shared_parent(env.run_root)
    squat = env.as_user(OTHER, f"import os; os.mkdir({str(env.runtime('jtm'))!r}, 0o777)")
    assert squat.returncode == 0, squat.stderr
    result = env.run(JTM, "up")
    assert result.returncode == 1
    assert "jtm: failed" in result.stdout
    assert "belongs to sbt_other: that account could rename or replace it" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    # the other instance is unaffected
    assert env.run(JAWS, "up").returncode == 0
    shutil.rmtree(env.runtime("jtm"))
    assert env.run(JTM, "up").returncode == 0


def test_no_key_on_any_command_line(two_users):
    env = two_users
    assert env.run(JTM, "up").returncode == 0
    assert env.run(JAWS, "up").returncode == 0
    assert env.run(JAWS, "ctl", "-i", "jtm", "--", "status").returncode == 0
    keys = [env.key_path(JTM, "jtm").read_text().strip(),
            env.key_path(JAWS, "svc").read_text().strip()]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue
        assert not any(key in text for key in keys), cmdline


RUNNER = "runner"  # a program is a group of its own: supervisorctl names it alone


def _ctl(env: TwoUsers, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    return env.run(user, "ctl", "-i", "jtm", "--", *args)


def test_a_member_ctl_gets_the_control_grant_and_no_more(two_users):
    env = two_users
    assert env.run(JTM, "up").returncode == 0
    _wait_ok(env, JTM)
    result = _ctl(env, JAWS, "status")
    assert result.returncode == 0, result.stdout + result.stderr
    assert RUNNER in result.stdout
    assert "RUNNING" in result.stdout
    result = _ctl(env, JAWS, "restart", RUNNER)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [f"{RUNNER}: stopped", f"{RUNNER}: started"]
    result = _ctl(env, JAWS, "tail", RUNNER)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "heartbeat" in result.stdout

    supervisord = int((env.runtime("jtm") / "supervisord.pid").read_text())
    for args, method in ((["shutdown"], "shutdown"), (["reload"], "restart"),
                         (["avail"], "getAllConfigInfo"), (["reread"], "reloadConfig"),
                         (["update"], "reloadConfig"), (["clear", RUNNER], "clearProcessLogs"),
                         (["maintail"], "readLog")):
        result = _ctl(env, JAWS, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        refusal = f"supervisor.{method}: not part of the control grant, it stays with the owner {JTM}"
        assert refusal in result.stderr  # siteboot says so when supervisorctl is done ...
        assert f"run as {JTM}" in result.stderr
        if args == ["shutdown"]:
            assert refusal in result.stdout  # ... and supervisorctl shows the fault (most commands)
    # nothing of that reached the instance: the same supervisord, its program still running
    assert int((env.runtime("jtm") / "supervisord.pid").read_text()) == supervisord
    _wait_ok(env, JTM)
    assert "stays with the owner" not in env.run(JTM, "ctl", "-i", "jtm", "--", "avail").stdout


_ATTACKER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(16)
print("listening", flush=True)
with open(sys.argv[2], "ab") as record:
    while True:
        connection, _ = server.accept()
        record.write(b"[connection]"); record.flush()
        with connection:
            try:
                while True:
                    data = connection.recv(65536)
                    if not data:
                        break
                    record.write(data); record.flush()
            except OSError:
                pass
"""


def _first_answer(socket_path: str, request: bytes) -> bytes:
    """What the relay answers to ``request`` (b"" when it closes the connection unanswered)."""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(socket_path)
            probe.sendall(request)
            return probe.recv(65536)
        except OSError:
            return b""


def test_a_port_grabbed_in_the_middle_of_a_ctl_session_gets_no_key(two_users):
    """Issue 8.4: a member keeps `ctl` open, the owner stops the instance, a stranger binds its
    port; the member's next command must not hand the key to the stranger."""
    env = two_users
    assert env.run(JTM, "up").returncode == 0
    _wait_ok(env, JTM)
    key = env.key_path(JTM, "jtm").read_text().strip()
    record = env.base / "tmp" / "attacker.bin"
    session = Interactive(env.command(JAWS, "ctl", "-i", "jtm"), cwd=env.base)
    attacker: subprocess.Popen[str] | None = None
    try:
        assert RUNNER in session.expect("pv-jtm-dev> ")  # it starts with `status`
        supervisorctl = next(p for p in psutil.Process(session.proc.pid).children(recursive=True)
                             if "supervisor.supervisorctl" in " ".join(p.cmdline()))
        assert supervisorctl.username() == JAWS
        conf = Path(supervisorctl.cmdline()[supervisorctl.cmdline().index("-c") + 1])
        assert key not in conf.read_text()
        info = os.stat(conf.parent)
        assert (pwd.getpwuid(info.st_uid).pw_name, info.st_mode & 0o777) == (JAWS, 0o700)

        # the relay answers only the member's processes: root, credential and all, gets nothing
        options = configparser.ConfigParser()
        options.read(conf)
        client = options["supervisorctl"]
        credential = base64.b64encode(f"{client['username']}:{client['password']}".encode())
        body = (b"<?xml version='1.0'?><methodCall><methodName>supervisor.getPID</methodName>"
                b"<params></params></methodCall>")
        request = (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + credential
                   + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        relay_socket = client["serverurl"][len("unix://"):]
        assert _first_answer(relay_socket, request) == b""
        probe = ("import socket\nprobe = socket.socket(socket.AF_UNIX)\n"
                 f"probe.connect({relay_socket!r})\nprobe.sendall({request!r})\n"
                 "print(probe.recv(65536)[:15])\n")
        as_member = env.as_user(JAWS, probe)
        assert "HTTP/1.1 200 OK" in as_member.stdout, as_member.stderr  # the probe itself works
        assert "PermissionError" in env.as_user(OTHER, probe).stderr  # its dir is 0700

        # tail -f streams through the relay; Ctrl-C (SIGINT to supervisorctl) ends it, not the session
        session.send(f"tail -f {RUNNER}")
        session.expect("heartbeat")
        supervisorctl.send_signal(signal.SIGINT)
        session.expect("pv-jtm-dev> ")

        assert env.run(JTM, "down", "-i", "jtm").returncode == 0
        attacker = subprocess.Popen(["runuser", "-u", OTHER, "--", str(env.python), "-c", _ATTACKER,
                                     str(env.ports["jtm"]), str(record)],
                                    stdout=subprocess.PIPE, text=True)
        assert attacker.stdout is not None
        assert attacker.stdout.readline() == "listening\n"
        session.send("status")
        answer = session.expect("pv-jtm-dev> ")
        other_uid = pwd.getpwnam(OTHER).pw_uid
        assert f"port {env.ports['jtm']} is held by uid {other_uid}" in answer
        assert "the key was not sent" in answer
        code, rest = session.finish()
        assert code == 1  # siteboot reports the failed check when the session ends
        assert "the key was not sent" in rest
        # a one-shot ctl stops before supervisorctl even starts
        result = _ctl(env, JAWS, "status")
        assert result.returncode == 1
        assert "the key was not sent" in result.stderr
    finally:
        session.kill()
        if attacker is not None:  # runuser waits for its child: stop both
            kill_all([p.pid for p in psutil.Process(attacker.pid).children(recursive=True)])
            attacker.kill()
            attacker.communicate()
    received = record.read_bytes()
    assert received.startswith(b"[connection]")  # the relay did connect to the attacker ...
    assert set(received.split(b"[connection]")) == {b""}  # ... and sent nothing at all
    assert key.encode() not in received
    assert b"Authorization" not in received
    assert not conf.parent.exists()
    assert env.run(JTM, "up").returncode == 0


def test_cron_installs_revive_lines_idempotently_in_the_accounts_crontab(two_users):
    env = two_users
    if not shutil.which("crontab"):
        pytest.skip("needs crontab (Debian: cron)")
    own_line = "0 3 * * * echo kept by the owner"
    subprocess.run(["crontab", "-u", OTHER, "-"], input=own_line + "\n", text=True, check=True)
    try:
        printed = env.run(OTHER, "cron")
        assert printed.returncode == 0, printed.stderr
        assert printed.stdout.count("revive --all-envs --site") == 2
        assert printed.stdout.splitlines()[1].startswith("@reboot ")
        assert printed.stdout.splitlines()[2].startswith("*/5 * * * * ")

        first = env.run(OTHER, "cron", "--install")
        assert first.returncode == 0, first.stderr
        assert "crontab: installed" in first.stdout
        again = env.run(OTHER, "cron", "--install")
        assert "crontab: already installed" in again.stdout
        installed = subprocess.run(["crontab", "-u", OTHER, "-l"], capture_output=True, text=True,
                                   check=True).stdout.splitlines()
        assert installed[0] == own_line  # the account's own lines are untouched
        assert installed[1:] == printed.stdout.splitlines()
        doctor = env.run(OTHER, "doctor", "--json")
        cron = [f for f in json.loads(doctor.stdout)["findings"] if f["check"] == "cron"]
        assert cron == [{"check": "cron", "ok": True, "fix": "",
                         "message": "the crontab revives the site at boot and every 5 minutes"}]

        removed = env.run(OTHER, "cron", "--remove")
        assert "crontab: removed" in removed.stdout
        assert subprocess.run(["crontab", "-u", OTHER, "-l"], capture_output=True, text=True,
                              check=True).stdout.splitlines() == [own_line]
        assert "not installed" in env.run(OTHER, "cron", "--remove").stdout
    finally:
        subprocess.run(["crontab", "-u", OTHER, "-r"], capture_output=True, check=False)


def test_a_planted_site_root_runs_nothing_as_the_victim(two_users):
    """Attack: a folder of sbt_other's holding `sites -> <trusted sites/>` and its own templates
    with Jinja2 code and an extra [program:...]; sbt_jaws works below it."""
    env = two_users
    planted = env.base / "tmp" / "planted"
    proof = env.base / "tmp" / "pwned"
    script = (f"import os\nos.makedirs('{planted}/templates')\nos.makedirs('{planted}/work')\n"
              f"os.symlink('{env.base}/src/sites', '{planted}/sites')\n"
              f"open('{planted}/templates/supervisord.conf.j2', 'w').write("
              f"\"{{{{ ''.__class__.__mro__[1].__subclasses__() }}}}\\n"
              f"[program:evil]\\ncommand = touch {proof}\\n\")\n")
    made = env.as_user(OTHER, script)
    assert made.returncode == 0, made.stderr
    out = env.base / "tmp" / "victim-out"
    cmd = ["runuser", "-u", JAWS, "--", "env", f"HOME={pwd.getpwnam(JAWS).pw_dir}", "NO_COLOR=1",
           f"SITEBOOT_SITE={env.site}", str(env.python), "-c",
           "from siteboot.cli import main; main()", "render", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=str(planted / "work"),
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert f"ignoring the site root {planted}" in result.stderr
    assert f"{planted} belongs to sbt_other" in result.stderr
    rendered = "".join(p.read_text() for p in out.iterdir())
    assert "[program:evil]" not in rendered
    assert "__subclasses__" not in rendered
    assert not proof.exists()
    # and `up` from there says which site file and template it used: the shipped ones
    up = subprocess.run([*cmd[:-3], "up", "-i", "svc"], capture_output=True, text=True,
                        cwd=str(planted / "work"), timeout=120, check=False)
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"using site file {env.site}, template {env.base}/src/templates/supervisord.conf.j2" \
        in up.stdout
    assert not proof.exists()
    env.run(JAWS, "down", "-i", "svc")


def test_a_home_of_another_account_is_not_used(two_users):
    """cron or `sudo -u sbt_jaws` without -H: $HOME still names the caller's home."""
    env = two_users
    assert env.run(JAWS, "up", "-i", "svc").returncode == 0
    try:
        _wait_ok(env, JAWS, "-i", "svc")
        cmd = ["runuser", "-u", JAWS, "--", "env", f"HOME={pwd.getpwnam(JTM).pw_dir}", "NO_COLOR=1",
               f"SITEBOOT_SITE={env.site}", str(env.python), "-c",
               "from siteboot.cli import main; main()", "status", "-i", "svc", "--json"]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=str(env.base), timeout=60,
                                check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"$HOME ({pwd.getpwnam(JTM).pw_dir}) belongs to another account; using " \
               f"{JAWS}'s home {pwd.getpwnam(JAWS).pw_dir}" in result.stderr
        assert json.loads(result.stdout)["instances"][0]["state"] == "running"
    finally:
        env.run(JAWS, "down", "-i", "svc")




def test_a_squatted_shared_dir_never_receives_the_key(two_users):
    """Attack: sbt_other makes the shared_dir first, 0777 with a default ACL for itself."""
    env = two_users
    if not shutil.which("setfacl"):
        pytest.skip("needs setfacl (Debian: acl)")
    env.run(JTM, "down", "-i", "jtm")
    published = env.base / "shared" / JTM
    shutil.rmtree(published, ignore_errors=True)
    squat = env.as_user(OTHER, f"import os; os.mkdir({str(published)!r}); "
                               f"os.chmod({str(published)!r}, 0o777)")
    assert squat.returncode == 0, squat.stderr
    subprocess.run(["runuser", "-u", OTHER, "--", "setfacl", "-d", "-m", f"u:{OTHER}:r",
                    str(published)], check=True)
    try:
        result = env.run(JTM, "up", "-i", "jtm")
        assert result.returncode == 0, result.stdout  # the instance runs; only the grant waits
        assert "members of sbt_jtm cannot control it yet" in result.stdout
        assert f"{published} belongs to {OTHER}" in result.stdout
        assert not (published / "jtm.key").exists()
        member = env.run(JAWS, "status", "-i", "jtm", "--json")
        assert json.loads(member.stdout)["instances"][0]["state"] == "no key"
    finally:
        shutil.rmtree(published, ignore_errors=True)
    # the owner's own dir, but with an ACL on it: refused as well
    env.as_user(JTM, f"import os; os.mkdir({str(published)!r}, 0o755)")
    subprocess.run(["runuser", "-u", JTM, "--", "setfacl", "-m", f"u:{OTHER}:rx", str(published)],
                   check=True)
    result = env.run(JTM, "up", "-i", "jtm")
    assert "has an extended ACL" in result.stdout
    subprocess.run(["runuser", "-u", JTM, "--", "setfacl", "-b", str(published)], check=True)
    result = env.run(JTM, "up", "-i", "jtm")
    assert "cannot control it" not in result.stdout
    assert (published / "jtm.key").exists()
    _wait_ok(env, JAWS, "-i", "jtm")


def test_keys_rotate_and_an_old_key_stops_working(two_users):
    env = two_users
    assert env.run(JTM, "up", "-i", "jtm").returncode == 0
    _wait_ok(env, JAWS, "-i", "jtm")
    old = env.key_path(JTM, "jtm").read_text().strip()
    result = env.run(JTM, "rotate-key", "-i", "jtm")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "jtm: rotated: supervisord restarted with the new key" in result.stdout
    new = env.key_path(JTM, "jtm").read_text().strip()
    assert new != old
    assert (env.base / "shared" / JTM / "jtm.key").read_text().strip() == new  # republished
    _wait_ok(env, JAWS, "-i", "jtm")  # the member follows the grant
    assert _http_status(env.ports["jtm"], old) == 401  # a leaked key is worth nothing now
    assert _http_status(env.ports["jtm"], new) == 200
    # a supervisord started afresh (down, up: a reboot) gets a new key too
    assert env.run(JTM, "down", "-i", "jtm").returncode == 0
    assert env.run(JTM, "up", "-i", "jtm").returncode == 0
    assert env.key_path(JTM, "jtm").read_text().strip() not in (old, new)
    _wait_ok(env, JAWS, "-i", "jtm")


def test_an_unreadable_own_key_leaves_the_rest_of_the_report(two_users):
    """Issue 11, defect 5: one key file its owner cannot read (a stray chmod) was `internal
    error: PermissionError` and no JSON; now that instance says so and the rest is shown."""
    env = two_users
    assert env.run(JTM, "up").returncode == 0
    assert env.run(JAWS, "up").returncode == 0
    _wait_ok(env, JAWS)
    key = env.key_path(JAWS, "svc")
    os.chmod(key, 0)
    try:
        result = env.run(JAWS, "status", "--json")
        assert result.returncode == 3, result.stdout + result.stderr  # UNKNOWN
        assert "internal error" not in result.stderr
        svc, jtm = json.loads(result.stdout)["instances"]
        assert svc["state"] == "no key"
        assert f"cannot read key file {key}: permission denied" in svc["error"]
        assert jtm["state"] == "running"
        assert [p["state"] for p in jtm["programs"]] == ["RUNNING"]
    finally:
        os.chmod(key, 0o600)
    _wait_ok(env, JAWS)


def test_a_granted_member_s_status_is_quick_and_says_what_the_full_one_says(two_users):
    """sbt_jaws asks its own svc over its socket and sbt_jtm's jtm over TCP with the key granted
    to its group, from the plan cache's digest without loading the model."""
    env = two_users
    for user in (JTM, JAWS):
        assert env.run(user, "up").returncode == 0
    _wait_ok(env, JAWS)
    environ = {"HOME": pwd.getpwnam(JAWS).pw_dir, "NO_COLOR": "1", "SITEBOOT_SITE": str(env.site)}

    def status(*args: str, full: bool = False) -> tuple[int, str, bool]:
        return status_verdict(subprocess.run(  # from the site's dir, as `env.run`: its siteboot
            ["runuser", "-u", JAWS, "--", str(env.python), "-c", status_code(args, full, environ)],
            capture_output=True, text=True, timeout=60, check=False, cwd=str(env.base)))

    status()  # caches the plan
    for args in ((), ("--json",), ("-i", "jtm")):
        code, output, loaded = status(*args)
        assert not loaded, output
        full_code, full_output, _loaded = status(*args, full=True)
        assert (code, re.sub(r"\b\d+s\b|\"uptime_s\": \d+", "N", output)) == \
            (full_code, re.sub(r"\b\d+s\b|\"uptime_s\": \d+", "N", full_output))
        assert code == 0, output
    assert f"jtm ({JTM}) running" in output
    assert f"http://127.0.0.1:{env.ports['jtm']}" in output


def test_a_granted_member_follows_a_log_over_rpc(two_users):
    """Issue 11, defect 2: a member cannot read the owner's files; `tail -f` goes over RPC and
    prints each line once (it used to print the whole log again on every poll)."""
    import subprocess
    import time

    env = two_users
    assert env.run(JTM, "up").returncode == 0
    _wait_ok(env, JTM)
    home = pwd.getpwnam(JAWS).pw_dir
    follower = subprocess.Popen(
        ["runuser", "-u", JAWS, "--", "env", f"HOME={home}", "NO_COLOR=1",
         f"SITEBOOT_SITE={env.site}", str(env.python), "-c", "from siteboot.cli import main; main()",
         "tail", "-f", "runner", "--bytes", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(env.base))
    try:
        time.sleep(4.5)
    finally:
        follower.terminate()
        out, err = follower.communicate(timeout=10)
    beats = [int(line.rsplit(" ", 1)[1]) for line in out.splitlines() if "heartbeat" in line]
    assert len(beats) >= 3, out + err
    assert beats == list(range(beats[0], beats[0] + len(beats)))


def test_a_granted_member_reads_every_log_with_logs(two_users):
    """Issue 9, item 4: `logs` as a member: its own instance from the files, the granted one
    over RPC; someone the grant does not cover gets the refusal as the error, no lines."""
    env = two_users
    assert env.run(JTM, "up").returncode == 0
    assert env.run(JAWS, "up").returncode == 0
    _wait_ok(env, JAWS)
    import time

    deadline = time.monotonic() + 30
    while True:  # until each program has written something
        result = env.run(JAWS, "logs", "-n", "2")
        labels = {line.split(" | ")[0].strip() for line in result.stdout.splitlines()}
        if {"web", "runner"} <= labels or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert result.returncode == 0, result.stderr
    assert {"web", "runner"} <= labels, result.stdout
    assert any(line.startswith("runner") and "heartbeat" in line
               for line in result.stdout.splitlines())
    refused = env.run(OTHER, "logs", "-i", "jtm")
    assert refused.returncode == 1, refused.stdout
    assert refused.stdout == ""
