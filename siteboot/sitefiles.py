"""``[dirs]`` and ``[files]`` on disk: made or corrected, rendered and written by the instance's
owner before its programs start, and which programs a changed file restarts.

A file's content is compared with what the instance's programs last (re)started with (a record
in its runtime dir, beside the config supervisord started with), so a file that ``render``
wrote in between still restarts its users at the next ``up``.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from siteboot.errors import UsageError
from siteboot.fsutil import (
    atomic_write,
    ensure_managed_dir,
    ensure_private_dir,
    verify_unswappable,
    write_if_changed,
)
from siteboot.hints import command
from siteboot.plan import InstancePlan, Plan
from siteboot.render import RenderedFile, render_files
from siteboot.secretstore import SecretStore


@dataclass
class SiteFiles:
    """What ``prepare`` did for one instance."""

    notes: list[str] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)  # file name -> sha256 of its content
    rewritten: list[str] = field(default_factory=list)  # files whose content changed just now


def secret_store(inst: InstancePlan) -> SecretStore:
    return SecretStore(inst.secrets_path)


def prepare(plan: Plan, inst: InstancePlan, root: Path | None,
            secrets: SecretStore | None = None) -> SiteFiles:
    """The instance's dirs made or corrected, then its files written where they changed.

    Every file is rendered first: a missing secret or a broken template leaves nothing touched.
    """
    rendered = render_files(plan, inst, root, secrets or secret_store(inst))
    done = SiteFiles(notes=ensure_dirs(inst))
    for item in rendered:
        done.hashes[item.name] = item.sha256
        if write_file(item):
            done.rewritten.append(item.name)
            done.notes.append(f"file {item.name}: wrote {item.path}")
    return done


def ensure_dirs(inst: InstancePlan) -> list[str]:
    notes = []
    for spec in inst.dirs:
        if not spec.path.is_absolute():
            raise UsageError(f"dir {spec.name}: path {str(spec.path)!r} is not absolute",
                             f"check the dir's path (and the vars it uses): `{command('check')}`")
        done = ensure_managed_dir(spec.path, spec.mode, _gid(spec.group) if spec.group else None)
        notes += [f"dir {spec.name}: {what}" for what in done]
    return notes


def _gid(group: str) -> int:
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise UsageError(f"group {group} does not exist on this host",
                         "check the dir's group in the site file") from None


def write_file(item: RenderedFile) -> bool:
    """Write ``item`` atomically unless it is there already, as ours and with its mode; True
    when the content changed. Its folder must be one nobody but its owner (and its group, for
    a group-writable one) can swap; a missing one is made private (0700)."""
    if not item.path.is_absolute():
        raise UsageError(f"file {item.name}: path {str(item.path)!r} is not absolute",
                         f"check the file's path (and the vars it uses): `{command('check')}`")
    folder = item.path.parent
    verify_unswappable(folder, os.geteuid())
    if not os.path.lexists(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        ensure_private_dir(folder)
    payload = item.text.encode("utf-8")
    current, mode = _read_own(item.path)
    if current == payload and mode == item.mode:
        return False
    atomic_write(item.path, payload, mode=item.mode)  # a new inode: a symlink there is replaced
    return current != payload


def _read_own(path: Path) -> tuple[bytes | None, int | None]:
    """(content, mode) of ``path`` if it is a regular file of ours, else (None, None)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None, None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            return None, None
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read(), stat.S_IMODE(info.st_mode)
    finally:
        os.close(fd)


def restarts(inst: InstancePlan, files: SiteFiles) -> dict[str, list[str]]:
    """program -> the files it reads that changed since its instance's programs last started
    (without that record, after a /tmp wipe: the files just rewritten)."""
    started = _read_started(inst)
    changed = [name for name, digest in files.hashes.items()
               if (started.get(name) != digest if started is not None
                   else name in files.rewritten)]
    return {program.name: [f for f in program.files if f in changed] for program in inst.programs
            if any(f in changed for f in program.files)}


def record_started(inst: InstancePlan, files: SiteFiles) -> None:
    """What the instance's programs (re)start with now; a full disk must not fail a start."""
    try:
        write_if_changed(inst.files_started_path,
                         json.dumps(files.hashes, sort_keys=True) + "\n", mode=0o600)
    except OSError:
        pass


def _read_started(inst: InstancePlan) -> dict[str, str] | None:
    try:
        data = json.loads(inst.files_started_path.read_text())
    except (OSError, ValueError):
        return None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None


def held_by_runtime_dir(inst: InstancePlan) -> list[str]:
    """Managed dirs inside the instance's runtime dir: ``down --purge`` must leave it alone."""
    return [spec.name for spec in inst.dirs
            if spec.path == inst.runtime_dir or inst.runtime_dir in spec.path.parents]

