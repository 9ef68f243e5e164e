"""``siteboot logs``: the logs of every program of an env (or the named ones), stdout and
stderr, as one stream of lines each marked with its process, like honcho and ``pm2 logs``.

Each log is read the way ``tail`` reads one (``control.tail``): from its files, backups
included, by whoever can read them (the owner), else over RPC (a granted member); following
goes on across rotations (``logtail``). Lines are passed on whole: a line still being written
waits for its newline, so lines of two programs never mix. The backlog (the last lines of each
log) comes log by log: the files hold no times to interleave it by.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

from siteboot.control import log_reader, select_targets, tail_end
from siteboot.errors import SitebootError, UsageError
from siteboot.hints import command
from siteboot.plan import InstancePlan, Plan, ProgramPlan, Selection
from siteboot.rpc import Fault, RpcError, connect

STREAMS = ("stdout", "stderr")
# The backlog over RPC is fetched in growing windows until it holds the lines asked for.
_FIRST_WINDOW = 4096


@dataclass(frozen=True)
class LogStream:
    """One log shown: a process's stdout or stderr."""

    instance: str
    process: str
    stream: str  # "stdout" or "stderr"
    label: str  # "web" or "web err", padded to the widest label shown
    index: int  # the process's place among those shown: the CLI colours its label by it


Emit = Callable[[LogStream, str], None]


def select_streams(plan: Plan, names: Sequence[str], instance: Selection = None) -> list[LogStream]:
    """The logs of ``names`` (any name ``status`` shows; none: every program the invoker may
    read), narrowed to the ``instance``s: stdout, and stderr unless the program sends it into
    stdout (``redirect_stderr``)."""
    targets = select_targets(plan, names, instance)
    chosen: list[tuple[str, str, str]] = []
    for inst_name, processes in targets.items():
        inst = plan.instance(inst_name)
        for process in processes:
            program = _program_of(inst, process)
            chosen += [(inst_name, process, stream) for stream in STREAMS
                       if stream == "stdout" or not program.options["redirect_stderr"]]
    labels = [process + (" err" if stream == "stderr" else "") for _, process, stream in chosen]
    width = max((len(label) for label in labels), default=0)
    order: dict[str, int] = {}
    return [LogStream(inst_name, process, stream, label.ljust(width),
                      order.setdefault(f"{inst_name}:{process}", len(order)))
            for (inst_name, process, stream), label in zip(chosen, labels)]


def _program_of(inst: InstancePlan, process: str) -> ProgramPlan:
    return next(p for p in inst.programs if process in p.process_names())


class _Lines:
    """Text of one log in, whole lines out (a partial line waits for the rest)."""

    def __init__(self, stream: LogStream, emit: Emit) -> None:
        self.stream = stream
        self.emit = emit
        self.partial = ""

    def text(self, text: str) -> None:
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            self.emit(self.stream, line)

    def notice(self, message: str) -> None:
        self.flush()
        self.emit(self.stream, f"==> {message} <==")

    def flush(self) -> None:
        if self.partial:
            self.emit(self.stream, self.partial)
            self.partial = ""


class _Source:
    """One log being read: ``start`` prints its last lines, ``poll`` what is new since."""

    def __init__(self, lines: _Lines) -> None:
        self.lines = lines

    def start(self, count: int) -> None:
        raise NotImplementedError

    def poll(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        """Nothing held by default."""


class _FileSource(_Source):
    """The owner's log file, backups included; one that does not exist (yet) is waited for."""

    def __init__(self, lines: _Lines, program: ProgramPlan) -> None:
        super().__init__(lines)
        from siteboot.logtail import FileFollower

        path = program.log_path(lines.stream.process, lines.stream.stream)
        self.follower = FileFollower(path, int(program.options["log_backups"]), lines.text,
                                     lines.notice)
        self.opened = False

    def start(self, count: int) -> None:
        self.opened = self._open(lines=count)

    def _open(self, lines: int | None) -> bool:
        try:
            # a log that appears later is read from its first byte
            self.follower.start(nbytes=os.path.getsize(self.follower.path), lines=lines)
        except FileNotFoundError:
            return False
        return True

    def poll(self) -> bool:
        if not self.opened:
            self.opened = self._open(lines=None)
            return self.opened
        return self.follower.poll()

    def close(self) -> None:
        self.follower.close()


class _Reach:
    """How one instance is reached, shared by its logs: a supervisord that stops answering is
    said once (not once per log) and asked again on every poll."""

    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint
        self.failing = False


class _RpcSource(_Source):
    """A log read through its supervisord: what a granted member, who cannot read the owner's
    files, gets."""

    def __init__(self, lines: _Lines, reach: _Reach, full: str) -> None:
        super().__init__(lines)
        from siteboot.logtail import RpcFollower

        self.reach = reach
        self.endpoint = reach.endpoint
        self.full = full
        self.kind = lines.stream.stream.capitalize()  # Stdout / Stderr, as the methods name them
        self.follower = RpcFollower(self._read, lines.text, lines.notice)
        self.reader = log_reader(self.endpoint, full, self.kind)

    def _read(self, start: int, length: int) -> Any:
        answer = self.reader(start, length)
        if self.reach.failing:  # before what it says now
            self.lines.notice("reading again")
            self.reach.failing = False
        return answer

    def start(self, count: int) -> None:
        from siteboot.logtail import lines_start

        window = _FIRST_WINDOW
        while True:
            text, size = tail_end(self.endpoint, self.full, self.kind, window)
            data = text.encode("utf-8")
            found = lines_start(data, count)
            if found is not None or window >= size:
                break
            window *= 4
        self.lines.text(data[found or 0:].decode("utf-8"))
        self.follower.start(size, text)

    def poll(self) -> bool:
        try:
            got = self.follower.poll()
        except (RpcError, Fault) as exc:
            if not self.reach.failing:
                why = exc.message if isinstance(exc, RpcError) else exc.faultString
                self.lines.notice(f"{why}; asking again")
            self.reach.failing = True
            return False
        return got


def show(plan: Plan, names: Sequence[str], emit: Emit, instance: Selection = None,
         follow: bool = False, lines: int = 10, interval: float = 0.25,
         stop: threading.Event | None = None, files: bool = True) -> None:
    """Emit the last ``lines`` lines of each selected log, then (``follow``) every line written
    to any of them, until ``stop`` is set (or Ctrl-C). An instance that cannot be read (no key,
    not running) gets one notice line and the others are shown; when none can be, its error is
    raised instead. ``files=False`` reads every log over RPC, as a granted member does."""
    from siteboot import logtail

    streams = select_streams(plan, names, instance)
    if not streams:
        raise UsageError(f"no logs to show: no instance of site {plan.site.name} is yours or "
                         "grants you access", "name one with -i, or run as its owner "
                         f"(`{command('status', env=plan.env)}` shows who owns which)")
    sources: list[_Source] = []
    failed: dict[str, SitebootError] = {}
    untold: list[tuple[_Lines, str]] = []  # notices held until some log could be read
    reaches: dict[str, _Reach] = {}
    try:
        for stream in streams:
            out = _Lines(stream, emit)
            inst = plan.instance(stream.instance)
            try:
                source = _open_source(plan, inst, stream, out, reaches, files)
                source.start(lines)
            except SitebootError as exc:  # no key, not running, not loaded: the others go on
                if inst.name not in failed:
                    untold.append((out, f"cannot read {inst.name}: {exc.message}"))
                failed.setdefault(inst.name, exc)
                continue
            sources.append(source)
            for held, message in untold:
                held.notice(message)
            untold.clear()
            if not follow:
                out.flush()
        if not sources:
            raise next(iter(failed.values()))
        for held, message in untold:
            held.notice(message)
        if follow:
            logtail.follow(lambda: any([source.poll() for source in sources]), interval, stop)
    finally:
        for source in sources:
            source.close()


def _open_source(plan: Plan, inst: InstancePlan, stream: LogStream, out: _Lines,
                 reaches: dict[str, _Reach], files: bool) -> _Source:
    """Files for whoever can read them (or, for the owner, will: a log not written yet), else
    RPC; either way the instance's key must be ours to have, as for ``tail``."""
    if inst.name not in reaches:
        reaches[inst.name] = _Reach(connect(plan, inst, timeout=10.0))
    program = _program_of(inst, stream.process)
    path = program.log_path(stream.process, stream.stream)
    if files and (os.access(path, os.R_OK) or (plan.owns(inst) and not os.path.lexists(path))):
        return _FileSource(out, program)
    return _RpcSource(out, reaches[inst.name], f"{inst.group_name}:{stream.process}")
