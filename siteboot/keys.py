"""Instance keys: one per instance and env, created on first need, never on a command line.

The owner keeps the key in its state dir (0700) as a 0600 file. With a group grant the owner
also publishes it in the site's shared dir as a 0640 file of that group; members read it there.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from siteboot.accounts import uid_of
from siteboot.errors import KeyAccessError, SitebootError
from siteboot.hints import command

TYPE_CHECKING = False  # no typing at run time: every command pays for its import
if TYPE_CHECKING:
    from siteboot.plan import InstancePlan, Plan

# hashlib, secrets, grp and siteboot.fsutil are imported where used: `status` only reads keys.

# A hash no key can have: marks configs rendered without the real key (previews).
PLACEHOLDER_HASH = "{SHA}" + "0" * 40


def password_hash(key: str) -> str:
    """supervisord's ``{SHA}`` password form: the key itself never lands in a config."""
    import hashlib

    return "{SHA}" + hashlib.sha1(key.encode("utf-8")).hexdigest()


_MAX_KEY_BYTES = 4096  # a key is 43 characters; a bigger file is not a key file


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "not a regular file"


def _read(path: Path, owner_uid: int | None = None, gid: int | None = None) -> str:
    """The key in ``path``, not through a symlink; with ``owner_uid``, only from a file of that
    owner (and group ``gid``) that others cannot read: a shared dir is not ours to trust.

    A missing or unreadable file raises ``FileNotFoundError``/``PermissionError`` (callers say
    what that means for them); anything else that is not a readable key is a ``KeyAccessError``.
    """
    try:
        # O_NONBLOCK: a FIFO planted at the key's name must not hang us
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except (FileNotFoundError, PermissionError):
        raise
    except OSError as exc:  # a symlink (ELOOP), a socket (ENXIO), a dead NFS handle, ...
        raise KeyAccessError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        acl = _acl(fd) if owner_uid is not None else None
        if acl:
            raise KeyAccessError(f"refusing key file {path}: it {acl}",
                                 f"its owner removes the ACL (`setfacl -b {path}`), then runs "
                                 f"`{command('rotate-key')}`: anyone it named may have the key")
        if owner_uid is not None and (info.st_uid != owner_uid or stat.S_IMODE(info.st_mode) & 0o007
                                      or (gid is not None and info.st_gid != gid)
                                      or not stat.S_ISREG(info.st_mode)):
            raise KeyAccessError(f"refusing key file {path}: it must be a regular file of uid "
                                 f"{owner_uid}, group {gid}, unreadable by others (it is uid "
                                 f"{info.st_uid}, gid {info.st_gid}, mode {stat.S_IMODE(info.st_mode):o})",
                                 f"the instance's owner publishes it with `{command('up')}`")
        if not stat.S_ISREG(info.st_mode):  # a directory, FIFO or device holds no key
            raise KeyAccessError(f"key file {path} is {_file_kind(info.st_mode)}, not a regular "
                                 "file", "it must be a file holding the instance's key")
        try:
            key = os.read(fd, _MAX_KEY_BYTES).decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyAccessError(f"cannot read key file {path}: {exc}") from None
    finally:
        os.close(fd)
    if not key:
        raise KeyAccessError(f"key file {path} is empty", f"remove it and run `{command('up')}`")
    return key


_ACL_ATTRIBUTES = ("system.posix_acl_access", "system.posix_acl_default")


def _acl(target: int | Path) -> str | None:
    """How an extended ACL (setfacl) on ``target`` (a path or an open fd) widens its mode."""
    try:
        names = os.listxattr(target) if isinstance(target, int) else \
            os.listxattr(target, follow_symlinks=False)
    except OSError:  # no xattrs on this file system: no ACLs either
        return None
    found = [n for n in names if n in _ACL_ATTRIBUTES]
    if not found:
        return None
    return ("has an extended ACL (setfacl), which may grant more than its mode shows ("
            + ", ".join(found) + ")")


def verify_shared_dir(inst: InstancePlan) -> Path:
    """``shared_dir`` may hold a granted key only if nobody but root and the instance's user can
    change it or widen who reads it: theirs, unswappable all the way down, no extended ACL.
    (An account that made it first with a default ACL for itself would read every key.)"""
    assert inst.shared_key_path
    return verify_shared_folder(inst.shared_key_path.parent, inst.user, inst.env, inst.name)


def verify_shared_folder(folder: Path, user: str, env: str, instance: str) -> Path:
    """``verify_shared_dir`` of the shared dir ``folder`` of ``user``'s ``instance`` in ``env``."""
    from siteboot.errors import OwnershipError
    from siteboot.fsutil import owner_name, verify_unswappable

    owner = uid_of(user)
    verify_unswappable(folder, owner)
    info = os.lstat(folder)
    problem = None
    if not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory (a symlink?)"
    elif info.st_uid not in (0, owner):
        problem = f"belongs to {owner_name(info.st_uid)}, not {user} or root"
    elif info.st_mode & (stat.S_IWOTH | stat.S_IWGRP):
        problem = "is writable by " + ("everyone" if info.st_mode & stat.S_IWOTH else "its group")
    else:
        problem = _acl(folder)
    if problem:
        raise OwnershipError(f"shared_dir {folder} {problem}: no key is published or read there",
                             f"as {user}: remove it (or its ACL: `setfacl -bk {folder}`) and "
                             f"run `{command('up', env=env, instance=instance)}`, which "
                             "makes it 0755; then "
                             f"`{command('rotate-key', env=env, instance=instance)}` if a "
                             "key was ever published there")
    return folder


def _group_gid(inst: InstancePlan) -> int:
    assert inst.group
    return group_gid(inst.group, inst.name)


def group_gid(group: str, instance: str) -> int:
    """The gid of the group ``instance`` grants."""
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise KeyAccessError(f"instance {instance} grants group '{group}', "
                             "which does not exist on this host") from None


def ensure_key(inst: InstancePlan) -> str:
    """The owner's key for ``inst``, created (0600, atomically) on first need."""
    from siteboot.fsutil import ensure_private_dir

    ensure_private_dir(inst.state_dir)
    ensure_private_dir(inst.key_path.parent)
    if os.path.lexists(inst.key_path):
        if stat.S_ISREG(os.lstat(inst.key_path).st_mode) and inst.key_path.stat().st_mode & 0o077:
            os.chmod(inst.key_path, 0o600)
        return _read(inst.key_path)
    return new_key(inst)


def new_key(inst: InstancePlan) -> str:
    """A fresh key for ``inst`` in place of the old one (0600, atomically): a supervisord started
    from now on accepts only this one, so a key that may have leaked stops working."""
    import secrets

    from siteboot.fsutil import atomic_write, ensure_private_dir

    ensure_private_dir(inst.state_dir)
    ensure_private_dir(inst.key_path.parent)
    key = secrets.token_urlsafe(32)
    atomic_write(inst.key_path, key + "\n", mode=0o600)
    return key


def publish_key(inst: InstancePlan, key: str) -> None:
    """Write the key where members of the instance's group can read it (0640, that group)."""
    from siteboot.fsutil import atomic_write

    assert inst.group
    assert inst.shared_key_path
    gid = _group_gid(inst)
    if gid not in os.getgroups() and gid != os.getegid() and os.geteuid() != 0:
        raise KeyAccessError(f"cannot publish the key of {inst.name} to group {inst.group}: "
                             f"{inst.user} is not a member of it")
    path = inst.shared_key_path
    try:
        # Straight into shared_dir: the rename below replaces whatever another user may have
        # put at this name (a symlink included) without following it.
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        verify_shared_dir(inst)
        try:
            if _read(path, os.geteuid(), gid) == key:
                return
        except (OSError, KeyAccessError):
            pass  # missing or not as it must be: written anew below
        atomic_write(path, key + "\n", mode=0o640, gid=gid)
    except OSError as exc:
        raise SitebootError(f"cannot publish the key of {inst.name} in {path.parent}: "
                            f"{exc.strerror or exc}", "check shared_dir in the site file") from None


def read_key_file(path: Path) -> str:
    """The key in the invoker's own key file ``path`` (``read_own_key`` says what is wrong)."""
    return _read(path)


def read_own_key(inst: InstancePlan) -> str:
    """The owner's key of ``inst`` from its state dir (never created here)."""
    if not inst.key_path.exists():  # `up` makes it: this instance never started here
        raise KeyAccessError(f"instance {inst.name} is not running: it was never started in env "
                             f"{inst.env} (no key yet at {inst.key_path})",
                             f"start it: `{command('up', env=inst.env)}`")
    try:
        return _read(inst.key_path)
    except FileNotFoundError:  # removed since the check above
        raise KeyAccessError(f"no key for instance {inst.name} ({inst.key_path} is gone)",
                             f"run `{command('up', env=inst.env)}` to create it") from None
    except PermissionError:
        raise KeyAccessError(f"cannot read key file {inst.key_path}: permission denied",
                             f"it must be readable by {inst.user} (mode 0600, in a 0700 "
                             "state dir)") from None


def read_shared_key(path: Path, user: str, group: str, env: str, instance: str) -> str:
    """The key of ``user``'s ``instance`` granted to ``group``, published at ``path``: only from a
    shared dir and a file nobody else could have swapped or widened (``read_key`` says what a
    failure means)."""
    verify_shared_folder(path.parent, user, env, instance)
    return _read(path, uid_of(user), group_gid(group, instance))


def read_key(plan: Plan, inst: InstancePlan) -> str:
    """The key the invoking user may use for ``inst``: its own, or one granted to its group."""
    if plan.owns(inst):
        return read_own_key(inst)
    if not inst.group or not inst.shared_key_path:
        raise KeyAccessError(f"instance {inst.name} belongs to {inst.user} and grants no group: "
                             "not yours and no grant",
                             f"run as {inst.user}, or add group = \"...\" to [instances.{inst.name}]")
    from siteboot.errors import OwnershipError

    try:
        return read_shared_key(inst.shared_key_path, inst.user, inst.group, inst.env, inst.name)
    except OwnershipError as exc:  # a shared_dir nobody should trust holds no usable key
        raise KeyAccessError(exc.message, exc.hint) from None
    except FileNotFoundError:
        raise KeyAccessError(f"{inst.user} has not published the key of {inst.name} "
                             f"({inst.shared_key_path} missing)",
                             f"run `{command('up', env=inst.env, instance=inst.name)}` as "
                             f"{inst.user}") from None
    except PermissionError:
        raise KeyAccessError(f"cannot read {inst.shared_key_path}: {plan.invoker} is not in "
                             f"group {inst.group}, so no grant",
                             f"ask for membership of {inst.group}, or run as {inst.user}") from None
