"""Restarts per process, read from supervisord's own main log: no daemon of ours counts them.

supervisord logs every spawn and exit (supervisor/process.py) in local time, e.g.::

    2024-05-01 12:00:00,123 INFO spawned: 'web' with pid 4242
    2024-05-01 12:00:04,456 WARN exited: web (exit status 3; not expected)
    2024-05-01 12:00:09,001 INFO stopped: web (terminated by SIGTERM)

A restart is a spawn that follows an exit of the same process (supervisord's autorestart, or a
start after a crash); a spawn after ``stopped:`` (an operator's stop or restart) is not.
``status`` reads the log's tail in the same multicall as the process states.

Standard library only, and no ``time.strptime`` (it imports locale and calendar): ``status``
stays fast.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

# Bytes of the main log's end that `status` reads (supervisor.readLog with a negative offset):
# a restart writes about 260 bytes, so this covers some 250 restarts of the whole instance.
MAIN_LOG_TAIL = 65536

_EVENT = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d),\d+ [A-Z]+ "
    r"(?:spawned: '([^']+)' with pid (\d+)|(exited|stopped): (\S+) \((.*)\))$", re.MULTILINE)
SPAWNED, EXITED, STOPPED = "spawned", "exited", "stopped"
# Log times are local and carry no zone; the zone of supervisord (who wrote them) can differ
# from ours (a cron job without TZ): the offset is measured on a spawn of known start time and
# rounded to the quarter hours zones are made of.
_ZONE_STEP = 900


@dataclass(frozen=True)
class Event:
    at: float  # seconds since the epoch, as the local time of the reader reads the log's time
    kind: str  # SPAWNED, EXITED or STOPPED
    detail: str  # the pid of a spawn; "exit status 3; not expected" of an exit


@dataclass(frozen=True)
class LastExit:
    ago_s: int
    reason: str  # "exit status 3", "terminated by SIGKILL"
    expected: bool  # an exit code listed in the program's exitcodes

    def as_json(self) -> dict[str, Any]:
        return {"ago_s": self.ago_s, "reason": self.reason, "expected": self.expected}


@dataclass(frozen=True)
class History:
    restarts: int  # within the window
    window_s: int
    last_exit: LastExit | None


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
