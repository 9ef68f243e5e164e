"""The one way siteboot writes files that matter, and makes directories it owns."""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import stat
import time
from collections.abc import Collection, Iterator
from pathlib import Path

from siteboot.errors import OwnershipError, SitebootError

TYPE_CHECKING = False  # no typing at run time: every command pays for its import
if TYPE_CHECKING:
    from typing import Callable


def atomic_write(path: Path, data: str | bytes, mode: int = 0o600,
                 gid: int | None = None) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and a rename.

    The temp file gets ``mode`` (and group ``gid``) before any byte is written, so a reader
    never sees the content with wider permissions, and never sees a half-written file.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = _temp_beside(path)
    try:
        if gid is not None:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not exc.filename:  # a full disk says ENOSPC, not where
            raise _naming(exc, path) from None
        raise


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new 0600 file beside ``path``, as ``tempfile.mkstemp`` makes one (which ``status``,
    writing its plan cache, must not pay for importing)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    for _attempt in range(100):
        tmp = str(path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise _naming(exc, path) from None
    raise _naming(FileExistsError(17, "no free temporary name"), path)


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` with ``path`` as its file name (errors of write() and fsync() carry none)."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


# Where flock cannot work (some NFS mounts, odd file systems): best effort goes on unlocked.
_NO_LOCKING = (errno.ENOLCK, errno.EBADF, errno.EINVAL, errno.EOPNOTSUPP)


@contextlib.contextmanager
def flock(path: Path, *, timeout: float | None = None, on_wait: Callable[[], None] | None = None,
          best_effort: bool = False, what: str = "the lock", error: type[SitebootError] = SitebootError,
          poll: float = 0.05) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (a directory, or a file created 0600) while inside.

    Released on any exit, a crash included (the kernel drops it with the descriptor).
    ``on_wait`` is called once when another process holds it; ``timeout`` (None: wait for
    ever) ends the wait with ``error`` naming ``what`` and its path. ``best_effort``: a file system
    that cannot lock (or a lock file that cannot be opened) goes unlocked instead of failing.
    """
    import fcntl

    try:
        flags = os.O_RDONLY if os.path.isdir(path) else os.O_RDWR | os.O_CREAT
        fd = os.open(path, flags, 0o600)
    except OSError:
        if not best_effort:
            raise
        yield
        return
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                if deadline is not None and time.monotonic() > deadline:
                    raise error(f"another siteboot holds {what} ({path}) for over "
                                        f"{timeout:g} s",
                                        f"wait for it, or find it with `fuser {path}`") from None
                time.sleep(poll)
            except OSError as exc:
                if best_effort and exc.errno in _NO_LOCKING:
                    break
                raise
        yield
    finally:
        os.close(fd)


def owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _mkdir(path: Path, mode: int) -> None:
    """Create the last component of ``path`` (its parents as needed); fine if it exists."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        _mkdir(path, mode)
    except PermissionError as exc:
        raise SitebootError(f"cannot create {path}: {exc.strerror}",
                            "check the permissions of its parent directory") from None


def _refuse(path: Path, why: str) -> OwnershipError:
    return OwnershipError(f"{path} {why}: refusing to use it",
                          "siteboot keeps runtime files only where no other user can swap them; "
                          "remove what is in the way, or change runtime_dir in the site file")


def ensure_managed_dir(path: Path, mode: int, gid: int | None = None) -> list[str]:
    """Create ``path`` (missing parents as ordinary dirs) or correct its mode and group to
    exactly ``mode`` and ``gid``; what was done. It is changed through a descriptor opened with
    O_NOFOLLOW, so a symlink is refused, never followed; so is a dir of another owner, and one
    on a way another account could swap (``verify_unswappable``): its programs would write into
    whatever that account put there, and a symlink on the way would point the chmod elsewhere."""
    verify_unswappable(path.parent, os.geteuid())
    _refuse_open_parent(path)
    created = False
    try:
        os.mkdir(path, 0o700)
        created = True
    except FileExistsError:
        pass
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return ensure_managed_dir(path, mode, gid)
    except PermissionError as exc:
        raise SitebootError(f"cannot create {path}: {exc.strerror}",
                            "check the permissions of its parent directory") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _refuse(path, "is not a directory (a symlink?)") from None
        raise
    try:
        return _correct_dir(fd, path, mode, gid, created)
    finally:
        os.close(fd)


def _refuse_open_parent(path: Path) -> None:
    """``path``'s parent must not be one that anyone may write without the sticky bit (anyone
    could rename ``path`` away). Its group may: a group-writable parent is a grant to that group,
    trusted like the instance's own (a shared project dir of several accounts of one group)."""
    try:
        info = os.lstat(path.parent)
    except FileNotFoundError:
        return
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise _refuse(path, f"lies under {path.parent}, which anyone may write without the "
                      "sticky bit")


def _correct_dir(fd: int, path: Path, mode: int, gid: int | None, created: bool) -> list[str]:
    import grp

    def group_name(number: int) -> str:
        try:
            return grp.getgrgid(number).gr_name
        except KeyError:
            return str(number)

    info = os.fstat(fd)
    if info.st_uid != os.geteuid():
        raise OwnershipError(f"{path} belongs to {owner_name(info.st_uid)}, not "
                             f"{owner_name(os.geteuid())}: only its owner may set its mode and group",
                             "declare it for the instance of its owner, or have it chowned")
    done = []
    if gid is not None and info.st_gid != gid:
        try:
            os.fchown(fd, -1, gid)
        except PermissionError:
            raise OwnershipError(f"cannot give {path} group {group_name(gid)}: "
                                 f"{owner_name(os.geteuid())} is not a member of it",
                                 "add the account to the group (and log in again), or change the "
                                 "dir's group in the site file") from None
        done.append(f"group {group_name(info.st_gid)} -> {group_name(gid)}")
    current = stat.S_IMODE(os.fstat(fd).st_mode)  # a chown may have cleared setgid
    if current != mode:
        os.fchmod(fd, mode)
        got = stat.S_IMODE(os.fstat(fd).st_mode)
        if got != mode:  # the kernel drops setgid for a group the account is not in
            raise OwnershipError(f"{path} is mode {got:04o}, not {mode:04o}: the kernel keeps "
                                 f"the setgid bit only for a group {owner_name(os.geteuid())} is "
                                 f"in (it is {group_name(os.fstat(fd).st_gid)})",
                                 "give the dir a group the account belongs to")
        done.append(f"mode {current:04o} -> {mode:04o}")
    if created:
        final = os.fstat(fd)
        return [f"created {path} (mode {mode:04o}, group {group_name(final.st_gid)})"]
    return done


def verify_private_dir(path: Path) -> None:
    """``path`` is a real directory (not a symlink) of the current user; checked with lstat."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise _refuse(path, "is not a directory (a symlink?)")
    if info.st_uid != os.geteuid():
        raise _refuse(path, f"is owned by {owner_name(info.st_uid)}, not {owner_name(os.geteuid())}")


def ensure_private_dir(path: Path, mode: int = 0o700) -> Path:
    """Create ``path`` for the current user, or check that it is ours; set ``mode``.

    Checked with lstat: a symlink planted in a shared parent is refused, never followed.
    """
    _mkdir(path, mode)
    verify_private_dir(path)
    if stat.S_IMODE(os.lstat(path).st_mode) != mode:
        os.chmod(path, mode)
    return path


def unmapped_uid() -> int | None:
    """In a user namespace, the uid shown for ids it does not map (root outside it, usually);
    None in the initial namespace, where that uid is a real account ("nobody")."""
    try:
        with open("/proc/self/uid_map") as handle:
            if handle.read().split() == ["0", "0", "4294967295"]:
                return None
        with open("/proc/sys/kernel/overflowuid") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def verify_unswappable(path: Path, owner_uid: int, trusted: Collection[int] = ()) -> None:
    """No directory on the way to ``path`` (itself included) can be renamed or replaced by
    anyone but root, ``owner_uid`` and the ``trusted``.

    A directory can be swapped by whoever may write its parent: so every directory from / down
    must belong to root or the owner (or, in a user namespace, to the unmapped outside), and one
    that others may write must be sticky (then only the owner of an entry can move it). A
    symlink on the way must be root's or the owner's, and so must everything it leads through.
    """
    allowed = {0, owner_uid, unmapped_uid(), *trusted}
    for step in (*reversed(path.parents), path):
        try:
            info = os.lstat(step)
        except FileNotFoundError:
            return  # what does not exist yet will be made by the owner
        if stat.S_ISLNK(info.st_mode):
            if info.st_uid not in allowed:
                raise _refuse(path, f"lies under {step}, a symlink of {owner_name(info.st_uid)}")
            verify_unswappable(Path(os.path.realpath(step)), owner_uid, trusted)
            continue
        if info.st_uid not in allowed:
            where = "belongs to" if step == path else f"lies under {step}, which belongs to"
            raise _refuse(path, f"{where} {owner_name(info.st_uid)}: that account could rename or "
                          "replace it")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX \
                and step != path:
            who = "anyone" if info.st_mode & stat.S_IWOTH else "its group"
            raise _refuse(path, f"lies under {step}, which {who} may write without the sticky bit")


def verify_shared_parent(path: Path) -> None:
    """A parent that several accounts' instance dirs share must be root's and sticky (like
    /tmp): its owner could otherwise move another account's instance dir. Root may make it."""
    fix = (f"as root: `install -d -m 1777 {path}` (a tmpfiles.d entry keeps it across reboots), "
           "or put {user} into runtime_dir so that each account has its own parent")
    if not os.path.lexists(path):
        if os.geteuid() != 0:
            raise OwnershipError(f"{path} would hold the instance dirs of several accounts, so it "
                                 "must be made by root (sticky, like /tmp), and it does not exist",
                                 fix)
        _mkdir(path, 0o700)
        os.chmod(path, 0o1777)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise _refuse(path, "is not a directory (a symlink?)")
    if info.st_uid != 0 or not info.st_mode & stat.S_ISVTX:
        raise OwnershipError(
            f"{path} holds the instance dirs of several accounts, so it must be root's and sticky "
            f"like /tmp (it is {owner_name(info.st_uid)}'s, mode {stat.S_IMODE(info.st_mode):o}):"
            " its owner could move another account's instance dir", fix)


def write_if_changed(path: Path, data: str, mode: int = 0o600) -> None:
    """``atomic_write``, unless ``path`` already holds ``data`` with ``mode`` and is the
    invoker's (a warm ``up`` rewrites no record, and syncs nothing to disk, to say the same)."""
    try:
        info = os.lstat(path)
        if stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == mode \
                and info.st_uid == os.geteuid() and path.read_text() == data:
            return
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write(path, data, mode=mode)


def read_owned(path: Path, owner_uid: int | None = None, forbidden_mode: int = 0o022,
               limit: int | None = None) -> bytes | None:
    """The bytes of ``path`` when it is a regular file of ``owner_uid`` (the invoker by default)
    with none of the ``forbidden_mode`` bits and at most ``limit`` bytes, opened without
    following a symlink (and without hanging on a planted FIFO); else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if (not stat.S_ISREG(info.st_mode)
                or info.st_uid != (os.geteuid() if owner_uid is None else owner_uid)
                or info.st_mode & forbidden_mode
                or (limit is not None and info.st_size > limit)):
            return None
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
