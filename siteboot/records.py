"""What each account has started, and what its operators have stopped, kept in its own state.

A *start record* is written when ``up`` (or ``revive``) has a supervisord running and removed when
``down`` has stopped it. It holds everything needed to find and stop that supervisord without
the site file: after an instance was removed from the site, its ``runtime_dir`` changed, or the
file stopped parsing, ``status`` still sees it and ``down --orphans`` still stops it. Records
live per account, outside any site's state dir (which a site edit may move):
``~/.local/state/siteboot/started/<site>-<env>-<instance>-<hash of its runtime dir>.json``,
0600 in 0700 dirs: an instance whose runtime_dir changed while it ran keeps its own record
beside the new one.

*Operator stops* (``siteboot stop NAME``) are remembered in the instance's state dir until a
``start`` of the same process: ``up`` and ``revive`` start what should run, except these.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from siteboot.accounts import expand_home, this_host
from siteboot.fsutil import atomic_write, ensure_private_dir
from siteboot.plan import UNALLOCATED, InstancePlan, Plan, ProgramPlan
from siteboot.proc import is_supervisord
from siteboot.site import same_host
from siteboot.statusreport import describes

RECORDS_DIR = "~/.local/state/siteboot/started"
STOPS_FILE = "operator-stops.json"


@dataclass(frozen=True)
class StartRecord:
    """One running supervisord as ``up`` left it: enough to find, reach and stop it."""

    site: str
    site_path: str
    env: str
    instance: str
    user: str
    port: int
    runtime_dir: str
    state_dir: str
    identifier: str
    pid: int
    started_at: float
    # process name -> stopwaitsecs: what `down` waits for each program before SIGKILL
    stop_waits: dict[str, int] = field(default_factory=dict)
    # which siteboot started it: its package dir and interpreter (the tool venv's python)
    checkout: str = ""
    python: str = ""
    host: str = ""  # where it runs: a home shared between hosts holds the records of each

    @property
    def path(self) -> Path:
        return record_path(self.user, self.site, self.env, self.instance, self.runtime_dir)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def instance_plan(self) -> InstancePlan:
        """The recorded instance as a plan: its paths as they were when it started."""
        programs = [ProgramPlan(name=name, command="", directory=None, environment={}, port=None,
                                venv=None, options={"numprocs": 1, "autostart": True,
                                                    "stopwaitsecs": wait, "startsecs": 0},
                                log_dir=Path(self.runtime_dir) / "logs")
                    for name, wait in self.stop_waits.items()]
        return InstancePlan(
            name=self.instance, user=self.user, port=self.port, group=None, runtime_parent=None,
            runtime_parent_private=True, runtime_dir=Path(self.runtime_dir),
            state_dir=Path(self.state_dir), shared_key_path=None, identifier=self.identifier,
            programs=programs, env=self.env)

    def matches(self, inst: InstancePlan) -> bool:
        """Does the site, as it reads now, still describe this supervisord (same files, port)?"""
        return describes(started_as(inst), self.as_json())


def started_as(inst: InstancePlan) -> list[Any]:
    """What a start record of ``inst`` must say for the site to describe it
    (``statusreport.describes``): an auto port not known here (its port record lost) is None."""
    return [str(inst.runtime_dir), None if inst.port == UNALLOCATED else inst.port,
            str(inst.state_dir), inst.user]


def records_dir(user: str) -> Path:
    return expand_home(RECORDS_DIR, user)


def record_path(user: str, site: str, env: str, instance: str, runtime_dir: Path | str) -> Path:
    import zlib  # a name, not a secret: cheaper to import than hashlib on the status path

    digest = zlib.crc32(os.fsencode(str(runtime_dir)))
    return records_dir(user) / f"{site}-{env}-{instance}-{digest:08x}.json"


def record_of(plan: Plan, inst: InstancePlan) -> Path:
    """Where the start record of ``inst``, as the site describes it now, is (or would be)."""
    return record_path(inst.user, plan.site.name, plan.env, inst.name, inst.runtime_dir)


def this_siteboot() -> tuple[str, str]:
    """(package dir, interpreter) of the siteboot running now."""
    import sys

    return str(Path(__file__).resolve().parent), sys.executable


def write_start(plan: Plan, inst: InstancePlan, pid: int, started_at: float) -> StartRecord:
    checkout, python = this_siteboot()
    record = StartRecord(
        site=plan.site.name, site_path=str(plan.site.path), env=plan.env, instance=inst.name,
        user=inst.user, port=inst.port, runtime_dir=str(inst.runtime_dir),
        state_dir=str(inst.state_dir), identifier=inst.identifier,
        pid=pid, started_at=started_at,
        stop_waits=inst.stop_waits(), checkout=checkout, python=python, host=plan.host)
    ensure_private_dir(records_dir(inst.user))
    from siteboot.fsutil import write_if_changed

    write_if_changed(record.path, json.dumps(record.as_json(), indent=2) + "\n", mode=0o600)
    return record


def remove_start(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def read_starts(user: str) -> list[StartRecord]:
    """Every start record of ``user`` on this host (unreadable or foreign-format files, and the
    records of other hosts sharing this home, are passed over)."""
    folder = records_dir(user)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    here = this_host()
    found = (read_start(folder / name) for name in names if name.endswith(".json"))
    return [record for record in found
            if record is not None and (not record.host or same_host(record.host, here))]


def starts_of(user: str, site: str, env: str | None = None) -> list[StartRecord]:
    return [r for r in read_starts(user) if r.site == site and (env is None or r.env == env)]


def read_start(path: Path) -> StartRecord | None:
    """A record, also one an older siteboot wrote (keys it no longer knows, e.g. the one group
    all programs once formed, are passed over: the supervisord it names must stay stoppable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(StartRecord)}
        return StartRecord(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def started_elsewhere(plan: Plan, inst: InstancePlan) -> StartRecord | None:
    """The record of ``inst`` when another siteboot (another checkout, or another tool venv)
    started it: ``up`` from here would reload it onto this siteboot's python, silently."""
    record = read_start(record_of(plan, inst))
    if record is None or not record.checkout or not is_running(record):
        return None
    return None if (record.checkout, record.python) == this_siteboot() else record


def is_running(record: StartRecord) -> bool:
    """Is the recorded supervisord still alive? Read from /proc, without psutil (``status``
    calls this): same pid, same owner, a supervisord with the recorded config."""
    conf = str(record.instance_plan().conf_path)
    try:
        if os.stat(f"/proc/{record.pid}").st_uid != os.geteuid():
            return False
        with open(f"/proc/{record.pid}/cmdline", "rb") as handle:
            argv = handle.read().decode("utf-8", "replace").split("\0")
    except OSError:
        return False
    return conf in argv and is_supervisord(argv)


def orphaned(plan: Plan) -> list[StartRecord]:
    """Records of this site and env, by the invoker, that the site no longer describes (here:
    an instance since placed on another host is an orphan on this one)."""
    return [record for record in starts_of(plan.invoker, plan.site.name, plan.env)
            if not any(plan.owns(inst) and inst.here and record.matches(inst)
                       for inst in plan.instances.values())]


# ------------------------------------------------------------------------------------------
# Operator stops


def stops_path(inst: InstancePlan) -> Path:
    return inst.state_dir / STOPS_FILE


def operator_stops(inst: InstancePlan) -> set[str]:
    """Processes of ``inst`` an operator stopped on purpose (and nobody started since)."""
    from siteboot.statusreport import read_held

    return read_held(stops_path(inst))


def mark_stopped(inst: InstancePlan, processes: Iterable[str], stopped: bool) -> None:
    """Remember (``stopped``) or forget operator stops; only the owner's state dir holds them."""
    current = operator_stops(inst)
    wanted = current | set(processes) if stopped else current - set(processes)
    if wanted == current:
        return
    ensure_private_dir(inst.state_dir)
    atomic_write(stops_path(inst), json.dumps(sorted(wanted)) + "\n", mode=0o600)
