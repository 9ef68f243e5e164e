"""Secrets for ``{secret:NAME}``: read when a file or config is written, never kept or shown.

Each is looked up in the environment first (``SITEBOOT_SECRET_NAME``: what a CI job has from
its masked variables), then in ``secrets.toml`` in the instance owner's state dir, which must
be a regular file of the invoking user that nobody else may read or write (0600 or 0400).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from siteboot.errors import SecretError

ENV_PREFIX = "SITEBOOT_SECRET_"


class SecretStore:
    """The secrets of one instance's owner; the file is read once, on first need."""

    def __init__(self, path: Path, environ: Mapping[str, str] | None = None) -> None:
        self.path = path
        self._environ = os.environ if environ is None else environ
        self._file: dict[str, str] | None = None
        self._revealed: dict[str, str] = {}  # what was handed out, to scrub it from messages

    def get(self, name: str) -> str:
        value = self._environ.get(ENV_PREFIX + name) or self._from_file().get(name)
        if not value:
            raise SecretError(
                f"secret {name} is not set" + (" (it is empty in the environment)"
                                               if ENV_PREFIX + name in self._environ else ""),
                f"export {ENV_PREFIX}{name}=... for siteboot (a masked CI variable), or add "
                f"{name} = \"...\" to {self.path} (mode 0600)")
        self._revealed[name] = value
        return value

    def scrub(self, text: str) -> str:
        """``text`` with every secret handed out so far shown as ``{secret:NAME}``."""
        for name, value in sorted(self._revealed.items(), key=lambda item: -len(item[1])):
            text = text.replace(value, f"{{secret:{name}}}")
        return text

    def _from_file(self) -> dict[str, str]:
        if self._file is None:
            self._file = read_secrets_file(self.path)
        return self._file


def read_secrets_file(path: Path) -> dict[str, str]:
    """The ``NAME = "value"`` pairs of ``path`` ({} when it does not exist). Refused, naming the
    fix: a symlink, anything but a regular file, another owner, any access for group or others."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SecretError(f"cannot read {path}: {exc.strerror}",
                          "it must be a regular file of yours, mode 0600") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretError(f"{path} is not a regular file: refusing to read secrets from it",
                              "it must be a regular file of yours, mode 0600")
        if info.st_uid != os.geteuid():
            from siteboot.fsutil import owner_name

            raise SecretError(f"{path} belongs to {owner_name(info.st_uid)}, not "
                              f"{owner_name(os.geteuid())}: refusing to read secrets from it",
                              "the secrets file must be the instance owner's own")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise SecretError(f"{path} is mode {mode:04o}: others may read or change it, so "
                              "siteboot refuses to use it", f"chmod 600 {path}")
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read()
    finally:
        os.close(fd)
    return _parse(path, data)


def _parse(path: Path, data: bytes) -> dict[str, str]:
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.9/3.10 only
        import tomli as tomllib
    try:
        parsed: dict[str, str] = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        # the parser's message says where, not what: no value is shown
        raise SecretError(f"{path} is not valid TOML: {exc}",
                          'one NAME = "value" per line') from None
    bad = sorted(name for name, value in parsed.items() if not isinstance(value, str))
    if bad:
        raise SecretError(f"{path}: {', '.join(bad)} must be strings",
                          'one NAME = "value" per line, the value quoted')
    return parsed
