"""The one way siteboot writes files that matter, and makes directories it owns."""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Callable

from siteboot.errors import OwnershipError, SitebootError


def atomic_write(path: Path, data: str | bytes, mode: int = 0o600,
                 gid: int | None = None) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and a rename.

    The temp file gets ``mode`` (and group ``gid``) before any byte is written, so a reader
    never sees the content with wider permissions, and never sees a half-written file.
    """
    import tempfile

    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    except OSError as exc:
        raise _naming(exc, path) from None
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


def verify_shared_parent(path: Path, trusted_uids: Iterable[int] = (), private: bool = False) -> None:
    """``path`` and every directory above it are safe to keep instance dirs in.

    Each must belong to root, the invoker or a site user (``trusted_uids``), and one that
    everybody may write must be sticky, so that nobody can swap a directory under us.
    """
    trusted = {0, os.geteuid(), *trusted_uids}
    for ancestor in reversed(path.parents):
        # Who owns an ancestor varies (project dirs, user namespaces where / is "nobody"); what
        # matters is that strangers cannot swap what lies below: no symlink of theirs, and no
        # directory everybody may write without the sticky bit.
        info = os.lstat(ancestor)
        if stat.S_ISLNK(info.st_mode):
            if info.st_uid not in trusted:
                raise _refuse(path, f"lies under {ancestor}, a symlink of {owner_name(info.st_uid)}")
            continue
        if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
            raise _refuse(path, f"lies under {ancestor}, which anyone may write (no sticky bit)")
    if private:
        verify_private_dir(path)
        return
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise _refuse(path, "is not a directory (a symlink?)")
    if info.st_uid not in trusted:
        raise _refuse(path, f"belongs to {owner_name(info.st_uid)}, who is not a user of this site")
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise _refuse(path, "is world-writable without the sticky bit")


def ensure_shared_parent(path: Path, trusted_uids: Iterable[int] = (), private: bool = False) -> None:
    """The parent of the site's instance dirs, made by whichever of its users comes first.

    Shared: sticky and world-writable like /tmp, so no user can move another's instance dir.
    ``private`` (the path names one user): 0700 and the invoker's.
    """
    if private:
        ensure_private_dir(path, 0o700)
    elif not os.path.lexists(path):
        _mkdir(path, 0o700)
        info = os.lstat(path)
        if info.st_uid == os.geteuid() and stat.S_ISDIR(info.st_mode):
            os.chmod(path, 0o1777)  # only if we created it; another user may have won the race
    verify_shared_parent(path, trusted_uids, private)
