"""The requests dir of an instance that grants deploy, and what its deploy agent serves.

The owner's ``up`` makes ``<shared_dir>/<instance>.requests/`` (``ensure_requests_dir``): the
owner's, the grant's group, mode 3770 (setgid: entries get the group; sticky: only their
makers and the owner remove them), no ACL, checked through ``lstat`` like the published key's
folder (``keys.verify_shared_dir``); one made by anybody else is refused and reported. Beside
the config it writes the agent's spec (``spec_text``): the instance's identity (``identity``),
which no request may change. ``deployrequest`` makes and answers the requests.
"""

from __future__ import annotations

import grp
import json
import os
import stat
from pathlib import Path
from typing import Any

from siteboot.errors import SitebootError
from siteboot.hints import command
from siteboot.plan import InstancePlan, Plan

REQUESTS_DIR_MODE = 0o3770  # setgid (entries get the grant's group) + sticky


def group_gid(inst: InstancePlan) -> int:
    assert inst.group
    return group_gid_of(inst.group, f"instance {inst.name} grants group")


def group_gid_of(group: str, what: str = "group") -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise SitebootError(f"{what} '{group}', which does not exist on this host") from None


def acl_problem(target: int | Path) -> str | None:
    """How an extended ACL on ``target`` (a path or an open fd) may widen its mode, or None."""
    from siteboot.keys import _acl

    return _acl(target)


def requests_dir_problem(inst: InstancePlan, owner_uid: int, gid: int) -> str | None:
    """Why ``inst``'s requests dir cannot be trusted (lstat: never through a symlink), or None."""
    try:
        info = os.lstat(inst.requests_dir)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory (a symlink?)"
    if info.st_uid != owner_uid:
        from siteboot.fsutil import owner_name

        return f"belongs to {owner_name(info.st_uid)}, not {inst.user}"
    if info.st_gid != gid or stat.S_IMODE(info.st_mode) != REQUESTS_DIR_MODE:
        return (f"must be group {inst.group} with mode {REQUESTS_DIR_MODE:o} (it is gid "
                f"{info.st_gid}, mode {stat.S_IMODE(info.st_mode):o})")
    return acl_problem(inst.requests_dir)


def ensure_requests_dir(inst: InstancePlan) -> list[str]:
    """Make ``inst``'s requests dir (its owner runs this in ``up``); what is wrong, as notes
    (a problem never keeps the instance down: members then cannot deploy, and are told so)."""
    from siteboot.keys import verify_shared_dir

    path = inst.requests_dir
    try:
        gid = group_gid(inst)
        verify_shared_dir(inst)  # nobody else may swap or widen shared_dir
        try:
            os.mkdir(path, 0o700)
            os.chown(path, -1, gid)
            os.chmod(path, REQUESTS_DIR_MODE)
        except FileExistsError:
            info = os.lstat(path)
            if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() \
                    and stat.S_IMODE(info.st_mode) != REQUESTS_DIR_MODE:
                os.chown(path, -1, gid)
                os.chmod(path, REQUESTS_DIR_MODE)
        problem = requests_dir_problem(inst, os.geteuid(), gid)
    except SitebootError as exc:
        problem = exc.message
    except OSError as exc:
        problem = f"cannot be made ({exc.strerror or exc})"
    if problem is None:
        return []
    return [f"members of {inst.group} cannot deploy to it: requests dir {path} {problem}; as "
            f"{inst.user}: remove it and run `{command('up', env=inst.env, instance=inst.name)}`"]


def identity(inst: InstancePlan) -> dict[str, Any]:
    """What only the owner changes about an instance: a request that changes it is refused."""
    return {"user": inst.user, "group": inst.group, "grant": inst.grant, "port": inst.port,
            "host": inst.host, "shared_key_path": str(inst.shared_key_path),
            "runtime_dir": str(inst.runtime_dir), "state_dir": str(inst.state_dir)}


def spec_for(plan: Plan, inst: InstancePlan) -> dict[str, Any]:
    """What the agent serves (written beside the config as ``agent-<instance>.json``)."""
    return {"site": plan.site.name, "env": plan.env, "instance": inst.name,
            "requests_dir": str(inst.requests_dir), "work_dir": str(inst.agent_work_dir),
            "group": inst.group, "identity": identity(inst)}


def spec_text(plan: Plan, inst: InstancePlan) -> str:
    return json.dumps(spec_for(plan, inst), indent=1, sort_keys=True) + "\n"
