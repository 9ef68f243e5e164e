"""`siteboot logs` and `tail` against real supervisord (issue 9, item 4): programs that print
colour codes and other control characters (Flask, uvicorn) are read from the files by their
owner and over XML-RPC by anyone else; `logs -f` interleaves every program, follows rotations
and ends quietly on Ctrl-C."""

from __future__ import annotations

import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from siteboot import logs
from siteboot.plan import Plan, make_plan
from siteboot.site import load_site
from tests.helpers import SITEBOOT, wait_until

pytestmark = pytest.mark.slow

# What a Flask or uvicorn log line looks like on a terminal, then every other C0 control
# (NUL, BEL, backspace, CR, ...): supervisord sends them raw in XML-RPC, which expat refuses.
COLOURED = "\x1b[32mINFO\x1b[0m:     127.0.0.1 - \"GET / HTTP/1.1\" \x1b[1m200\x1b[0m"
CONTROLS = "".join(chr(c) for c in range(32) if c != 10)
PRINTER = f"""\
import sys, time
n = 0
while True:
    print({COLOURED!r} + " " + str(n), flush=True)
    print("warn " + str(n) + " " + {CONTROLS!r}, file=sys.stderr, flush=True)
    n += 1
    time.sleep(0.2)
"""
COUNTER = """\
import itertools, sys, time
for n in itertools.count():
    sys.stdout.write("count %d\\n" % n)
    if n % 20 == 0:
        time.sleep(0.002)
"""


def logs_site(site_factory: Any, tmp_path: Path, counter: bool = False) -> Any:
    printer = tmp_path / "printer.py"
    printer.write_text(PRINTER)
    programs = f"""
        [programs.app]
        instance = "alpha"
        command = "{{python}} -u {printer}"
        startsecs = 0

        [programs.worker]
        instance = "beta"
        command = "{{python}} -m siteboot.demo work --interval 0.2"
        numprocs = 2
        startsecs = 0
        redirect_stderr = true
        """
    if counter:
        (tmp_path / "counter.py").write_text(COUNTER)
        programs += f"""
        [programs.counter]
        instance = "beta"
        command = "{{python}} -u {tmp_path / 'counter.py'}"
        startsecs = 0
        log_maxbytes = "4KB"
        log_backups = 3
        """
    site = site_factory(programs)
    site.run("up", check=True)
    wait_until(lambda: all(
        (site.runtime(inst) / "logs" / f"{name}.out.log").exists()
        and (site.runtime(inst) / "logs" / f"{name}.out.log").stat().st_size > 100
        for inst, name in (("alpha", "app"), ("beta", "worker_00"), ("beta", "worker_01"))))
    return site


def plan_of(site: Any) -> Plan:
    return make_plan(load_site(site.path), "dev")


def test_logs_of_every_program_from_the_files(site_factory, tmp_path):
    site = logs_site(site_factory, tmp_path)
    # bytes: text mode would turn the CR into a line break, as splitlines() would \x0b and more
    result = subprocess.run([*SITEBOOT, "logs", "-n", "2"], env=site.env, capture_output=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().rstrip("\n").split("\n")
    by_label: dict[str, list[str]] = {}
    for line in lines:
        label, _, text = line.partition(" | ")
        by_label.setdefault(label.rstrip(), []).append(text)
    # worker sends stderr into stdout: no `worker_00 err`
    assert sorted(by_label) == ["app", "app err", "worker_00", "worker_01"]
    assert all(len(texts) == 2 for texts in by_label.values()), lines
    # piped: no colour of ours; the program's own escape sequences are taken out as well
    assert by_label["app"][0].startswith('INFO:     127.0.0.1 - "GET / HTTP/1.1" 200 ')
    assert by_label["app err"][0].startswith("warn ")
    assert by_label["app err"][0].endswith(CONTROLS)  # controls other than colours pass

    narrowed = site.run("logs", "-n", "1", "-i", "beta", "worker_01")
    assert [line.split(" | ")[0].strip() for line in narrowed.stdout.splitlines()] == ["worker_01"]
    tail = site.run("tail", "-i", "beta", "worker_01", "--bytes", "200")
    assert tail.returncode == 0, tail.stderr
    assert "heartbeat" in tail.stdout


def test_control_characters_over_rpc(site_factory, tmp_path):
    """What a granted member gets: the logs through supervisord's XML-RPC, every byte."""
    site = logs_site(site_factory, tmp_path)
    got: list[tuple[str, str]] = []
    logs.show(plan_of(site), ["app"], lambda stream, line: got.append((stream.stream, line)),
              lines=3, files=False)
    stdout = [line for stream, line in got if stream == "stdout"]
    stderr = [line for stream, line in got if stream == "stderr"]
    assert len(stdout) == 3, got
    assert len(stderr) == 3, got
    assert all(line.startswith(COLOURED + " ") for line in stdout)
    # CR included: XML would have turned it into LF
    assert all(line.startswith("warn ") and line.endswith(" " + CONTROLS) for line in stderr)
    once = subprocess.run([*SITEBOOT, "tail", "--stderr", "app"], env=site.env,
                          capture_output=True, timeout=120, check=False)  # the owner: the file
    assert once.returncode == 0, once.stderr
    assert CONTROLS.encode() in once.stdout


def read_lines(proc: subprocess.Popen[bytes], enough: Any, timeout: float = 60.0) -> list[str]:
    """The lines ``proc`` prints until ``enough(lines)`` holds (asked once per read)."""
    assert proc.stdout is not None
    lines: list[str] = []
    partial = b""
    deadline = time.monotonic() + timeout
    while not enough(lines):
        left = deadline - time.monotonic()
        assert left > 0, lines[-20:]
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            data = proc.stdout.read1(65536)  # type: ignore[attr-defined]
            assert data, lines[-20:]
            *complete, partial = (partial + data).split(b"\n")
            lines += [line.decode(errors="replace") for line in complete]
    return lines


class Seen:
    """What `logs -f` printed so far: the labels, and the counter's numbers."""

    def __init__(self) -> None:
        self.labels: set[str] = set()
        self.numbers: list[int] = []
        self.notices: list[str] = []
        self.read = 0

    def update(self, lines: list[str]) -> None:
        for line in lines[self.read:]:
            label, _, text = line.partition(" | ")
            self.labels.add(label.strip())
            if text.startswith("==>"):
                self.notices.append(line)
            elif label.strip() == "counter":
                self.numbers.append(int(text.split()[-1]))
        self.read = len(lines)


def test_logs_follow_interleaves_across_rotations_and_ends_on_ctrl_c(site_factory, tmp_path):
    site = logs_site(site_factory, tmp_path, counter=True)
    follower = subprocess.Popen([*SITEBOOT, "logs", "-f", "-n", "0"], env=site.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = Seen()

    def enough(lines: list[str]) -> bool:
        seen.update(lines)
        return len(seen.numbers) > 5000 and {"app", "app err", "worker_00", "worker_01"} <= seen.labels

    try:
        # thousands of counter lines a second: a 4 KB log with 3 backups rotates many times
        read_lines(follower, enough)
    finally:
        follower.send_signal(signal.SIGINT)
        _rest, err = follower.communicate(timeout=30)
    assert follower.returncode == 130
    assert err == b""  # quietly: no traceback, no "Aborted!"
    assert (site.runtime("beta") / "logs" / "counter.out.log.3").exists()  # it did rotate
    assert seen.notices == []  # the owner reads the backups: nothing lost
    numbers = seen.numbers
    assert numbers == list(range(numbers[0], numbers[-1] + 1))
