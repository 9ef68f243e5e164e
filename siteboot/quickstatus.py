"""``siteboot status`` from the plan cache's digest, without loading the model.

Monitoring runs ``status`` every minute on every node: most of its time went to importing the
site model (its dataclasses) to learn where the sockets and keys are. The plan cache keeps,
beside the plan, a digest of what status needs (``control.status_digest``); while the cache is
trusted (``plan_cache``), ``report`` makes the report from it and the supervisords' answers with
the same functions and types as the full status (``statusreport``).

It answers only the plain case: every instance asked is here and either the invoker's (its
socket there) or granted to a group (its key published; asked over TCP, as the full status
asks), its supervisord RUNNING and none of its processes failing (whose log tail and port
holder the full status adds), no detached runner among them, no start record of the site that
the site no longer describes (an orphan, maybe); one placed on another host is listed, not
asked. Anything else, a corrupt digest included, returns None and the full status runs: it
says what is wrong, as it always did.
"""

from __future__ import annotations

import json
import os
import time

from siteboot.statusreport import (
    FAILING,
    NOT_ANSWERING,
    NOT_RUNNING,
    RUNNING,
    InstanceStatus,
    StatusResult,
    add_health,
    describes,
    elsewhere,
    program_rows,
    read_held,
    unreachable,
    venv_problems,
)

TYPE_CHECKING = False  # no typing at run time: every command pays for its import
if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path
    from typing import Any

# What a supervisord read after another timed out still gets: its answer, sent early, is here
_AFTER_THE_DEADLINE = 1.0
# Processes whose answer fits in a unix socket's send buffer (~200 KB; ~1.3 KB a process)
_FITS_A_BUFFER = 100
# How a supervisord of the invoker's, its socket there, may fail to answer: said alike by both
_UNREACHABLE = frozenset({NOT_RUNNING, NOT_ANSWERING})


class _NotPlain(Exception):
    """The full status must answer this one."""


def report(site_path: Path, env: str, instances: Sequence[str] = ()) -> StatusResult | None:
    """The status of ``instances`` (none: all) of the site at ``site_path`` in ``env``, or None
    when the full status must make it."""
    from siteboot.plan_cache import trusted_digest

    digest = trusted_digest(site_path, env)
    if digest is None:
        return None
    try:
        return _report(digest, instances)
    except (_NotPlain, KeyError, TypeError, ValueError, IndexError, AttributeError):
        return None


def _report(digest: dict[str, Any], names: Sequence[str]) -> StatusResult:
    everything = digest["instances"]
    chosen = [inst for inst in everything if not names or inst["name"] in names]
    if any(name not in {inst["name"] for inst in everything} for name in names):
        raise _NotPlain  # the full status says which name is wrong
    if digest["detached_runner"] in [inst["name"] for inst in chosen]:
        raise _NotPlain
    asked = [inst for inst in chosen if inst["here"]]
    if not all(inst["quick"] and (not inst["owned"] or os.path.lexists(inst["socket"]))
               for inst in asked):
        raise _NotPlain
    if not names:
        _check_no_orphans(digest)
    # All were asked at once (``wire.send_early``): each has until the same moment to answer,
    # as if read in parallel, so that two hung supervisords do not cost twice the timeout.
    from siteboot.wire import ANSWER_TIMEOUT

    deadline = time.monotonic() + ANSWER_TIMEOUT
    if len(asked) > 1 and any(len(inst["processes"]) > _FITS_A_BUFFER for inst in asked):
        from siteboot.concurrency import concurrently

        # read at once: a supervisord whose answer nobody reads stops sending it; what is not
        # plain is given up on at once, not after a hung one (the full status waits for it)
        rows = concurrently(lambda inst: _instance_row(inst, digest["env"], deadline), asked,
                            give_up_on=_NotPlain)
    else:  # every answer fits in its socket's buffer: read one after the other, no threads
        rows = _one_by_one(asked, digest["env"], deadline)
    answers = {inst["name"]: row for inst, row in zip(asked, rows)}
    rows = [answers.get(inst["name"])
            or elsewhere(inst["name"], inst["user"], inst["http_url"], inst["host"])
            for inst in chosen]
    return StatusResult(digest["site"], digest["env"], rows,
                        venv_problems=venv_problems(inst["venvs"] for inst in chosen))


def _one_by_one(chosen: list[dict[str, Any]], env: str, deadline: float) -> list[InstanceStatus]:
    """The rows of ``chosen``, each read as its answer arrives: what is not plain is found
    before a hung supervisord is waited for (the full status waits for it again)."""
    from siteboot.wire import as_answered

    by_url = {inst["url"]: inst for inst in chosen}
    rows = {url: _instance_row(by_url[url], env, deadline)
            for url in as_answered(list(by_url), deadline)}
    return [rows[inst["url"]] for inst in chosen]


def _instance_row(inst: dict[str, Any], env: str, deadline: float) -> InstanceStatus:
    from pathlib import Path

    from siteboot.accounts import uid_of
    from siteboot.errors import SitebootError
    from siteboot.keys import read_key_file, read_shared_key
    from siteboot.rpc import Endpoint, Fault, RpcError

    try:
        key = read_key_file(inst["key"]) if inst["owned"] else read_shared_key(
            Path(inst["shared_key"]), inst["user"], inst["group"], env, inst["name"])
        owner_uid = uid_of(inst["user"])  # now, as the full status asks: not as it was cached
    except (SitebootError, OSError):
        raise _NotPlain from None
    timeout = max(deadline - time.monotonic(), _AFTER_THE_DEADLINE)
    endpoint = Endpoint(inst["url"], key, timeout, owner_uid=owner_uid)
    try:
        state, pid, infos, *log = endpoint.multicall(
            [(name, tuple(params)) for name, params in inst["calls"]])
    except RpcError as exc:
        if exc.reason not in _UNREACHABLE:
            raise _NotPlain from None  # an impostor, a refused key: the full status says more
        # as the full status says it, without making the operator wait for a hung one twice
        row = InstanceStatus(inst["name"], inst["user"], RUNNING, inst["url"], host=inst["host"])
        unreachable(row, exc.reason, str(exc), env, owned=inst["owned"])
        return row
    if isinstance(state, Fault) or state.get("statename") != "RUNNING" \
            or not isinstance(infos, list) or (log and not isinstance(log[0], str)):
        raise _NotPlain
    held = read_held(inst["stops"]) if inst["stops"] else set()  # a member's: none
    programs = program_rows(inst["processes"], infos, held=held,
                            main_log=log[0] if log else None)
    if any(row.state in FAILING for row in programs):  # the full status adds to those
        raise _NotPlain
    if inst["health"] is not None:
        add_health(programs, inst["health"], inst["probed"])
    return InstanceStatus(inst["name"], inst["user"], RUNNING, inst["url"],
                          pid=pid if isinstance(pid, int) else None, programs=programs,
                          host=inst["host"])


def _check_no_orphans(digest: dict[str, Any]) -> None:
    """Every start record of this site and env by the invoker describes one of its instances
    (``records.orphaned``); a record the full status might show as an orphan is not plain."""
    folder = digest["records"]
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    except OSError:
        raise _NotPlain from None
    described = [inst["started_as"] for inst in digest["instances"]]
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            continue  # as ``records.read_start``: not a record
        if not isinstance(record, dict) or record.get("site") != digest["site"] \
                or record.get("env") != digest["env"]:
            continue
        if record.get("host") and record.get("host") != digest["host"]:
            raise _NotPlain  # another host's, or this one's under another name
        if not any(describes(started_as, record) for started_as in described):
            raise _NotPlain
