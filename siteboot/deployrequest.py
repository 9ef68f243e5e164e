"""Deploys to an instance of another account that grants ``deploy`` to the invoker's group.

A member never writes the owner's config. Its ``deploy`` (or ``rollback``) leaves a *request*
in the owner's requests dir (``InstancePlan.requests_dir``, the owner's, mode 3770: members
create entries, only their makers and the owner remove them): ``<id>.partial/`` holding
``request.json`` and ``root/`` (the parts of the member's site root the plan reads), renamed to
``<id>`` once complete. The deploy agent inside the owner's instance (``siteboot.agent``)
takes it (renamed ``<id>.taken``: never run twice), copies it into its private state dir
while checking every entry (``take_copy``), and runs the owner's own siteboot on the copy
(``apply_request``): the owner's supervisord only ever loads program definitions that the
owner's siteboot validated and rendered. A request that changes a server setting, the
instance's keys or the agent itself is refused. The outcome is ``<id>.result.json`` (the
owner's, 0640, the grant's group), which the member waits for.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import stat
import time
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from siteboot.accounts import uid_of
from siteboot.errors import EXIT_FAILED, OwnershipError, SitebootError
from siteboot.hints import command
from siteboot.plan import InstancePlan, Plan
from siteboot.progress import SILENT, Reporter
from siteboot.requestsdir import acl_problem, group_gid, identity, requests_dir_problem

if TYPE_CHECKING:
    from siteboot.deploy import DeployResult, RollbackResult

REQUEST_FILE = "request.json"
ROOT = "root"
PARTIAL, TAKEN, RESULT = ".partial", ".taken", ".result.json"
MAX_FILES = 2000
MAX_BYTES = 50 << 20
BUILD_ALLOWANCE = 900.0  # seconds a requested deploy may spend building venvs, beyond its timeout
KEEP_RESULTS = 20
_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,100}")


class RequestRefused(SitebootError):
    """A request the agent does not run: what is wrong with it."""


# ------------------------------------------------------------------------------------------
# The member's side


@dataclass
class RequestOutcome:
    """What the owner's agent did with one request (or why none was made)."""

    instance: str
    owner: str
    state: str  # deployed, rolled back, failed, refused, not requested, timed out
    detail: str = ""
    release: str | None = None
    restarted: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.state == "deployed"

    def as_json(self) -> dict[str, Any]:
        return {"instance": self.instance, "owner": self.owner, "state": self.state,
                "detail": self.detail, "release": self.release, "restarted": self.restarted,
                "messages": self.messages}


def granted_instances(plan: Plan) -> list[InstancePlan]:
    """The instances of other accounts that grant deploy, placed on this host."""
    return [inst for inst in plan.instances.values()
            if not plan.owns(inst) and inst.grants_deploy and inst.here]


def requests_for(plan: Plan, root: Path | None, action: str, timeout: float,
                 progress: Reporter = SILENT, why_not: str | None = None) -> list[RequestOutcome]:
    """A request to each instance of another account that grants deploy, one after another
    (``why_not``: none is made, and each says why). A rollback asks each agent to go back to
    its own previous release: the invoker's releases are not the owner's."""
    if why_not is not None:
        return [RequestOutcome(inst.name, inst.user, "not requested", why_not)
                for inst in granted_instances(plan)]
    return [request_deploy(plan, inst, root, action, None, timeout, progress)
            for inst in granted_instances(plan)]


def request_deploy(plan: Plan, inst: InstancePlan, root: Path | None, action: str,
                   to: str | None, timeout: float, progress: Reporter = SILENT) -> RequestOutcome:
    """Ask ``inst``'s agent to deploy (or roll back) and wait for its answer."""
    try:
        _require_agent(plan, inst)
        request_id = submit(plan, inst, root, action, to, timeout)
    except SitebootError as exc:
        return RequestOutcome(inst.name, inst.user, "not requested", str(exc))
    progress.note(f"waiting for {inst.name}'s deploy agent (owned by {inst.user})")
    try:
        return wait_for_result(inst, request_id, timeout + BUILD_ALLOWANCE)
    finally:
        _remove_own(inst.requests_dir, request_id)


def _require_agent(plan: Plan, inst: InstancePlan) -> None:
    """With the control key: the instance is up and its deploy agent RUNNING."""
    from siteboot.rpc import Fault, RpcError, connect
    from siteboot.site import DEPLOY_AGENT_PROGRAM

    start = f"as {inst.user}: `{command('up', env=inst.env, instance=inst.name)}`"
    try:
        info = connect(plan, inst, 10.0).call("supervisor.getProcessInfo", DEPLOY_AGENT_PROGRAM)
    except RpcError as exc:
        raise SitebootError(f"{inst.name} is not up: {exc.message}", f"{start} starts it "
                            "and its deploy agent (if your checkout changed its port: that is "
                            f"{inst.user}'s to change)") from None
    except Fault:
        raise SitebootError(f"{inst.name} has no deploy agent: its supervisord was started "
                            f"before grant = \"deploy\" (or from a template without it)",
                            f"{start} renders it") from None
    if info.get("statename") != "RUNNING":
        raise SitebootError(f"the deploy agent of {inst.name} is {info.get('statename')}",
                            f"{start}; `{agent_log_command(inst)}` says why")


def request_files(plan: Plan, root: Path | None) -> dict[str, Path]:
    """Path in the request's ``root/`` -> the file of the member's checkout: the site file,
    the templates, and the local sources the plan reads (requirements, find-links folders,
    the preamble file) inside the site root."""
    from siteboot.sources import parse_all

    files = {f"sites/{plan.site.path.name}": plan.site.path}
    if root is None:
        return files
    top = Path(os.path.realpath(root))
    wanted: list[Path] = [top / "templates"]
    for venv in plan.site.venvs.values():
        for req in parse_all(venv.requirements, top):
            if req.path is not None:
                wanted.append(req.path)
    if plan.site.preamble_file:
        wanted.append(Path(os.path.realpath(plan.site.path.parent / plan.site.preamble_file)))
    for path in wanted:
        if path != top and top not in path.parents:
            continue  # outside the site root: the owner's own copy (or a failure) decides
        for found in _walk(path):
            files[found.relative_to(top).as_posix()] = found
    return files


def _walk(path: Path) -> list[Path]:
    from siteboot.sources import _SKIPPED_DIRS

    if path.is_file():
        return [path]
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if d not in _SKIPPED_DIRS]
        found += [Path(dirpath) / name for name in filenames]
    return found


def submit(plan: Plan, inst: InstancePlan, root: Path | None, action: str,
           to: str | None, timeout: float = 60.0) -> str:
    """Write a complete request into ``inst``'s requests dir; its id."""
    import secrets

    gid = group_gid(inst)
    problem = requests_dir_problem(inst, uid_of(inst.user), gid)
    if problem:
        raise OwnershipError(f"requests dir {inst.requests_dir} {problem}: no request is left "
                             "there", f"as {inst.user}: remove it and run "
                             f"`{command('up', env=inst.env, instance=inst.name)}`")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    who = re.sub(r"[^0-9A-Za-z_-]", "_", plan.invoker)  # the agent takes only such names
    request_id = f"{stamp}-{who}-{secrets.token_hex(6)}"
    try:
        _write_request(plan, inst, root, gid, request_id, {
            "action": action, "to": to, "site": plan.site.name, "env": plan.env,
            "instance": inst.name, "requester": plan.invoker, "timeout": timeout})
    except OSError as exc:
        _remove_own(inst.requests_dir, request_id + PARTIAL)
        raise SitebootError(f"cannot leave a request for {inst.name} in {inst.requests_dir}: "
                            f"{exc.strerror or exc}") from None
    except SitebootError:
        _remove_own(inst.requests_dir, request_id + PARTIAL)
        raise
    return request_id


def _write_request(plan: Plan, inst: InstancePlan, root: Path | None, gid: int,
                   request_id: str, request: dict[str, Any]) -> None:
    """``<id>.partial/``: ``request.json`` and ``root/``, then renamed ``<id>`` (complete)."""
    from siteboot.deploy import git_commit

    partial = inst.requests_dir / (request_id + PARTIAL)
    _mkdir(partial, gid)
    _mkdir(partial / ROOT, gid)
    request["commit"] = git_commit(plan.site.path.parent)
    _write(partial / REQUEST_FILE, json.dumps(request, indent=1).encode(), gid)
    count = size = 0
    for relative, source in sorted(request_files(plan, root).items()):
        data = source.read_bytes()
        count, size = count + 1, size + len(data)
        if count > MAX_FILES or size > MAX_BYTES:
            raise SitebootError(f"the request for {inst.name} would exceed {MAX_FILES} files or "
                                f"{MAX_BYTES >> 20} MB", "keep big files out of the site root's "
                                "local sources (install them from a wheelhouse)")
        target = partial / ROOT / relative
        for parent in reversed(target.relative_to(partial).parents[:-1]):
            if not (partial / parent).is_dir():
                _mkdir(partial / parent, gid)
        _write(target, data, gid, executable=bool(source.stat().st_mode & 0o100))
    os.rename(partial, inst.requests_dir / request_id)


def _mkdir(path: Path, gid: int) -> None:
    # group-writable: the owner (a member of the group) removes the request once it ran
    os.mkdir(path, 0o700)
    os.chown(path, -1, gid)
    os.chmod(path, 0o2770)


def _write(path: Path, data: bytes, gid: int, executable: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchown(fd, -1, gid)
        os.fchmod(fd, 0o750 if executable else 0o640)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _remove_own(folder: Path, name: str) -> None:
    """Remove what remains of a request of ours (the agent removes what it can)."""
    import shutil

    for each in (name, name + TAKEN):
        if os.path.isdir(folder / each) and not os.path.islink(folder / each):
            shutil.rmtree(folder / each, ignore_errors=True)


def wait_for_result(inst: InstancePlan, request_id: str, timeout: float) -> RequestOutcome:
    """Poll for the agent's answer; only a file of the instance's owner counts."""
    path = inst.requests_dir / (request_id + RESULT)
    deadline = time.monotonic() + timeout
    owner = uid_of(inst.user)
    while True:
        data = read_result(path, owner)
        if data is not None:
            return outcome_of(inst, data)
        if time.monotonic() > deadline:
            taken = os.path.lexists(inst.requests_dir / (request_id + TAKEN))
            return RequestOutcome(
                inst.name, inst.user, "timed out",
                f"no answer from the deploy agent of {inst.name} after {timeout:g} s "
                + ("(it took the request and is still at it: its result appears as "
                   f"{path})" if taken else "(it never took the request)"),
                messages=[f"`{agent_log_command(inst)}` says what it does"])
        time.sleep(0.5)


def agent_log_command(inst: InstancePlan) -> str:
    """How the owner and the members read the agent's log (a member may tail processes)."""
    from siteboot.site import DEPLOY_AGENT_PROGRAM

    return f"{command('ctl', instance=inst.name)} tail {DEPLOY_AGENT_PROGRAM} stderr"


def read_result(path: Path, owner_uid: int) -> dict[str, Any] | None:
    from siteboot.fsutil import read_owned

    raw = read_owned(path, owner_uid, forbidden_mode=0, limit=1 << 20)
    try:
        data = json.loads(raw.decode("utf-8")) if raw is not None else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def outcome_of(inst: InstancePlan, data: dict[str, Any]) -> RequestOutcome:
    def strings(key: str) -> list[str]:
        value = data.get(key)
        return [str(v) for v in value] if isinstance(value, list) else []

    return RequestOutcome(inst.name, inst.user, str(data.get("state", "failed")),
                          str(data.get("detail", "")), data.get("release"),
                          strings("restarted"), strings("messages"))


# ------------------------------------------------------------------------------------------
# The agent's side: take a request, copy it, check it, apply it


class GroupMembers:
    """The accounts of a group, looked up per uid in the account database (never from what a
    request says of itself): those whose primary group it is, and those it lists. Per uid,
    not by listing every account: a directory service may not list them all."""

    def __init__(self, group: str) -> None:
        entry = grp.getgrnam(group)
        self.gid, self.names = entry.gr_gid, set(entry.gr_mem)

    def __contains__(self, uid: object) -> bool:
        if not isinstance(uid, int):
            return False
        try:
            account = pwd.getpwuid(uid)
        except KeyError:
            return False
        return account.pw_gid == self.gid or account.pw_name in self.names


def request_ids(folder: Path) -> tuple[list[str], list[str]]:
    """The complete requests (``<id>``) and the taken ones (``<id>.taken``) without a result."""
    complete, taken = [], []
    with os.scandir(folder) as entries:
        names = {e.name for e in entries}
    for name in sorted(names):
        if _ID.fullmatch(name):
            complete.append(name)
        elif name.endswith(TAKEN) and _ID.fullmatch(name[:-len(TAKEN)]) \
                and name[:-len(TAKEN)] + RESULT not in names:
            taken.append(name[:-len(TAKEN)])
    return complete, taken


def take_copy(entry: Path, into: Path, members: Container[int]) -> int:
    """Copy the request ``entry`` into the new private folder ``into``, checking every entry
    on the way (through descriptors, never following a link): a directory of a member of the
    group, holding only directories and regular files of that member, nothing writable by
    others, no hard links, no ACLs, at most ``MAX_FILES`` files and ``MAX_BYTES``. Returns the
    member's uid; ``RequestRefused`` says what is wrong (nothing of it is used then)."""
    try:
        info = os.lstat(entry)
    except OSError as exc:
        raise RequestRefused(f"cannot read it: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise RequestRefused("it is not a directory (a symlink or a file)")
    if info.st_uid not in members:
        from siteboot.fsutil import owner_name

        raise RequestRefused(f"it belongs to {owner_name(info.st_uid)}, who is not a member of "
                             "the group")
    budget = [0, 0]
    fd = _open_dir(str(entry), None, info)
    try:
        _copy_dir(fd, into, info.st_uid, budget, entry.name)
    finally:
        os.close(fd)
    return info.st_uid


def _open_dir(name: str, dir_fd: int | None, expected: os.stat_result) -> int:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        raise RequestRefused(f"{name}: cannot open it as a directory ({exc.strerror or exc})") \
            from None
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (expected.st_dev, expected.st_ino):
        os.close(fd)
        raise RequestRefused(f"{name} was swapped while it was read")
    return fd


def _check_entry(fd: int, info: os.stat_result, uid: int, where: str) -> None:
    if info.st_uid != uid:
        raise RequestRefused(f"{where} belongs to uid {info.st_uid}, not to the requester")
    if info.st_mode & stat.S_IWOTH:
        raise RequestRefused(f"{where} is writable by everyone")
    acl = acl_problem(fd)
    if acl:
        raise RequestRefused(f"{where} {acl}")


def _copy_dir(fd: int, into: Path, uid: int, budget: list[int], where: str) -> None:
    _check_entry(fd, os.fstat(fd), uid, where)
    os.mkdir(into, 0o700)
    for name in sorted(os.listdir(fd)):
        path = f"{where}/{name}"
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISLNK(info.st_mode):
            raise RequestRefused(f"{path} is a symlink")
        if stat.S_ISDIR(info.st_mode):
            child = _open_dir(name, fd, info)
            try:
                _copy_dir(child, into / name, uid, budget, path)
            finally:
                os.close(child)
        elif stat.S_ISREG(info.st_mode):
            _copy_file(fd, name, into / name, uid, budget, path)
        else:
            raise RequestRefused(f"{path} is neither a file nor a directory")


def _copy_file(dir_fd: int, name: str, target: Path, uid: int, budget: list[int],
               where: str) -> None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as exc:
        raise RequestRefused(f"{where}: cannot open it ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RequestRefused(f"{where} is not a regular file")
        _check_entry(fd, info, uid, where)
        if info.st_nlink != 1:
            raise RequestRefused(f"{where} has {info.st_nlink} hard links")
        budget[0] += 1
        if budget[0] > MAX_FILES:
            raise RequestRefused(f"it holds more than {MAX_FILES} files")
        left = MAX_BYTES - budget[1]
        if info.st_size > left:
            raise RequestRefused(f"it holds more than {MAX_BYTES >> 20} MB")
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                      0o700 if info.st_mode & 0o100 else 0o600)
        try:
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                budget[1] += len(chunk)
                if budget[1] > MAX_BYTES:  # it grew while being read
                    raise RequestRefused(f"it holds more than {MAX_BYTES >> 20} MB")
                os.write(out, chunk)
        finally:
            os.close(out)
    finally:
        os.close(fd)


def read_request(copy: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """The copied ``request.json``, checked against what the agent serves."""
    try:
        data = json.loads((copy / REQUEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RequestRefused(f"no readable {REQUEST_FILE}: {exc}") from None
    if not isinstance(data, dict) or data.get("action") not in ("deploy", "rollback"):
        raise RequestRefused(f"{REQUEST_FILE} asks for no deploy or rollback")
    for key in ("site", "env", "instance"):
        if data.get(key) != spec[key]:
            raise RequestRefused(f"it is for {key} {data.get(key)!r}; this agent serves "
                                 f"{spec[key]!r}")
    to = data.get("to")
    if to is not None and not (isinstance(to, str) and _ID.fullmatch(to)):
        raise RequestRefused(f"'to' = {to!r} names no release")
    return data


def _refusal(why: str, spec: dict[str, Any]) -> RequestRefused:
    owner = spec["identity"]["user"]
    return RequestRefused(f"{why}; only the owner changes that: {owner} runs `siteboot up` "
                          f"(or `siteboot deploy`) with the change")


def check_request_plan(plan: Plan, root: Path, spec: dict[str, Any]) -> None:
    """Refuse a plan that changes the instance's keys, a server setting or the agent's own
    definition: the owner's own ``up`` does those."""
    from siteboot.instances import loaded_changes, rendered
    from siteboot.keys import read_own_key
    from siteboot.rpc import connect
    from siteboot.site import DEPLOY_AGENT_PROGRAM

    inst = plan.instances.get(spec["instance"])
    if inst is None:
        raise _refusal(f"it removes instance {spec['instance']}", spec)
    now = identity(inst)
    changed = [k for k, v in spec["identity"].items() if now.get(k) != v]
    if changed:
        raise _refusal(f"it changes the instance's {', '.join(changed)}", spec)
    changes = loaded_changes(inst, rendered(plan, inst, root, read_own_key(inst)),
                             connect(plan, inst, 10.0))
    if changes.server:
        raise _refusal("it changes server settings: " + ", ".join(changes.server), spec)
    if any(c.program == DEPLOY_AGENT_PROGRAM for c in changes.programs):
        raise _refusal(f"it changes {DEPLOY_AGENT_PROGRAM}, the deploy agent itself", spec)


def apply_request(spec: dict[str, Any], copy: Path, requester: str) -> dict[str, Any]:
    """Check and run a copied request as the owner; the result to write."""
    from siteboot import deploy
    from siteboot.plan import make_plan
    from siteboot.site import load_site

    request = read_request(copy, spec)
    root = copy / ROOT
    site_file = root / "sites" / f"{spec['site']}.toml"
    if not site_file.is_file():
        candidates = sorted((root / "sites").glob("*.toml"))
        if len(candidates) != 1:
            raise RequestRefused("its root/sites/ holds no single site file")
        site_file = candidates[0]
    plan = make_plan(load_site(site_file), spec["env"])
    instance = spec["instance"]
    timeout = request.get("timeout")
    timeout = min(max(float(timeout), 10.0), 600.0) if isinstance(timeout, (int, float)) else 60.0
    if request["action"] == "rollback":
        target = request.get("to") or deploy.read_pointers(plan).previous
        if target is None:
            raise RequestRefused(f"there is no previous release of {instance} to roll back to")
        release = deploy.find_release(plan, target)
        check_request_plan(deploy.release_plan(plan, release), release.path, spec)
        back = deploy.rollback(plan, target, timeout=timeout, instance=instance)
        return _rollback_result(back, requester)
    check_request_plan(plan, root, spec)
    commit = request.get("commit")
    return _deploy_result(deploy.deploy(
        plan, root, timeout=timeout, instance=instance, requester=requester,
        commit=commit if isinstance(commit, str) and commit.isalnum() else "request"))


def _restarted(applied: Any) -> list[str]:
    if applied is None:
        return []
    said = [part for o in applied.instances.outcomes
            for part in [*o.detail.split("; "), *o.notes]]
    return [line for line in said if line.startswith("restarted ")]


def _deploy_result(result: DeployResult) -> dict[str, Any]:
    state = "deployed" if not result.failures else (
        "rolled back" if result.rolled_back else "failed")
    return {"state": state, "exit_code": result.exit_code, "release": result.release,
            "detail": "; ".join(result.failures),
            "restarted": _restarted(result.applied),
            "rolled_back_to": result.rollback.release if result.rollback else None,
            "messages": [f"{o.instance}: {o.action}" + (f": {o.detail}" if o.detail else "")
                         for o in (result.applied.instances.outcomes if result.applied else [])]}


def _rollback_result(result: RollbackResult, requester: str) -> dict[str, Any]:
    ok = not result.applied.failures
    return {"state": "deployed" if ok else "failed", "exit_code": result.exit_code,
            "release": result.release, "detail": "; ".join(result.applied.failures),
            "restarted": _restarted(result.applied), "rolled_back_to": None,
            "messages": [f"rolled back to {result.release} for {requester}"]}


def failure_result(state: str, detail: str) -> dict[str, Any]:
    return {"state": state, "exit_code": EXIT_FAILED, "release": None, "detail": detail,
            "restarted": [], "rolled_back_to": None, "messages": []}
