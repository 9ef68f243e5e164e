"""Restarts from supervisord's main log (issue 11, defect 11): the lines process.py writes."""

from __future__ import annotations

import time

from siteboot.history import EXITED, SPAWNED, STOPPED, clock_offset, history, parse_events

T0 = 1_700_000_000


def stamp(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) + ",042"


LOG = f"""\
half a line cut by the tail
{stamp(T0)} INFO supervisord started with pid 7
{stamp(T0 + 1)} INFO spawned: 'web' with pid 100
{stamp(T0 + 2)} INFO success: web entered RUNNING state, process has stayed up for > than 1 seconds
{stamp(T0 + 5)} WARN exited: web (exit status 3; not expected)
{stamp(T0 + 6)} INFO spawned: 'web' with pid 101
{stamp(T0 + 9)} WARN exited: web (terminated by SIGKILL; not expected)
{stamp(T0 + 10)} INFO spawned: 'web' with pid 102
{stamp(T0 + 11)} INFO spawned: 'worker_00' with pid 200
{stamp(T0 + 12)} INFO stopped: worker_00 (terminated by SIGTERM)
{stamp(T0 + 13)} INFO spawned: 'worker_00' with pid 201
{stamp(T0 + 14)} INFO exited: once (exit status 0; expected)
{stamp(T0 + 15)} WARN exited: odd name (exit status 1; not expected)
"""


def test_parse_events():
    events = parse_events(LOG)
    assert set(events) == {"web", "worker_00", "once"}  # "odd name" is no process name
    web = events["web"]
    assert [(e.at - T0, e.kind, e.detail) for e in web] == [
        (1, SPAWNED, "100"), (5, EXITED, "exit status 3; not expected"), (6, SPAWNED, "101"),
        (9, EXITED, "terminated by SIGKILL; not expected"), (10, SPAWNED, "102")]
    assert [e.kind for e in events["worker_00"]] == [SPAWNED, STOPPED, SPAWNED]


def test_restarts_are_spawns_after_exits_within_the_window():
    events = parse_events(LOG)
    web = history(events["web"], now=T0 + 20, window_s=300)
    assert web.restarts == 2
    assert web.window_s == 300
    assert web.last_exit is not None
    assert (web.last_exit.ago_s, web.last_exit.reason, web.last_exit.expected) == \
        (11, "terminated by SIGKILL", False)
    assert web.last_exit.as_json() == {"ago_s": 11, "reason": "terminated by SIGKILL",
                                       "expected": False}
    assert history(events["web"], now=T0 + 20, window_s=12).restarts == 1  # T0+6 is before
    assert history(events["worker_00"], now=T0 + 20, window_s=300).restarts == 0  # a stop
    once = history(events["once"], now=T0 + 20, window_s=300)
    assert once.restarts == 0
    assert once.last_exit is not None
    assert once.last_exit.expected is True
    assert history([], now=T0, window_s=300).last_exit is None


def test_clock_offset_from_a_spawn_of_known_start():
    events = parse_events(LOG)
    hour = 3600
    infos = [{"name": "web", "pid": 102, "start": T0 + 10 + hour}]
    assert clock_offset(events, infos) == hour
    assert clock_offset(events, [{"name": "web", "pid": 102, "start": T0 + 10 + 2}]) == 0  # jitter
    assert clock_offset(events, [{"name": "web", "pid": 999, "start": T0}]) == 0
    assert clock_offset(events, [{"name": "web", "pid": 0, "start": 0}]) == 0
    shifted = history(events["web"], now=T0 + 20 + hour, window_s=12, offset=hour)
    assert shifted.restarts == 1
    assert shifted.last_exit is not None
    assert shifted.last_exit.ago_s == 11
