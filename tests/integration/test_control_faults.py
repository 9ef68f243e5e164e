"""Issue 11, defects 2, 5, 9 and 11, against real supervisord: `tail -f` across fast rotations
(files and RPC), control characters over XML-RPC, a key file that holds no key, concurrent
restarts, and crash loops that outlast startsecs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from siteboot import control
from siteboot.plan import Plan, make_plan
from siteboot.site import load_site
from tests.helpers import SITEBOOT

pytestmark = pytest.mark.slow

COUNTER = """\
import itertools, sys, time
pause = float(sys.argv[1])
for n in itertools.count():
    sys.stdout.write("line %d\\n" % n)
    if n % 20 == 0:
        time.sleep(pause)
"""

CONTROLS = "\x1b[31mred\x1b[0m " + "".join(chr(c) for c in range(32)) + " \x1b[1mend\x1b[0m\n"
PRINTER = f"""\
import os, sys, time
sys.stdout.write({CONTROLS!r})
sys.stdout.flush()
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
sys.stdout.write("after " + {CONTROLS!r})
sys.stdout.flush()
time.sleep(1000)
"""


def script_site(site_factory: Any, tmp_path: Path, name: str, source: str, args: str,
                extra: str = "") -> Any:
    """A site whose alpha runs ``source`` (a Python script) as program ``name``; started."""
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    site = site_factory(f"""
        [programs.{name}]
        instance = "alpha"
        command = "{{python}} -u {path} {args}"
        startsecs = 0
        {extra}
        """)
    site.run("up", check=True)
    return site


def plan_of(site: Any) -> Plan:
    return make_plan(load_site(site.path), "dev")


def check_lines(text: str) -> tuple[list[int], list[str]]:
    """The numbers printed, asserting each comes once, in order, and every gap right after a
    notice line; and the notices."""
    numbers: list[int] = []
    notices: list[str] = []
    announced = False
    for line in text.splitlines():
        if line.startswith("==> "):
            notices.append(line)
            announced = True
            continue
        if not line.startswith("line "):
            continue
        number = int(line.split()[1])
        if numbers:
            assert number > numbers[-1], f"{number} after {numbers[-1]}: twice or out of order"
            assert number == numbers[-1] + 1 or announced, \
                f"lines {numbers[-1] + 1}..{number - 1} lost without a notice"
        numbers.append(number)
        announced = False
    return numbers, notices


def counter_site(site_factory: Any, tmp_path: Path, pause: float, maxbytes: str = "4KB") -> Any:
    return script_site(site_factory, tmp_path, "counter", COUNTER, str(pause),
                       f'log_maxbytes = "{maxbytes}"\nlog_backups = 3')


def follow_in_process(site: Any, name: str, seconds: float, nbytes: int = 0) -> str:
    """`tail -f` over RPC, as a granted member (who cannot read the files) gets it."""
    out: list[str] = []
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    try:
        control.tail_over_rpc(plan_of(site), name, out.append, follow=True, nbytes=nbytes,
                              stop=stop)
    finally:
        timer.cancel()
    return "".join(out)


# --------------------------------------------------------------------------------------------
# defect 2: tail -f


def test_tail_follow_reads_every_line_once_across_fast_rotations(site_factory, tmp_path):
    site = counter_site(site_factory, tmp_path, pause=0.002)  # thousands of lines a second
    follower = subprocess.Popen([*SITEBOOT, "tail", "-f", "counter", "--bytes", "0"],
                                env=site.env, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(4)  # a 4 KB log with 3 backups rotates many times a second
    finally:
        follower.send_signal(signal.SIGINT)
        out, _ = follower.communicate(timeout=10)
    assert follower.returncode == 130
    numbers, notices = check_lines(out)
    assert len(numbers) > 5000, out[-300:]
    logs = site.runtime("alpha") / "logs"
    assert (logs / "counter.out.log.3").exists()  # it did rotate, past all its backups
    # the owner reads the backups: with this pace nothing is lost (a notice would say so)
    assert notices == [], notices[:3]
    assert numbers == list(range(numbers[0], numbers[-1] + 1))


def test_tail_follow_over_rpc_never_repeats_and_says_what_it_lost(site_factory, tmp_path):
    site = counter_site(site_factory, tmp_path, pause=0.002)
    out = follow_in_process(site, "counter", 4)
    numbers, notices = check_lines(out)
    assert len(numbers) > 2000, out[-300:]
    # over RPC the rotated files are out of reach: each rotation costs lines, and says so
    assert notices
    assert all("over RPC the rotated file cannot be read: lines were lost here" in n
               for n in notices)


def test_tail_follow_over_rpc_without_rotation_gets_every_line(site_factory, tmp_path):
    site = counter_site(site_factory, tmp_path, pause=0.01, maxbytes="50MB")
    time.sleep(0.5)
    out = follow_in_process(site, "counter", 3, nbytes=100)
    numbers, notices = check_lines(out)
    assert notices == []
    assert len(numbers) > 1000
    assert numbers == list(range(numbers[0], numbers[-1] + 1))
    # and it is what the file holds: nothing twice (the defect printed 91 lines of 18)
    logged = (site.runtime("alpha") / "logs" / "counter.out.log").read_text()
    assert "\n".join(f"line {n}" for n in numbers) in logged


def test_control_characters_pass_through_rpc(site_factory, tmp_path):
    site = script_site(site_factory, tmp_path, "printer", PRINTER, str(tmp_path / "go"))
    log = site.runtime("alpha") / "logs" / "printer.out.log"
    deadline = time.monotonic() + 10
    while CONTROLS not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.1)

    once = site.run("tail", "printer")
    assert once.returncode == 0, once.stderr  # was: not well-formed (invalid token)
    assert "red" in once.stdout
    out: list[str] = []
    control.tail_over_rpc(plan_of(site), "printer", out.append, nbytes=len(CONTROLS.encode()))
    assert "".join(out) == CONTROLS  # every byte, CR and NUL included
    out.clear()
    stop = threading.Event()
    follower = threading.Thread(target=control.tail_over_rpc, args=(
        plan_of(site), "printer", out.append, False, True, len(CONTROLS.encode())),
        kwargs={"stop": stop})
    follower.start()
    try:
        (tmp_path / "go").touch()  # the program writes its second line now
        deadline = time.monotonic() + 10
        while "after" not in "".join(out) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        follower.join(timeout=10)
    assert "".join(out) == CONTROLS + "after " + CONTROLS
    status = site.run("status", "--json")
    assert status.returncode == 0, status.stdout


# --------------------------------------------------------------------------------------------
# defect 5: a key file that holds no key


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_broken_key_file_is_that_instance_s_error_only(site_factory, kind):
    site = site_factory()
    site.run("up", check=True)
    site.wait_status(0)
    key = site.state() / "keys" / "alpha.key"
    saved = key.read_text()
    key.unlink()
    if kind == "directory":
        key.mkdir()
    else:
        os.mkfifo(key)
    try:
        result = site.run("status", "--json")
        assert result.returncode == 3, result.stdout + result.stderr  # UNKNOWN
        assert "internal error" not in result.stderr
        data = json.loads(result.stdout)  # a document for the monitor, whatever happened
        alpha, beta = data["instances"]
        assert alpha["state"] == "no key"
        expected = "is a directory" if kind == "directory" else "is a FIFO"
        assert expected in alpha["error"]
        assert str(key) in alpha["error"]
        assert beta["state"] == "running"
        assert [p["state"] for p in beta["programs"]] == ["RUNNING", "RUNNING"]
        table = site.run("status")
        assert table.returncode == 3
        assert "worker_00" in table.stdout
        # stopped behind siteboot's back (not an operator stop it records): CRITICAL still wins
        site.run("ctl", "-i", "beta", "--", "stop", "it-dev:worker_00", check=True)
        assert site.status()[0] == 2
        site.run("ctl", "-i", "beta", "--", "start", "it-dev:worker_00", check=True)
    finally:
        if key.is_dir():
            key.rmdir()
        else:
            key.unlink()
        key.write_text(saved)
        os.chmod(key, 0o600)
    assert site.status()[0] == 0


# --------------------------------------------------------------------------------------------
# defect 9: concurrent restarts


def test_concurrent_restarts_both_succeed(site_factory):
    site = site_factory()
    site.run("up", check=True)
    site.wait_status(0)

    def pids(name: str) -> list[int]:
        return [p["pid"] for i in site.status()[1]["instances"] for p in i["programs"]
                if p["name"].startswith(name)]

    for args, prefix in ((("restart", "web"), "web"), (("restart", "web"), "web"),
                         (("restart", "worker"), "worker"), (("restart", "all"), "")):
        before = pids(prefix)
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda command: site.run(*command, timeout=60), [args] * 3))
        for result in results:
            assert result.returncode == 0, result.stdout + result.stderr
            assert "still RUNNING" not in result.stdout
            assert result.stdout.count("restarted") == len(result.stdout.splitlines())
        after = pids(prefix)
        assert all(a and a not in before for a in after), (before, after)
    assert site.status()[0] == 0


def test_concurrent_starts_and_stops(site_factory):
    site = site_factory()
    site.run("up", check=True)
    site.wait_status(0)
    for action, message in (("stop", "stopped"), ("start", "started")):
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda command: site.run(command, "worker", timeout=60),
                                    [action] * 3))
        for result in results:
            assert result.returncode == 0, result.stdout + result.stderr
        assert any(message in r.stdout for r in results)
    assert site.status()[0] == 0


# --------------------------------------------------------------------------------------------
# defect 11: crash loops


def test_a_crash_loop_longer_than_startsecs_is_a_warning(site_factory):
    site = site_factory("""
        [programs.crashy]
        instance = "alpha"
        command = "/bin/sh -c 'sleep 2; exit 3'"
        startsecs = 1
        crash_loop_restarts = 2
        crash_loop_window = 300

        [programs.steady]
        instance = "beta"
        command = "{python} -m siteboot.demo work --interval 1"
        startsecs = 1
        """)
    site.run("up", check=True)
    deadline = time.monotonic() + 60
    while True:
        rc, data = site.status("-i", "alpha")
        (crashy,) = data["instances"][0]["programs"]
        # RUNNING each time (startsecs = 1 < 2 s): the state alone looks healthy
        if crashy["state"] == "RUNNING" and crashy["restarts"] >= 3:
            break
        assert time.monotonic() < deadline, data
        time.sleep(0.3)
    assert rc == 1, data
    assert data["ok"] is False
    assert crashy["last_exit"]["reason"] == "exit status 3"
    assert crashy["last_exit"]["expected"] is False
    assert 0 <= crashy["last_exit"]["ago_s"] < 60
    assert {"name", "group", "state", "pid", "uptime_s", "exitstatus", "spawnerr", "restarts",
            "last_exit", "health", "health_detail", "backoff", "log_tail"} == set(crashy)
    table = site.run("status", "-i", "alpha")
    assert table.returncode == 1
    assert "crash loop:" in table.stdout
    assert "restarts" in table.stdout

    rc, data = site.status("-i", "beta")
    assert rc == 0, data
    assert data["instances"][0]["programs"][0]["restarts"] == 0
    site.run("restart", "steady", check=True)  # an operator's restart is no crash
    rc, data = site.status("-i", "beta")
    assert rc == 0
    assert data["instances"][0]["programs"][0]["restarts"] == 0


def test_status_is_still_one_request(site_factory):
    """The restart count rides in the status multicall: one connection per instance."""
    site = site_factory()
    site.run("up", check=True)
    site.wait_status(0)
    if shutil.which("strace") is None:
        pytest.skip("strace not installed")
    result = subprocess.run(["strace", "-f", "-e", "trace=connect", *SITEBOOT, "status"],
                            env=site.env, capture_output=True, text=True, timeout=60, check=False)
    connects = [line for line in result.stderr.splitlines() if "supervisor.sock" in line]
    assert len(connects) == 2, connects  # alpha and beta, once each
