"""siteboot against the plain tools, every figure a ratio measured in the same run.

    python3 benchmarks/run.py [--quick] [--out benchmarks/results.json] [--rows status,init,...]

Runs what operators run: the tool venv's launcher ``.venv/bin/siteboot`` (``SITEBOOT_VENV``
elsewhere; built first, as ``python3 -m siteboot init`` would, when it is missing or stale) and
that venv's ``supervisorctl``/``supervisord``. Each row times siteboot and the plain tool
interleaved (same machine load for both), reports medians, the spread (min..max) and the
ratio siteboot/plain with its target. Generated sites live in a temp dir with a temp HOME and
free ports; everything started is stopped at the end.

Rows (targets from issue 14):
- status: `siteboot status` (2 instances x 20 programs) vs `supervisorctl status` of one instance
- warm-init: `siteboot init` with nothing changed vs `supervisorctl status` of one instance
- cold-init: `python3 -m siteboot init` from bare python3 (new tool venv) vs `python3 -m venv`
  + `pip install` of the same dependencies
- app-venv: building an application venv (`[venvs.*]`, no requirements) vs `python3 -m venv`
  (with pip)
- big-check-render: `siteboot check` + `siteboot render` of 500 programs (absolute, seconds)
- big-status: `siteboot status` of 2 x 250 programs vs `supervisorctl status` of one 250-program
  instance
- revive: `siteboot revive` after SIGKILL of every supervisord and program until all RUNNING vs
  starting the same supervisords by hand until `supervisorctl status` says all RUNNING
- status-rss: peak RSS of `siteboot status` vs `supervisorctl status` (one instance)

The status rows time `status` as monitoring runs it, on a site file unchanged for seconds: its
plan comes from the invoker's cache (``siteboot.plan_cache``), as it does after the first run.
"""

from __future__ import annotations

import argparse
import compileall
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: the checkout's stage 0 and test helpers

from siteboot.bootstrap.locate import tool_venv_path  # noqa: E402 (standard library only)
from tests.helpers import free_ports  # noqa: E402

ROWS = ("status", "warm-init", "cold-init", "app-venv", "big-check-render", "big-status",
        "revive", "status-rss")


@dataclass
class Row:
    name: str
    what: str
    target: float
    unit: str = "ratio"  # or "s": an absolute time (only where the issue asks for one)
    ours: list[float] = field(default_factory=list)
    theirs: list[float] = field(default_factory=list)

    @property
    def value(self) -> float:
        if self.unit == "s":
            return statistics.median(self.ours)
        return statistics.median(self.ours) / statistics.median(self.theirs)

    @property
    def holds(self) -> bool:
        return self.value <= self.target

    def as_json(self) -> dict[str, object]:
        def summary(values: list[float]) -> dict[str, float] | None:
            if not values:
                return None
            return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
                    "max": round(max(values), 4), "n": len(values)}
        return {"what": self.what, "unit": self.unit, "value": round(self.value, 3),
                "target": self.target, "holds": self.holds, "siteboot": summary(self.ours),
                "plain": summary(self.theirs)}


# ------------------------------------------------------------------------------------------
# sites and tools


def site_text(name: str, base: Path, per_instance: int, ports: list[int]) -> str:
    lines = [f'[site]\nname = "{name}"\nenvs = ["dev"]\n'
             f'runtime_dir = "{base}/run-{name}"\nstate_dir = "{base}/state-{name}"\n'
             f'venv_dir = "{base}/venvs-{name}"\n']
    for inst, port in zip(("alpha", "beta"), ports):
        lines.append(f"[instances.{inst}]\nport = {{ dev = {port} }}\n")
        for n in range(per_instance):
            lines.append(f'[programs.{inst}-p{n:03d}]\ninstance = "{inst}"\n'
                         'command = "sleep 100000"\nstartsecs = 1\nstopwaitsecs = 2\n')
    return "\n".join(lines)


@dataclass
class Tools:
    bindir: Path
    env: dict[str, str]
    base: Path

    @property
    def siteboot(self) -> list[str]:
        return [str(self.bindir / "siteboot")]

    def site_env(self, site: str) -> dict[str, str]:
        return dict(self.env, SITEBOOT_SITE=site)

    def client_conf(self, site: str, instance: str) -> Path:
        """A plain supervisorctl config with the instance's key (siteboot itself never writes
        one: `siteboot ctl` hands supervisorctl a relay and a one-time credential)."""
        key = (self.base / f"state-{site}" / "keys" / f"{instance}.key").read_text().strip()
        path = self.base / f"supervisorctl-{site}-{instance}.conf"
        path.touch(mode=0o600)
        path.write_text(f"[supervisorctl]\nserverurl = unix://{self.base}/run-{site}/{instance}/"
                        f"supervisor.sock\nusername = siteboot\npassword = {key}\n")
        return path

    def ctl(self, conf: Path, *args: str) -> list[str]:
        return [str(self.bindir / "supervisorctl"), "-c", str(conf), *args]


def tool_venv_bin() -> Path:
    """The bin/ of the checkout's tool venv, made current as `init` makes it."""
    from siteboot.bootstrap.build import Bootstrapper

    venv = tool_venv_path(REPO)
    Bootstrapper(REPO, venv).ensure()
    return venv / "bin"


def run(cmd: list[str], env: dict[str, str], check: bool = False) -> int:
    done = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          check=False)
    if check and done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr.decode()}")
    return done.returncode


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    run(cmd, env)
    return time.perf_counter() - start


# Linux carries a forked child's high-water RSS over exec: forked from this (large) Python, the
# command would report at least this process's size. A minimal Python forks it instead.
_RSS_OF = ("import os, sys\n"
           "pid = os.fork()\n"
           "if pid == 0:\n"
           "    os.execvp(sys.argv[1], sys.argv[1:])\n"
           "print(os.wait4(pid, 0)[2].ru_maxrss)\n")


def peak_rss_kib(cmd: list[str], env: dict[str, str]) -> float:
    """Peak resident memory of one process (its own rusage, not the sum of all children)."""
    done = subprocess.run([sys.executable, "-I", "-S", "-c", _RSS_OF, *cmd], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True)
    return float(done.stdout.decode().split()[-1])


def until(check: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for programs to run")
        time.sleep(0.05)


def descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_instances(tools: Tools, site: str) -> None:
    """SIGKILL every supervisord of the site and every program it ran (a crashed node)."""
    for pidfile in (tools.base / f"run-{site}").glob("*/supervisord.pid"):
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            continue
        for victim in [pid, *descendants(pid)]:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        until(functools.partial(_zombie, pid), 10)


def _zombie(pid: int) -> bool:
    """Gone, or dead and waiting for a parent to reap it (this box's pid 1 may never do so)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# ------------------------------------------------------------------------------------------
# rows


def interleave(row: Row, runs: int, ours: Callable[[], float], theirs: Callable[[], float]) -> Row:
    for _ in range(runs):
        row.ours.append(ours())
        row.theirs.append(theirs())
    return row


def plan_cached(tools: Tools, site: str) -> None:
    """``status`` is timed as monitoring runs it, every minute against a site file that has not
    changed for a while: its plan comes from the invoker's cache. A file changed seconds ago is
    not trusted yet (``plan_cache.SETTLE_NS``): wait that out, and let one status cache it."""
    from siteboot.plan_cache import SETTLE_NS

    age = time.time() - (tools.base / "sites" / f"{site}.toml").stat().st_ctime
    time.sleep(max(0.0, SETTLE_NS / 1e9 + 0.5 - age))
    run([*tools.siteboot, "status"], tools.site_env(site))


def status_rows(tools: Tools, runs: int, wanted: set[str]) -> list[Row]:
    env = tools.site_env("small")
    plan_cached(tools, "small")
    one = tools.ctl(tools.client_conf("small", "alpha"), "status")
    rows = []
    if "status" in wanted:
        rows.append(interleave(Row("status", "`siteboot status` (2x20) / `supervisorctl status` "
                                   "(1x20)", 0.5), runs,
                               lambda: timed([*tools.siteboot, "status"], env),
                               lambda: timed(one, env)))
    if "warm-init" in wanted:
        rows.append(interleave(Row("warm-init", "warm `siteboot init` / `supervisorctl status`",
                                   1.5), max(3, runs // 3),
                               lambda: timed([*tools.siteboot, "init"], env),
                               lambda: timed(one, env)))
    if "status-rss" in wanted:
        rows.append(interleave(Row("status-rss", "peak RSS `siteboot status` / `supervisorctl "
                                   "status`", 1.0), max(3, runs // 3),
                               lambda: peak_rss_kib([*tools.siteboot, "status"], env),
                               lambda: peak_rss_kib(one, env)))
    return rows


def big_rows(tools: Tools, runs: int, wanted: set[str]) -> list[Row]:
    env = tools.site_env("big")
    rows = []
    if "big-check-render" in wanted:
        out = tools.base / "render-big"

        def check_and_render() -> float:
            start = time.perf_counter()
            run([*tools.siteboot, "check"], env, check=True)
            run([*tools.siteboot, "render", "--out", str(out)], env, check=True)
            return time.perf_counter() - start
        rows.append(interleave(Row("big-check-render", "`siteboot check` + `render`, 500 "
                                   "programs (seconds)", 0.5, unit="s"),
                               max(3, runs // 3), check_and_render, lambda: 0.0))
    if "big-status" in wanted:
        run([*tools.siteboot, "up"], env, check=True)
        one = tools.ctl(tools.client_conf("big", "alpha"), "status")
        until(lambda: run(one, env) == 0)
        plan_cached(tools, "big")
        rows.append(interleave(Row("big-status", "`siteboot status` (2x250) / `supervisorctl "
                                   "status` (1x250)", 0.8), runs,
                               lambda: timed([*tools.siteboot, "status"], env),
                               lambda: timed(one, env)))
        run([*tools.siteboot, "down"], env)
    return rows


def revive_row(tools: Tools, runs: int) -> Row:
    env = tools.site_env("small")
    instances = ("alpha", "beta")
    supervisord = str(tools.bindir / "supervisord")
    run_dir = tools.base / "run-small"

    def all_running() -> bool:
        return all(run(tools.ctl(conf, "status"), env) == 0 for conf in confs)

    confs: list[Path] = []

    def ours() -> float:
        kill_instances(tools, "small")
        start = time.perf_counter()
        run([*tools.siteboot, "revive"], env)
        until(lambda: run([*tools.siteboot, "status"], env) == 0)
        return time.perf_counter() - start

    def theirs() -> float:
        kill_instances(tools, "small")
        # a fresh start of siteboot's made a new key: the client config must carry it
        confs[:] = [tools.client_conf("small", inst) for inst in instances]
        start = time.perf_counter()
        for inst in instances:
            run([supervisord, "-c", str(run_dir / inst / f"supervisord-{inst}.conf")], env,
                check=True)
        until(all_running)
        return time.perf_counter() - start

    return interleave(Row("revive", "`siteboot revive` / supervisord by hand, until RUNNING",
                          1.5), runs, ours, theirs)


def cold_init_row(tools: Tools, runs: int) -> Row:
    """A new tool venv each time; pip's and siteboot's caches stay warm for both."""
    env = dict(tools.site_env("tiny"), SITEBOOT_DEBUG="")
    python = sys.executable
    requirements = dependencies()

    def ours() -> float:
        venv = Path(tempfile.mkdtemp(prefix="cold-", dir=tools.base)) / "venv"
        start = time.perf_counter()
        own = dict(env, SITEBOOT_VENV=str(venv))
        run([python, "-m", "siteboot", "init"], own, check=True)
        elapsed = time.perf_counter() - start
        # stopped by the siteboot that started them (another one's `down` refuses)
        run([str(venv / "bin" / "siteboot"), "down"], own, check=True)
        shutil.rmtree(venv.parent, ignore_errors=True)
        return elapsed

    def theirs() -> float:
        venv = Path(tempfile.mkdtemp(prefix="plain-", dir=tools.base)) / "venv"
        start = time.perf_counter()
        run([python, "-m", "venv", str(venv)], env, check=True)
        run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
             *requirements], env, check=True)
        elapsed = time.perf_counter() - start
        shutil.rmtree(venv.parent, ignore_errors=True)
        return elapsed

    return interleave(Row("cold-init", "cold `init` from bare python3 / `venv` + `pip install`",
                          1.1), runs, ours, theirs)


def dependencies() -> list[str]:
    from siteboot.bootstrap.locate import read_setup_cfg

    config = read_setup_cfg(REPO / "setup.cfg")
    return [line.strip() for line in config.get("options", "install_requires").splitlines()
            if line.strip()]


def app_venv_row(tools: Tools, runs: int) -> Row:
    python = str(tools.bindir / "python")
    code = ("import sys; from pathlib import Path; from siteboot.site import VenvSpec; "
            "from siteboot.venvs import ensure_venv; "
            "ensure_venv(VenvSpec('app', [], None), Path(sys.argv[1]) / 'app')")

    def ours() -> float:
        where = Path(tempfile.mkdtemp(prefix="app-", dir=tools.base))
        (where / "venvs").mkdir(mode=0o700)
        elapsed = timed([python, "-c", code, str(where / "venvs")], tools.env)
        if not (where / "venvs" / "app" / "bin" / "python").exists():
            raise SystemExit("the application venv was not built")
        shutil.rmtree(where, ignore_errors=True)
        return elapsed

    def theirs() -> float:
        where = Path(tempfile.mkdtemp(prefix="plainapp-", dir=tools.base))
        elapsed = timed([sys.executable, "-m", "venv", str(where / "app")], tools.env)
        shutil.rmtree(where, ignore_errors=True)
        return elapsed

    return interleave(Row("app-venv", "application venv / `python3 -m venv` (with pip)", 0.3),
                      runs, ours, theirs)


# ------------------------------------------------------------------------------------------


def report(rows: list[Row]) -> str:
    lines = ["| row | what | siteboot | plain | value | target | holds |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        data = row.as_json()
        value = f"{row.value:.2f} s" if row.unit == "s" else f"{row.value:.2f}x"
        limit = f"≤ {row.target} s" if row.unit == "s" else f"≤ {row.target}x"
        lines.append(f"| {row.name} | {row.what} | {_figure(row, data['siteboot'])} | "
                     f"{_figure(row, data['plain'])} | {value} | {limit} | "
                     f"{'yes' if row.holds else 'NO'} |")
    return "\n".join(lines)


def _figure(row: Row, summary: object) -> str:
    if not isinstance(summary, dict) or (row.unit == "s" and summary["median"] == 0):
        return "–"
    scale, unit = (1.0, " KiB") if row.name == "status-rss" else (1000.0, " ms")
    return (f"{summary['median'] * scale:.0f}{unit} "
            f"({summary['min'] * scale:.0f}..{summary['max'] * scale:.0f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--runs", type=int, default=0, help="repetitions of the fast rows")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows to run")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results.json"))
    parser.add_argument("--tmp", default="/tmp", help="where the throwaway sites go (short: "
                        "unix socket paths are limited to 107 bytes)")
    args = parser.parse_args()
    wanted = set(args.rows.split(","))
    unknown = wanted - set(ROWS)
    if unknown:
        parser.error(f"unknown rows: {', '.join(sorted(unknown))} (rows: {', '.join(ROWS)})")
    runs = args.runs or (5 if args.quick else 20)
    slow_runs = 1 if args.quick else 3

    compileall.compile_dir(str(REPO / "siteboot"), quiet=1)
    base = Path(tempfile.mkdtemp(prefix="sbb-", dir=args.tmp))
    (base / "sites").mkdir()
    env = dict(os.environ, HOME=str(base / "home"), SITEBOOT_ROOT=str(base), NO_COLOR="1")
    for name in ("SITEBOOT_DEBUG", "SITEBOOT_SITE", "SITEBOOT_ENV", "SITEBOOT_VENV"):
        env.pop(name, None)
    ports = free_ports(6)
    for name, count, pair in (("small", 20, ports[0:2]), ("big", 250, ports[2:4]),
                              ("tiny", 1, ports[4:6])):
        (base / "sites" / f"{name}.toml").write_text(site_text(name, base, count, pair))
    tools = Tools(tool_venv_bin(), env, base)
    rows: list[Row] = []
    try:
        if wanted & {"status", "warm-init", "status-rss", "revive"}:
            run([*tools.siteboot, "up"], tools.site_env("small"), check=True)
            until(lambda: run([*tools.siteboot, "status"], tools.site_env("small")) == 0)
            rows += status_rows(tools, runs, wanted)
            if "revive" in wanted:
                rows.append(revive_row(tools, slow_runs + 2))
            run([*tools.siteboot, "down"], tools.site_env("small"))
        rows += big_rows(tools, runs, wanted)
        if "app-venv" in wanted:
            rows.append(app_venv_row(tools, slow_runs + 2))
        if "cold-init" in wanted:
            rows.append(cold_init_row(tools, slow_runs))
    finally:
        for site in ("small", "big", "tiny"):
            run([*tools.siteboot, "down"], tools.site_env(site))
        shutil.rmtree(base, ignore_errors=True)
    rows.sort(key=lambda r: ROWS.index(r.name))
    print(report(rows))
    Path(args.out).write_text(json.dumps({
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(),
        "rows": {row.name: row.as_json() for row in rows}}, indent=2) + "\n")
    print(f"\nwritten: {args.out}")
    return 0 if all(row.holds for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
