"""`siteboot status` against `supervisorctl status`, on the same instances, in one run.

    python3 benchmarks/bench_status.py [--runs 30] [--json]

Runs what operators run: the tool venv's launcher ``.venv/bin/siteboot`` (``SITEBOOT_VENV``
elsewhere; built first, as ``python3 -m siteboot init`` would, when it is missing or stale) and
that venv's ``supervisorctl``. Starts a throwaway two-instance site (free ports, a temp dir, a
temp HOME), then times the commands interleaved, so both see the same machine load, and prints
medians and ratios:
- one instance: `siteboot status -i A` vs `supervisorctl -c <client conf> status` (a
  client config with the key, written here)
- the whole site: `siteboot status` (instances queried concurrently) vs one `supervisorctl`
  per instance, one after the other, as an operator would run them.
A ratio below 1 means siteboot is faster. Bytecode is compiled first, as pip does on install.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: the checkout's stage 0 and test helpers

from siteboot.bootstrap.locate import tool_venv_path  # noqa: E402 (standard library only)
from tests.helpers import free_ports  # noqa: E402


def tool_venv_bin() -> Path:
    """The bin/ of the checkout's tool venv, made current as `init` makes it."""
    from siteboot.bootstrap.build import Bootstrapper

    venv = tool_venv_path(REPO)
    Bootstrapper(REPO, venv).ensure()
    return venv / "bin"


def site_text(base: Path, ports: list[int]) -> str:
    alpha, beta, web = ports
    return f"""
[site]
name = "bench"
envs = ["dev"]
runtime_dir = "{base}/run"
state_dir = "{base}/state"

[instances.alpha]
port = {{ dev = {alpha} }}

[instances.beta]
port = {{ dev = {beta} }}

[programs.web]
instance = "alpha"
command = "{{python}} -m siteboot.demo serve --port {{port}}"
port = {{ dev = {web} }}
startsecs = 0

[programs.worker]
instance = "beta"
command = "{{python}} -m siteboot.demo work --interval 60"
numprocs = 3
startsecs = 0
"""


def client_conf(base: Path, instance: str) -> Path:
    """A plain supervisorctl config with the instance's key (`siteboot ctl` never writes one:
    it hands supervisorctl a relay and a one-time credential)."""
    key = (base / "state" / "keys" / f"{instance}.key").read_text().strip()
    path = base / f"supervisorctl-{instance}.conf"
    path.touch(mode=0o600)
    path.write_text(f"[supervisorctl]\nserverurl = unix://{base}/run/{instance}/supervisor.sock\n"
                    f"username = siteboot\npassword = {key}\n")
    return path


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    compileall.compile_dir(str(REPO / "siteboot"), quiet=1)
    base = Path(tempfile.mkdtemp(prefix="sb-bench-", dir="/tmp"))
    env = dict(os.environ, HOME=str(base / "home"), SITEBOOT_ROOT=str(base), SITEBOOT_SITE="bench",
               NO_COLOR="1")
    env.pop("SITEBOOT_DEBUG", None)
    (base / "sites").mkdir()
    (base / "sites" / "bench.toml").write_text(site_text(base, free_ports(3)))
    bindir = tool_venv_bin()
    siteboot = [str(bindir / "siteboot")]
    try:
        subprocess.run([*siteboot, "up"], env=env, check=True, stdout=subprocess.DEVNULL)
        confs = [client_conf(base, inst) for inst in ("alpha", "beta")]
        ctl = [str(bindir / "supervisorctl")]
        results: dict[str, list[float]] = {k: [] for k in ("sb_one", "ctl_one", "sb_all", "ctl_all")}
        for _ in range(args.runs):
            results["sb_one"].append(timed([*siteboot, "status", "-i", "alpha"], env))
            results["ctl_one"].append(timed([*ctl, "-c", str(confs[0]), "status"], env))
            results["sb_all"].append(timed([*siteboot, "status"], env))
            results["ctl_all"].append(sum(timed([*ctl, "-c", str(c), "status"], env) for c in confs))
        med = {k: statistics.median(v) * 1000 for k, v in results.items()}
        report = {
            "runs": args.runs,
            "median_ms": {k: round(v, 1) for k, v in med.items()},
            "ratio_one_instance": round(med["sb_one"] / med["ctl_one"], 2),
            "ratio_whole_site": round(med["sb_all"] / med["ctl_all"], 2),
        }
    finally:
        subprocess.run([*siteboot, "down"], env=env, check=False, stdout=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
    else:
        m = report["median_ms"]
        print(f"one instance: siteboot {m['sb_one']} ms, supervisorctl {m['ctl_one']} ms, "
              f"ratio {report['ratio_one_instance']}")
        print(f"whole site:   siteboot {m['sb_all']} ms, supervisorctl x2 {m['ctl_all']} ms, "
              f"ratio {report['ratio_whole_site']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
