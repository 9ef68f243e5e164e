"""Restarts per process, read from supervisord's own main log: no daemon of ours counts them.

supervisord logs every spawn and exit (supervisor/process.py) in local time, e.g.::

    2024-05-01 12:00:00,123 INFO spawned: 'web' with pid 4242
    2024-05-01 12:00:04,456 WARN exited: web (exit status 3; not expected)
    2024-05-01 12:00:09,001 INFO stopped: web (terminated by SIGTERM)

A restart is a spawn that follows an exit of the same process (supervisord's autorestart, or a
start after a crash); a spawn after ``stopped:`` (an operator's stop or restart) is not.
``status`` reads the log's tail in the same multicall as the process states.

Standard library only, no ``time.strptime`` (it imports locale and calendar) and no
dataclasses (making one costs a millisecond at import): ``status`` stays fast.
"""

from __future__ import annotations

import re
import time

TYPE_CHECKING = False  # no typing at run time: every command pays for its import
if TYPE_CHECKING:
    from typing import Any

# Bytes of the main log's end that `status` reads (supervisor.readLog with a negative offset):
# a restart writes about 260 bytes, so this covers some 60 restarts of the whole instance, far
# more than a crash-loop verdict needs, for about half a millisecond (64 KB cost two).
MAIN_LOG_TAIL = 16384

_EVENT = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d),\d+ [A-Z]+ "
    r"(?:spawned: '([^']+)' with pid (\d+)|(exited|stopped): (\S+) \((.*)\))$", re.MULTILINE)
SPAWNED, EXITED, STOPPED = "spawned", "exited", "stopped"
# Log times are local and carry no zone; the zone of supervisord (who wrote them) can differ
# from ours (a cron job without TZ): the offset is measured on a spawn of known start time and
# rounded to the quarter hours zones are made of.
_ZONE_STEP = 900


class Event:
    __slots__ = ("at", "detail", "kind")

    def __init__(self, at: float, kind: str, detail: str) -> None:
        self.at = at  # seconds since the epoch, reading the log's local time as ours
        self.kind = kind  # SPAWNED, EXITED or STOPPED
        self.detail = detail  # the pid of a spawn; "exit status 3; not expected" of an exit


class LastExit:
    __slots__ = ("ago_s", "expected", "reason")

    def __init__(self, ago_s: int, reason: str, expected: bool) -> None:
        self.ago_s = ago_s
        self.reason = reason  # "exit status 3", "terminated by SIGKILL"
        self.expected = expected  # an exit code listed in the program's exitcodes

    def as_json(self) -> dict[str, Any]:
        return {"ago_s": self.ago_s, "reason": self.reason, "expected": self.expected}


class History:
    __slots__ = ("last_exit", "restarts", "window_s")

    def __init__(self, restarts: int, window_s: int, last_exit: LastExit | None) -> None:
        self.restarts = restarts  # within the window
        self.window_s = window_s
        self.last_exit = last_exit


def parse_events(text: str) -> dict[str, list[Event]]:
    """Spawns, exits and stops of each process name, oldest first."""
    events: dict[str, list[Event]] = {}
    for match in _EVENT.finditer(text):
        year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
        at = time.mktime((year, month, day, hour, minute, second, 0, 0, -1))
        if match.group(7):
            events.setdefault(match.group(7), []).append(Event(at, SPAWNED, match.group(8)))
        else:
            events.setdefault(match.group(10), []).append(
                Event(at, match.group(9), match.group(11)))
    return events


def clock_offset(events: dict[str, list[Event]], infos: list[dict[str, Any]]) -> float:
    """What to add to a log time to get supervisord's clock: zero unless the zones differ."""
    for info in infos:
        pid, start = info.get("pid"), info.get("start")
        if not pid or not start:
            continue
        spawns = [e.at for e in events.get(info.get("name", ""), [])
                  if e.kind == SPAWNED and e.detail == str(pid)]
        if spawns:
            return float(round((start - spawns[-1]) / _ZONE_STEP) * _ZONE_STEP)
    return 0.0


def history(events: list[Event], now: float, window_s: int, offset: float = 0.0) -> History:
    """Restarts of one process in the ``window_s`` seconds before ``now``, and its last exit."""
    since = now - window_s
    restarts = 0
    previous = None
    last: Event | None = None
    for event in events:
        if event.kind == EXITED:
            last = event
        elif event.kind == SPAWNED and previous == EXITED and event.at + offset >= since:
            restarts += 1
        previous = event.kind
    last_exit = None
    if last is not None:
        reason, _, expected = last.detail.rpartition("; ")
        if not reason:  # an older supervisord without "; expected"
            reason, expected = expected, ""
        last_exit = LastExit(max(0, int(now - (last.at + offset))), reason, expected == "expected")
    return History(restarts, window_s, last_exit)
