"""Whether a config on disk is what rendering it now would give, told without rendering.

A warm ``init`` or ``up`` renders every config again to see whether anything changed; with
nothing changed that is Jinja2's import and a render per instance for a text already on disk.
So each rendered config gets a stamp beside it (in its private runtime dir): a digest of all
the template sees (the site model, the instance with its secrets filled in, the key's hash,
operator stops, venv builds and file digests, the event listener), of the templates (every
file of the template dirs, by size and mtime) and of siteboot's own code (the same, for the
filters and options that shape the output), with the digest of the text it produced. A stamp
that matches both the inputs and the config file stands for a render; anything else, a
missing, corrupt or foreign stamp included, means rendering as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent


def canonical(value: Any) -> Any:
    """``value`` as nested tuples of plain values whose ``repr`` is the same in every process
    for equal values (sets sorted; dict order kept: a template sees it). An object of another
    kind counts by its ``repr``: one that names an address makes the stamp miss, never hit."""
    if isinstance(value, (str, int, float, bool, bytes)) or value is None:
        return value
    if isinstance(value, PurePath):
        return ("path", str(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__qualname__,
                tuple((f.name, canonical(getattr(value, f.name)))
                      for f in dataclasses.fields(value)))
    if isinstance(value, dict):
        return ("dict", tuple((canonical(k), canonical(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(canonical(v) for v in value))
    if isinstance(value, (set, frozenset)):
        return ("set", tuple(sorted(repr(canonical(v)) for v in value)))
    return ("object", type(value).__module__, type(value).__qualname__, repr(value))


def _files_of(folder: Path, recursive: bool) -> list[tuple[str, int, int]]:
    found = []
    for path, dirs, files in os.walk(folder):
        dirs.sort()
        if not recursive:
            dirs.clear()
        for name in sorted(files):
            try:
                info = os.stat(os.path.join(path, name))
            except OSError:
                continue
            found.append((os.path.relpath(os.path.join(path, name), folder), info.st_size,
                          info.st_mtime_ns))
    return found


def inputs_digest(parts: Sequence[Any], template_dirs: Sequence[Path],
                  code_dir: Path = PACKAGE_DIR) -> str:
    """The digest of ``parts`` (what the template sees), the files of ``template_dirs`` and
    siteboot's own modules."""
    payload = repr((canonical(tuple(parts)),
                    [(str(d), _files_of(d, recursive=True)) for d in template_dirs],
                    _files_of(code_dir, recursive=False)))
    return hashlib.sha256(payload.encode("utf-8", "surrogateescape")).hexdigest()


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def unchanged(stamp: Path, config: Path, digest: str) -> str | None:
    """The text of ``config`` when ``stamp`` says it was rendered from inputs of ``digest``
    and it is still that text; else None (render)."""
    try:
        recorded = json.loads(stamp.read_text(encoding="utf-8"))
        text = config.read_text()
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict) or recorded.get("inputs") != digest \
            or recorded.get("output") != _text_digest(text):
        return None
    return text


def record(stamp: Path, digest: str, text: str) -> None:
    """Remember that ``text`` was rendered from inputs of ``digest``; a full disk costs the
    next run a render, nothing else."""
    from siteboot.fsutil import atomic_write

    try:
        atomic_write(stamp, json.dumps({"inputs": digest, "output": _text_digest(text)}) + "\n",
                     mode=0o600)
    except OSError:
        pass
