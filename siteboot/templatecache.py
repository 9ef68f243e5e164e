"""Compiled templates kept between runs: a Jinja2 bytecode cache in the invoker's private dir.

Compiling the supervisord template costs a warm ``init`` more than rendering it. Jinja2 can keep
the compiled code, but what it loads is unpickled and executed: only a file this account wrote
may be read. So the cache lives in ``~/.cache/siteboot/templates`` (0700, checked to be ours
with lstat), and each file is opened without following a symlink and used only when it is a
regular file of ours that nobody else may write. A file that fails any check, is corrupt or was
compiled for another template source, Jinja2, siteboot or environment setting is ignored and
written afresh. Nothing here is needed: when the dir cannot be used, templates are compiled as
before. ``render`` takes the cache as a parameter and stays free of files.
"""

from __future__ import annotations

import hashlib
import os
import types
from pathlib import Path
from typing import Any

import jinja2
from jinja2.bccache import Bucket

from siteboot import __version__
from siteboot.accounts import current_user, expand_home
from siteboot.fsutil import read_owned

TEMPLATE_CACHE_DIR = "~/.cache/siteboot/templates"
_SUFFIX = ".jinja2c"
KEEP = 64  # compiled templates kept (the newest): a release's copy of a template is one more


def cache_dir() -> Path:
    return expand_home(TEMPLATE_CACHE_DIR, current_user())


class PrivateBytecodeCache(jinja2.BytecodeCache):
    """Jinja2's bytecode cache in ``directory`` (a private dir of the invoker's, made by
    ``template_cache``), trusting only files the invoker alone may have written."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def get_bucket(self, environment: jinja2.Environment, name: str, filename: str | None,
                   source: str) -> Bucket:
        # keyed by what else shapes the compiled code too (the environment's options, Jinja2
        # itself, the siteboot that set them): a change is a key of its own, never a stale hit
        key = repr((name, filename, __version__, jinja2.__version__,
                    _environment_signature(environment)))
        bucket = Bucket(environment, hashlib.sha256(key.encode()).hexdigest(),
                        self.get_source_checksum(source))
        self.load_bytecode(bucket)
        return bucket

    def path(self, bucket: Bucket) -> Path:
        return self.directory / f"{bucket.key}{_SUFFIX}"

    def load_bytecode(self, bucket: Bucket) -> None:
        data = read_owned(self.path(bucket))
        if data is None:
            return
        try:
            bucket.bytecode_from_string(data)
        except Exception:  # corrupt (bad pickle, truncated): compiled again and rewritten
            bucket.reset()
            return
        if not isinstance(bucket.code, types.CodeType):
            bucket.reset()

    def dump_bytecode(self, bucket: Bucket) -> None:
        from siteboot.fsutil import atomic_write

        try:
            atomic_write(self.path(bucket), bucket.bytecode_to_string(), mode=0o600)
        except (OSError, TypeError, ValueError):
            return  # a full disk costs the next run a compile, nothing else
        self.prune()

    def prune(self, keep: int = KEEP) -> None:
        """Only the ``keep`` newest compiled templates stay: each template path (every release
        a deploy records has its copies) is a file of its own."""
        try:
            kept = [(entry.stat().st_mtime_ns, entry.path) for entry in os.scandir(self.directory)
                    if entry.name.endswith(_SUFFIX) and entry.is_file(follow_symlinks=False)]
        except OSError:
            return
        for _mtime, path in sorted(kept, reverse=True)[keep:]:
            try:
                os.unlink(path)
            except OSError:
                pass


def _environment_signature(environment: jinja2.Environment) -> str:
    options = (type(environment).__module__, type(environment).__qualname__,
               environment.block_start_string, environment.block_end_string,
               environment.variable_start_string, environment.variable_end_string,
               environment.comment_start_string, environment.comment_end_string,
               environment.line_statement_prefix, environment.line_comment_prefix,
               environment.trim_blocks, environment.lstrip_blocks,
               environment.newline_sequence, environment.keep_trailing_newline,
               bool(environment.autoescape), environment.optimized,
               sorted(str(e) for e in environment.extensions))
    return repr(options)


def template_cache(directory: Path | None = None) -> Any | None:
    """The invoker's bytecode cache, or None when its dir cannot be made ours (then templates
    are compiled each run, as without it)."""
    from siteboot.errors import SitebootError
    from siteboot.fsutil import ensure_private_dir

    where = directory or cache_dir()
    try:
        ensure_private_dir(where.parent)
        ensure_private_dir(where)
    except (OSError, SitebootError):
        return None
    return PrivateBytecodeCache(where)
