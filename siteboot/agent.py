"""``siteboot-deploy-agent``: applies the deploy requests of a deploy grant's members.

Rendered as a program into an instance that grants ``deploy`` (``render.agent_section``), run
by the owner's own siteboot (``python -I -m siteboot.agent <spec>``). Every second it looks
into the instance's requests dir (one ``os.scandir``); the loop uses the standard library
only, and siteboot's modules are imported when a request comes.

Each complete request ``<id>`` is handled by a child (``--one``) so that one bad request never
kills the agent: the child takes a lock named after the request, renames it ``<id>.taken``
(a request runs once), copies and checks it (``deployrequest.take_copy``), runs the owner's
siteboot on the copy (``deployrequest.apply_request``) and writes ``<id>.result.json``. A
``.taken`` request without a result whose lock nobody holds was interrupted (the agent or its
child was killed): it is answered ``interrupted``, never run again. One line per request goes
to stderr, the agent's log (``siteboot ctl -i INSTANCE tail siteboot-deploy-agent stderr``,
for the owner and the members alike).
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

POLL_SECONDS = 1.0
CHILD_TIMEOUT = 3600.0


def log(text: str) -> None:
    sys.stderr.write(time.strftime("%Y-%m-%d %H:%M:%S ") + text + "\n")
    sys.stderr.flush()


def load_spec(path: Path) -> dict[str, Any] | None:
    """The spec, if this account wrote it where nobody else could (after a /tmp wipe another
    account could make the runtime dir again and put a spec there)."""
    try:
        folder = os.lstat(path.parent)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        mine = os.geteuid()
        if (not stat.S_ISREG(info.st_mode) or info.st_uid != mine or info.st_mode & 0o022
                or not stat.S_ISDIR(folder.st_mode) or folder.st_uid != mine
                or folder.st_mode & 0o022):
            return None
        data = json.loads(os.read(fd, 1 << 20).decode("utf-8"))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return data if isinstance(data, dict) else None


def pending(folder: Path) -> tuple[list[str], list[str]]:
    """Complete requests, and taken ones without a result (cheap: one scandir)."""
    from siteboot.deployrequest import request_ids

    try:
        with os.scandir(folder) as entries:
            if not any(not e.name.endswith((".result.json", ".partial")) and
                       not e.name.startswith(".") for e in entries):
                return [], []
        return request_ids(folder)
    except OSError:
        return [], []


def serve_once(spec_path: Path, spec: dict[str, Any]) -> None:
    folder = Path(spec["requests_dir"])
    complete, taken = pending(folder)
    for request_id in taken:
        answer_interrupted(spec, request_id)
    for request_id in complete:
        run_child(spec_path, request_id)


def run_child(spec_path: Path, request_id: str) -> None:
    from siteboot.proc import python_module, run_command

    result = run_command(python_module("siteboot.agent", "--one", str(spec_path), request_id),
                         timeout=CHILD_TIMEOUT)
    if result.output.strip():  # the child's own lines (its stderr is captured with stdout)
        sys.stderr.write(result.output.strip()[-4000:] + "\n")
        sys.stderr.flush()
    if result.returncode != 0:
        log(f"request {request_id}: the agent's child exited {result.returncode}")


def answer_interrupted(spec: dict[str, Any], request_id: str) -> None:
    """A taken request without a result: answered unless its child still runs."""
    from siteboot.errors import SitebootError
    from siteboot.fsutil import flock

    lock = Path(spec["work_dir"]) / f"{request_id}.lock"
    try:
        with flock(lock, timeout=0, what=f"request {request_id}"):
            write_result(spec, request_id, _failure(
                "interrupted", "the deploy agent stopped while it handled this request (it is "
                "not run again): check the instance's status, then deploy again"))
            log(f"request {request_id}: interrupted earlier; answered, not run again")
    except SitebootError:
        return  # its child still works on it
    except OSError as exc:
        log(f"request {request_id}: cannot answer it: {exc}")


def _failure(state: str, detail: str) -> dict[str, Any]:
    from siteboot.deployrequest import failure_result

    return failure_result(state, detail)


def write_result(spec: dict[str, Any], request_id: str, result: dict[str, Any]) -> None:
    """``<id>.result.json`` (0640, the grant's group), the request removed, old results pruned."""
    import shutil

    from siteboot.deployrequest import KEEP_RESULTS, RESULT, TAKEN
    from siteboot.fsutil import atomic_write
    from siteboot.requestsdir import group_gid_of

    folder = Path(spec["requests_dir"])
    atomic_write(folder / (request_id + RESULT), json.dumps(result, indent=1) + "\n",
                 mode=0o640, gid=group_gid_of(spec["group"]))
    taken = folder / (request_id + TAKEN)
    if os.path.isdir(taken) and not os.path.islink(taken):
        shutil.rmtree(taken, ignore_errors=True)  # what the requester left group-writable
    elif os.path.lexists(taken):  # a planted file or symlink: removed, never followed
        try:
            os.unlink(taken)
        except OSError:
            pass
    # an answer whose request could not be removed stays: it keeps that request answered
    results = sorted(n for n in os.listdir(folder) if n.endswith(RESULT)
                     and not os.path.lexists(folder / (n[:-len(RESULT)] + TAKEN)))
    for old in results[:-KEEP_RESULTS]:
        try:
            os.unlink(folder / old)
        except OSError:
            pass


def handle_one(spec_path: Path, request_id: str) -> int:
    """The child: lock, take, copy, check, apply, answer."""
    from siteboot.deployrequest import TAKEN
    from siteboot.errors import SitebootError
    from siteboot.fsutil import ensure_private_dir, flock

    spec = load_spec(spec_path)
    if spec is None:
        log(f"request {request_id}: no usable spec at {spec_path}")
        return 1
    folder, work = Path(spec["requests_dir"]), Path(spec["work_dir"])
    ensure_private_dir(work.parent)
    ensure_private_dir(work)
    try:
        with flock(work / f"{request_id}.lock", timeout=0, what=f"request {request_id}"):
            if not os.path.lexists(folder / request_id):
                return 0  # another child took it
            set_aside(folder, request_id + TAKEN)
            os.rename(folder / request_id, folder / (request_id + TAKEN))
            requester, result = process(spec, request_id)
            write_result(spec, request_id, result)
            log(f"request {request_id} from {requester}: {result['state']}"
                + (f": {result['detail']}" if result.get("detail") else ""))
    except SitebootError:
        return 0  # another child holds it
    prune_copies(work)
    return 0


def set_aside(folder: Path, name: str) -> None:
    """An earlier entry at ``name`` that could not be removed (its maker left it unwritable to
    us) goes out of the way under a hidden name, which the agent never takes."""
    import secrets

    if os.path.lexists(folder / name):
        os.rename(folder / name, folder / f".stale-{secrets.token_hex(4)}-{name}")


def process(spec: dict[str, Any], request_id: str) -> tuple[str, dict[str, Any]]:
    import shutil

    from siteboot.deployrequest import (
        TAKEN,
        GroupMembers,
        RequestRefused,
        apply_request,
        failure_result,
        take_copy,
    )
    from siteboot.errors import SitebootError
    from siteboot.fsutil import owner_name

    copy = Path(spec["work_dir"]) / request_id
    shutil.rmtree(copy, ignore_errors=True)
    requester = "?"
    try:
        uid = take_copy(Path(spec["requests_dir"]) / (request_id + TAKEN), copy,
                        GroupMembers(spec["group"]))
        requester = owner_name(uid)
        return requester, apply_request(spec, copy, requester)
    except RequestRefused as exc:
        return requester, failure_result("refused", exc.message)
    except SitebootError as exc:
        return requester, failure_result("failed", str(exc))
    except Exception as exc:  # a bug of ours must not keep the member waiting
        return requester, failure_result("failed", f"the deploy agent failed: "
                                         f"{type(exc).__name__}: {exc}")


def prune_copies(work: Path, keep: int = 5) -> None:
    """The copies of the last few requests stay (their releases name them); older ones go."""
    import shutil

    try:
        names = sorted(n for n in os.listdir(work) if not n.endswith(".lock"))
    except OSError:
        return
    for old in names[:-keep]:
        shutil.rmtree(work / old, ignore_errors=True)
        try:
            os.unlink(work / f"{old}.lock")
        except OSError:
            pass


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--one":
        return handle_one(Path(argv[1]), argv[2])
    if len(argv) != 1:
        log("usage: python -m siteboot.agent SPEC")
        return 2
    spec_path = Path(argv[0])
    log(f"deploy agent started (pid {os.getpid()}), spec {spec_path}")
    said_no_spec = False
    while True:
        spec = load_spec(spec_path)
        if spec is None:
            if not said_no_spec:
                log(f"no usable spec at {spec_path} (yet): waiting")
            said_no_spec = True
        else:
            said_no_spec = False
            try:
                serve_once(spec_path, spec)
            except Exception as exc:  # never die of one bad request or a passing fault
                log(f"error: {type(exc).__name__}: {exc}")
        time.sleep(POLL_SECONDS)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
