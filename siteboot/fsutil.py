"""The one way siteboot writes files that matter, and makes directories it owns."""

from __future__ import annotations

import os
import pwd
import stat
import tempfile
from pathlib import Path

from siteboot.errors import OwnershipError, SitebootError


def atomic_write(path: Path, data: str | bytes, mode: int = 0o600,
                 gid: int | None = None) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and a rename.

    The temp file gets ``mode`` (and group ``gid``) before any byte is written, so a reader
    never sees the content with wider permissions, and never sees a half-written file.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        if gid is not None:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def ensure_private_dir(path: Path, mode: int = 0o700) -> Path:
    """Create ``path`` (and parents) for the current user, or check that it is ours; set ``mode``."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
    except PermissionError as exc:
        raise SitebootError(f"cannot create {path}: {exc.strerror}",
                            "check the permissions of its parent directory") from None
    info = path.stat()
    if info.st_uid != os.geteuid():
        raise OwnershipError(
            f"{path} is owned by {owner_name(info.st_uid)}, not {owner_name(os.geteuid())}: "
            "refusing to use a directory someone else created",
            "if it is stale, its owner (or root) must remove it; or change the site's paths")
    if stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)
    return path


def ensure_shared_parent(path: Path) -> None:
    """A parent that any of the site's users may create first: sticky and world-writable like /tmp."""
    if path.is_dir():
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir()
        os.chmod(path, 0o1777)
    except FileExistsError:
        pass  # another user won the race; sticky bit already protects each instance dir
    except PermissionError as exc:
        raise SitebootError(f"cannot create {path}: {exc.strerror}") from None
