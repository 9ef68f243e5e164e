"""``siteboot-healer``: the event listener inside each supervisord that heals its programs.

supervisord gives up on a program for good after ``startretries`` (FATAL) and knows nothing of
readiness or start order. Rendered as ``[eventlistener:siteboot-healer]`` (``render``) and run
by the tool venv's python as ``python -I -m siteboot.healer SPEC``, this listener works while
nobody runs siteboot:

- a program with ``restart = { backoff_max = N }`` that ends FATAL (or exits where supervisord
  does not restart it) is started again after 1 s, then 2, 4, ... up to N seconds, forever; the
  count goes back to zero once it has run for ``RESET_AFTER`` seconds;
- on every TICK_5 the ``ready`` probes of RUNNING programs run, and the result is recorded;
- a program that waits for others (``depends_on``) and was never started in this supervisord
  is started once they are ready (``up --foreground`` and a supervisord started by hand then
  keep the order too);
- attempts, next tries and probe results go to the instance's state dir (``health``), where
  ``status`` reads them; operator stops (``siteboot stop``) are respected.

The protocol with supervisord is kept whatever comes in: every event is answered
``RESULT 2\\nOK`` and followed by ``READY``; a payload that cannot be read is ignored, an error
while acting on one is logged to stderr (the listener's log), never raised. Standard library
only (and siteboot's standard-library modules).
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable

from siteboot import health, probes

if TYPE_CHECKING:
    from siteboot.plan import InstancePlan, Plan

RESET_AFTER = 60.0  # seconds RUNNING after which the backoff starts again from 1 s
PROBE_TIMEOUT = 4.0  # each probe, within one TICK_5
MAX_PAYLOAD = 1 << 24  # a header announcing more than this is not supervisord's
_RUNNING_STATES = ("RUNNING", "STARTING", "BACKOFF", "STOPPING")
_DOWN = ("FATAL", "EXITED")
# supervisor.xmlrpc.Faults
_BAD_NAME = 10
_ALREADY_STARTED = 60


# ------------------------------------------------------------------------------------------
# The spec: what siteboot tells the listener (written beside the config by ``provision``)


def spec_for(plan: Plan, inst: InstancePlan) -> dict[str, Any]:
    """Everything the listener of ``inst`` needs, paths and probes resolved."""
    from siteboot.records import stops_path

    owner = {p.name: i for i in plan.instances.values() for p in i.programs}
    programs: dict[str, Any] = {}
    for program in inst.programs:
        deps = []
        for name in program.depends_on:
            dep_inst = owner.get(name)
            dep = dep_inst.program(name) if dep_inst else None
            if dep_inst is None or dep is None:
                continue
            deps.append({"name": name, "local": dep_inst.name == inst.name,
                         "processes": dep.process_names(), "probe": dep.probe})
        programs[program.name] = {
            "processes": program.process_names(), "probe": program.probe,
            "backoff_max": program.backoff_max, "autorestart": program.options["autorestart"],
            "start_when_ready": program.autostart and bool(program.depends_on), "depends_on": deps}
    return {"instance": inst.name, "unix_url": inst.unix_url, "http_url": inst.http_url,
            "socket": str(inst.socket_path), "key_path": str(inst.key_path),
            "health_path": str(inst.health_path), "stops_path": str(stops_path(inst)),
            "programs": programs}


def spec_text(plan: Plan, inst: InstancePlan) -> str:
    return json.dumps(spec_for(plan, inst), indent=1, sort_keys=True) + "\n"


class SpecFile:
    """The spec, read again when its file changes; the last good one is kept meanwhile (a /tmp
    cleaner may take the runtime dir away under a running supervisord).

    Only a file siteboot wrote counts: a regular file of this account that nobody else may
    change, in a folder of this account that nobody else may write. After a /tmp wipe another
    account could make the runtime dir again and put a spec there, whose command probes the
    listener would run as this account, and whose paths it would write to."""

    def __init__(self, path: Path, log: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.log = log or _log
        self._stamp: tuple[int, int, int, int] | None = None
        self.spec: dict[str, Any] = {"programs": {}}

    def current(self) -> dict[str, Any]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return self.spec
        try:
            info = os.fstat(fd)
            stamp = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)
            if stamp != self._stamp:
                self._stamp = stamp
                why = _untrusted(self.path, info)
                if why:
                    self.log(f"ignoring {self.path}: {why}")
                    return self.spec
                with os.fdopen(os.dup(fd), "rb") as handle:
                    data = json.loads(handle.read().decode("utf-8"))
                if isinstance(data, dict) and isinstance(data.get("programs"), dict):
                    self.spec = data
        except (OSError, ValueError):
            pass
        finally:
            os.close(fd)
        return self.spec


def _untrusted(path: Path, info: os.stat_result) -> str | None:
    """Why the spec file (``info``: its fstat) is not one that siteboot wrote, or None."""
    import stat

    from siteboot.fsutil import owner_name

    me = os.geteuid()
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_uid != me or info.st_mode & 0o022:
        return f"{owner_name(info.st_uid)}'s, mode {stat.S_IMODE(info.st_mode):04o}"
    folder = os.lstat(path.parent)
    if stat.S_ISLNK(folder.st_mode) or folder.st_uid != me or folder.st_mode & 0o022:
        return (f"its folder is {owner_name(folder.st_uid)}'s, mode "
                f"{stat.S_IMODE(folder.st_mode):04o}" + (" (a symlink)"
                                                         if stat.S_ISLNK(folder.st_mode) else ""))
    return None


# ------------------------------------------------------------------------------------------
# Talking back to supervisord


class Supervisor:
    """The listener's own supervisord over XML-RPC, with the instance's key."""

    def __init__(self, spec: Callable[[], Mapping[str, Any]]) -> None:
        self._spec = spec

    def _endpoint(self) -> Any:
        from siteboot.rpc import Endpoint

        spec = self._spec()
        key = Path(spec["key_path"]).read_text(encoding="utf-8").strip()
        # its socket may be gone with the runtime dir: the port still answers (siteboot's rule)
        url = spec["unix_url"] if os.path.lexists(spec["socket"]) else spec["http_url"]
        return Endpoint(url, key, timeout=10.0, owner_uid=os.geteuid())

    def infos(self) -> list[dict[str, Any]]:
        return list(self._endpoint().call("supervisor.getAllProcessInfo"))

    def start(self, full_name: str) -> str | None:
        """None when started (or already running), else why not."""
        from siteboot.rpc import Fault

        try:
            self._endpoint().call("supervisor.startProcess", full_name, False)
        except Fault as fault:
            return None if fault.faultCode == _ALREADY_STARTED else fault.faultString
        return None


# ------------------------------------------------------------------------------------------
# The healer's state and decisions (no I/O but through what it is given)


class Process:
    """What the listener knows of one supervised process."""

    def __init__(self, name: str, program: str, group: str) -> None:
        self.name = name
        self.program = program
        self.group = group
        self.state = "UNKNOWN"
        self.pid: int | None = None
        self.ever_started = False
        self.running_since: float | None = None
        self.attempts = 0
        self.next_try: float | None = None
        self.last_attempt: float | None = None
        self.health: str | None = None
        self.checked_at: float | None = None
        self.detail = ""

    @property
    def full_name(self) -> str:
        return f"{self.group}:{self.name}" if self.group else self.name

    def record(self) -> dict[str, Any]:
        return {"pid": self.pid, "health": self.health, "checked_at": self.checked_at,
                "detail": self.detail, "attempts": self.attempts, "next_try": self.next_try,
                "last_attempt": self.last_attempt, "state": self.state}


class Healer:
    def __init__(self, spec: Callable[[], Mapping[str, Any]], supervisor: Any,
                 clock: Callable[[], float] = time.time,
                 probe: Callable[[Mapping[str, Any]], str | None] | None = None,
                 store: Callable[[Path, dict[str, dict[str, Any]], float], None] = health.write,
                 log: Callable[[str], None] | None = None) -> None:
        self._spec = spec
        self.supervisor = supervisor
        self.clock = clock
        self.probe = probe or (lambda p: probes.check(p, PROBE_TIMEOUT))
        self.store = store
        self.log = log or _log
        self.processes: dict[str, Process] = {}
        self._saved: dict[str, dict[str, Any]] | None = None

    # -- the spec

    def programs(self) -> Mapping[str, Any]:
        programs = self._spec().get("programs")
        return programs if isinstance(programs, dict) else {}

    def program_of(self, process: str) -> str | None:
        for name, program in self.programs().items():
            if process in program.get("processes", ()):
                return str(name)
        return None

    def held(self) -> set[str]:
        """Processes an operator stopped (``siteboot stop``): never started by the healer."""
        path = self._spec().get("stops_path")
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8")) if path else []
        except (OSError, ValueError):
            return set()
        return {str(p) for p in data} if isinstance(data, list) else set()

    # -- events

    def start(self) -> None:
        """At the listener's start: learn every process's state from supervisord."""
        self.reconcile()
        self.save()

    def on_event(self, name: str, payload: bytes) -> None:
        if name.startswith("PROCESS_STATE_"):
            fields = parse_fields(payload.decode("utf-8", "replace").split("\n", 1)[0])
            process = fields.get("processname")
            if process:
                self.on_state(process, fields.get("groupname", ""), name[len("PROCESS_STATE_"):],
                              fields)
        elif name.startswith("TICK_"):
            self.on_tick()

    def on_state(self, name: str, group: str, state: str, fields: Mapping[str, str]) -> None:
        program = self.program_of(name)
        if program is None:
            return  # not one of ours (the listener itself, a program the spec does not know)
        proc = self._process(name, program, group)
        now = self.clock()
        proc.state = state
        if fields.get("pid", "").isdigit():
            proc.pid = int(fields["pid"]) or None
        if state in ("STARTING", "RUNNING"):
            proc.ever_started = True
        if state == "RUNNING":
            proc.running_since, proc.next_try = now, None
            self.start_waiting()
        else:
            proc.running_since = None
        if state == "STOPPED":  # someone stopped it on purpose: no retry is pending any more
            proc.next_try, proc.attempts = None, 0
        elif proc.next_try is None and (
                state == "FATAL" or (state == "EXITED" and fields.get("expected") == "0"
                                     and self._spec_of(program).get("autorestart") == "false")):
            self.schedule(proc)
        self.save()

    def on_tick(self) -> None:
        self.reconcile()
        now = self.clock()
        for proc in self.processes.values():
            if proc.running_since is not None and proc.attempts and \
                    now - proc.running_since >= RESET_AFTER:
                proc.attempts, proc.last_attempt = 0, None
        self.start_waiting()
        self.run_probes()
        self.retry_due()
        self.save()

    def on_timer(self) -> None:
        self.retry_due()
        self.save()

    # -- what the healer does

    def reconcile(self) -> None:
        """Every process's state from supervisord: nothing depends on an event not lost."""
        try:
            infos = self.supervisor.infos()
        except Exception as exc:  # supervisord busy or going away: the next tick tries again
            self.log(f"cannot read process states: {_first_line(exc)}")
            return
        now = self.clock()
        seen = set()
        for info in infos:
            name = str(info.get("name", ""))
            program = self.program_of(name)
            if program is None:
                continue
            seen.add(name)
            proc = self._process(name, program, str(info.get("group", "")))
            state = str(info.get("statename", "UNKNOWN"))
            if state == "RUNNING" and proc.state != "RUNNING":
                proc.running_since = now - max(0, int(info.get("now", 0)) - int(info.get("start", 0)))
            elif state != "RUNNING":
                proc.running_since = None
            proc.state, proc.pid = state, int(info.get("pid") or 0) or None
            proc.ever_started = proc.ever_started or bool(info.get("start"))
            if state in _DOWN and proc.next_try is None and self._heals_exit(proc, info):
                self.schedule(proc)
        for name in [n for n in self.processes if n not in seen]:
            del self.processes[name]  # removed from the config

    def _heals_exit(self, proc: Process, info: Mapping[str, Any]) -> bool:
        if proc.state == "FATAL":
            return True
        spec = self._spec_of(proc.program)
        # EXITED: supervisord restarts it itself unless autorestart is false
        return spec.get("autorestart") == "false" and bool(info.get("exitstatus"))

    def schedule(self, proc: Process) -> None:
        backoff_max = self._spec_of(proc.program).get("backoff_max")
        if not backoff_max or proc.name in self.held():
            return
        delay = min(float(2 ** min(proc.attempts, 30)), float(backoff_max))
        proc.next_try = self.clock() + delay
        self.log(f"{proc.name} is {proc.state}: starting it again in {delay:g} s "
                 f"(attempt {proc.attempts + 1})")

    def due_in(self) -> float | None:
        """Seconds until the next planned restart (0: now), or None."""
        times = [p.next_try for p in self.processes.values() if p.next_try is not None]
        return max(0.0, min(times) - self.clock()) if times else None

    def retry_due(self) -> None:
        now = self.clock()
        held = None
        for proc in list(self.processes.values()):
            if proc.next_try is None or proc.next_try > now:
                continue
            proc.next_try = None
            held = self.held() if held is None else held
            if proc.state not in _DOWN or proc.name in held:
                continue  # someone started or stopped it meanwhile
            proc.attempts += 1
            proc.last_attempt = now
            why = self._start(proc)
            if why is not None:
                self.log(f"cannot start {proc.name} (attempt {proc.attempts}): {why}")
                self.schedule(proc)

    def start_waiting(self) -> None:
        """Programs that wait for others and were never started here: start them once every
        program they depend on is ready (siteboot's ``up`` does the same, in waves)."""
        held = None
        for name, program in self.programs().items():
            if not program.get("start_when_ready"):
                continue
            waiting = [p for p in self.processes.values() if p.program == name
                       and not p.ever_started and p.state == "STOPPED"]
            if not waiting:
                continue
            held = self.held() if held is None else held
            waiting = [p for p in waiting if p.name not in held]
            if not waiting or not self._dependencies_ready(program):
                continue
            for proc in waiting:
                proc.ever_started = True
                why = self._start(proc)
                self.log(f"started {proc.name}: what it depends on is ready" if why is None
                         else f"cannot start {proc.name}: {why}")

    def _dependencies_ready(self, program: Mapping[str, Any]) -> bool:
        for dep in program.get("depends_on", ()):
            if dep.get("local"):
                procs = [self.processes.get(p) for p in dep.get("processes", ())]
                if not procs or any(p is None or p.state != "RUNNING" for p in procs):
                    return False
            elif not dep.get("probe"):
                return False  # another instance's program without a probe: siteboot decides
            if dep.get("probe") and self.probe(dep["probe"]) is not None:
                return False
        return True

    def run_probes(self) -> None:
        from siteboot.concurrency import concurrently

        probed: list[tuple[Process, Mapping[str, Any]]] = []
        for proc in self.processes.values():
            probe = self._spec_of(proc.program).get("probe")
            if proc.state == "RUNNING" and isinstance(probe, dict):
                probed.append((proc, probe))
        if not probed:
            return
        results = concurrently(lambda item: self._probe_quietly(item[1]), probed)
        now = self.clock()
        for (proc, probe), error in zip(probed, results):
            verdict = health.READY if error is None else health.NOT_READY
            if verdict != proc.health:
                self.log(f"{proc.name}: {verdict}" + (f" ({probes.describe(probe)}: {error})"
                                                      if error else ""))
            proc.health, proc.detail, proc.checked_at = verdict, error or "", now

    def _probe_quietly(self, probe: Mapping[str, Any]) -> str | None:
        try:
            return self.probe(probe)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    def _start(self, proc: Process) -> str | None:
        try:
            why: str | None = self.supervisor.start(proc.full_name)
        except Exception as exc:
            return _first_line(exc)
        if why is None:
            self.log(f"started {proc.name}")
        return why

    def _process(self, name: str, program: str, group: str) -> Process:
        proc = self.processes.get(name)
        if proc is None:
            proc = self.processes[name] = Process(name, program, group)
        if group:
            proc.group, proc.program = group, program
        return proc

    def _spec_of(self, program: str) -> Mapping[str, Any]:
        spec = self.programs().get(program)
        return spec if isinstance(spec, dict) else {}

    def save(self) -> None:
        records = {name: proc.record() for name, proc in sorted(self.processes.items())}
        if records == self._saved:
            return
        path = self._spec().get("health_path")
        if not path:
            return
        try:
            self.store(Path(path), records, self.clock())
            self._saved = records
        except OSError as exc:
            self.log(f"cannot write {path}: {exc}")


def parse_fields(line: str) -> dict[str, str]:
    """``key:value key:value`` (an event header or payload line); other tokens are ignored."""
    fields = {}
    for token in line.split():
        key, sep, value = token.partition(":")
        if sep and key:
            fields[key] = value
    return fields


# ------------------------------------------------------------------------------------------
# The protocol


class Channel:
    """supervisord's side of the pipe: byte-exact reads with a timeout (``select`` on the raw fd;
    a buffered reader would hide what it holds from ``select``)."""

    def __init__(self, fd: int, out: BinaryIO) -> None:
        self.fd = fd
        self.out = out
        self.buffer = b""
        self.eof = False

    def send(self, data: bytes) -> None:
        self.out.write(data)
        self.out.flush()

    def wait(self, timeout: float | None) -> bool:
        """Whether input is there (or the end of it) within ``timeout`` seconds."""
        if self.buffer or self.eof:
            return True
        ready, _, _ = select.select([self.fd], [], [], timeout)
        return bool(ready)

    def _fill(self) -> bool:
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self.eof = True
        self.buffer += chunk
        return bool(chunk)

    def readline(self) -> bytes | None:
        while b"\n" not in self.buffer:
            if self.eof or not self._fill():
                return None
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def read(self, count: int) -> bytes | None:
        while len(self.buffer) < count:
            if self.eof or not self._fill():
                return None
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data


def serve(healer: Healer, channel: Channel) -> int:
    """READY, an event, ``RESULT 2\\nOK``, for ever; 0 when supervisord closes the pipe."""
    _safely(healer.start, healer.log)
    try:
        while True:
            channel.send(b"READY\n")
            while not channel.wait(healer.due_in()):
                _safely(healer.on_timer, healer.log)
            header = channel.readline()
            if header is None:
                return 0
            fields = parse_fields(header.decode("utf-8", "replace"))
            length = fields.get("len", "")
            size = int(length) if length.isdigit() and int(length) <= MAX_PAYLOAD else 0
            payload = channel.read(size) if size else b""
            if payload is None:
                return 0
            event = fields.get("eventname", "")
            _safely(healer.on_event, healer.log, event, payload)
            channel.send(b"RESULT 2\nOK")
    except BrokenPipeError:
        return 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _safely(action: Callable[..., None], log: Callable[[str], None], *args: Any) -> None:
    try:
        action(*args)
    except Exception as exc:  # the listener outlives whatever one event does to it
        log(f"error (ignored): {type(exc).__name__}: {exc}")


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    sys.stderr.write(f"{stamp} siteboot-healer: {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m siteboot.healer SPEC.json (run by supervisord)\n")
        return 2
    import signal

    # supervisord stops its listeners with SIGTERM: an orderly exit, not a death by signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    spec = SpecFile(Path(args[0]))
    healer = Healer(spec.current, Supervisor(spec.current))
    return serve(healer, Channel(sys.stdin.fileno(), sys.stdout.buffer))


if __name__ == "__main__":
    sys.exit(main())
