"""Requirements from the checkout: local package folders, wheel files and wheel folders.

A ``[venvs.NAME]`` requirement may be a path (``"./jaws-site"``, ``"./jaws-site[server]"``,
``"./dist/jaws_site-2.1-py3-none-any.whl"``) or a wheel folder (``"--find-links ./dist"``),
relative to the site root. What pip would read there is part of the venv's hash, by content,
so new code means a new build; the name of a path alone would say nothing about its code.

- **What counts.** Every file below a package folder, except what is no input to a build: VCS
  folders, ``__pycache__`` and ``*.pyc``, tool caches (``.tox``, ``.nox``, ``.mypy_cache``,
  ``.pytest_cache``, ``.ruff_cache``), a ``.venv``, and build output (``*.egg-info``,
  ``.eggs``, and ``build/`` and ``dist/`` at the top). Of a wheel folder, its files (pip does
  not look into subfolders). Each file by its bytes and executable bit: sizes and mtimes would
  miss a change that keeps both (a checkout, a copy with ``cp -p``), and hashing a source tree
  or a folder of wheels takes well under a second.
- **What is installed.** The build copies these files into a private folder and pip installs
  from the copy, hashed while it is made (``snapshot``): the build is labelled with the hash of exactly what
  it contains even if the checkout changes meanwhile, the build writes nothing (``build/``,
  ``*.egg-info``) into the checkout, and an account that may not write there (a second
  account's venv) can still build.
- **Trust.** pip runs a package's build code as the account building the venv. A path must lie
  inside the site root (symlinks resolved), and the folders on the way to it and every file
  counted must pass the site root's own rule (``resources.untrusted_entry``: the invoker's,
  root's or siteboot's owner's, writable by nobody else).

``hashlib`` and ``resources`` are imported only when paths are hashed: the site file check on
``status``'s path uses ``requirement_problem`` alone.
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from siteboot.errors import BootstrapError

FIND_LINKS = ("--find-links", "-f")
EDITABLE = ("-e", "--editable")
_PATH_PREFIXES = ("./", "../", "/", "~")
_SKIPPED_DIRS = frozenset({".git", ".hg", ".svn", ".bzr", "__pycache__", ".tox", ".nox", ".eggs",
                           ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
_SKIPPED_AT_TOP = frozenset({"build", "dist"})
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Requirement:
    """One item of a venv's ``requirements``, as pip is given it."""

    text: str  # as written in the site file
    words: tuple[str, ...]  # pip's arguments for it, paths as written
    path: Path | None = None  # the local file or folder it names, resolved
    links: bool = False  # a ``--find-links`` folder (its files count, not its subfolders)
    extras: str = ""  # ``[server]`` after a package path

    def arguments(self, copy: Path | None = None) -> list[str]:
        """pip's arguments, with the local path replaced by ``copy`` (the build's snapshot)."""
        if self.path is None or copy is None:
            return list(self.words)
        if self.links:
            return ["--find-links", str(copy)]
        return [f"{copy}{self.extras}"]


def requirement_problem(item: str) -> str | None:
    """Why a pip option among ``requirements`` cannot be used, or None (the site file check)."""
    if not item.startswith("-"):
        return None
    try:
        words = shlex.split(item)
    except ValueError as exc:
        return f"{item!r} cannot be split into words: {exc}"
    if words[0] in EDITABLE or words[0].startswith("--editable="):
        return (f"{item!r}: an editable install runs the checkout itself, so a build could be "
                "neither kept nor told apart from the next; name the path without -e (it is "
                "copied and installed, and its content is part of the venv's hash)")
    if words[0] in FIND_LINKS and len(words) != 2:
        return f"{item!r}: --find-links takes one folder or URL"
    return None


def parse(item: str, base: Path) -> Requirement:
    """``item`` with the local path it names resolved against the site root ``base``."""
    if item.startswith("-"):
        words = shlex.split(item)
        target = (words[1] if words[0] in FIND_LINKS and len(words) == 2
                  else words[0].split("=", 1)[1] if words[0].startswith("--find-links=") else None)
        if target is not None and "://" not in target:
            return Requirement(item, tuple(words), _resolve(item, target, base), links=True)
        return Requirement(item, tuple(words))
    if item.startswith(_PATH_PREFIXES):
        path, extras = item, ""
        if item.endswith("]") and "[" in item:
            path, extras = item[:item.rindex("[")], item[item.rindex("["):]
        return Requirement(item, (item,), _resolve(item, path, base), extras=extras)
    return Requirement(item, (item,))


def parse_all(requirements: Sequence[str], base: Path) -> list[Requirement]:
    return [parse(item, base) for item in requirements]


def _resolve(item: str, text: str, base: Path) -> Path:
    root = Path(os.path.realpath(base))
    path = Path(os.path.realpath(root / os.path.expanduser(text)))
    if path != root and root not in path.parents:
        raise BootstrapError(f"requirement {item!r} names {path}, outside the site root {root}",
                             "keep local packages and wheels inside the site root (the folder "
                             "holding sites/), or install them from an index or --wheelhouse")
    if not path.exists():
        raise BootstrapError(f"requirement {item!r}: {path} does not exist",
                             f"paths in requirements are relative to the site root {root}")
    return path


# --------------------------------------------------------------------------------------------
# Content


def digests(requirements: Sequence[Requirement], base: Path) -> dict[str, str]:
    """requirement text -> sha256 of what pip reads at its path (local ones only)."""
    return {r.text: _digest(r, base, None) for r in requirements if r.path is not None}


@dataclass(frozen=True)
class Snapshot:
    """Copies of what pip reads at each local path, and the digests of exactly those bytes."""

    copies: dict[str, Path]  # requirement text -> its copy
    digests: dict[str, str]  # requirement text -> sha256, as ``digests`` computes it


def snapshot(requirements: Sequence[Requirement], base: Path, into: Path) -> Snapshot:
    """Copy what pip reads at each local path into the new folder ``into``, hashing as it goes."""
    into.mkdir(mode=0o700)
    copies, found = {}, {}
    for number, requirement in enumerate(r for r in requirements if r.path is not None):
        assert requirement.path is not None
        copy = into / str(number) / requirement.path.name  # a wheel's file name must stay
        copy.parent.mkdir(mode=0o700)
        found[requirement.text] = _digest(requirement, base, copy)
        copies[requirement.text] = copy
    return Snapshot(copies, found)


def _digest(requirement: Requirement, base: Path, copy: Path | None) -> str:
    import hashlib

    assert requirement.path is not None
    root = requirement.path
    _check_way(root, Path(os.path.realpath(base)), requirement.text)
    total = hashlib.sha256()
    if root.is_dir():
        if copy is not None:
            copy.mkdir(mode=0o700)
        files = _files(root, recursive=not requirement.links)
    else:
        files = iter([("", root)])
    folders = {root}  # checked by _check_way
    for relative, path in files:
        # each folder on the way too (a symlinked one is its target's owner's): a file of its
        # own could be swapped in by whoever may write one, between this check and the read
        for folder in reversed(path.parents):
            if root in folder.parents and folder not in folders:
                _check(folder, root, requirement.text)
                folders.add(folder)
        _check(path, root, requirement.text)
        target = None if copy is None else (copy / relative if relative else copy)
        executable, digest = _file_digest(path, target)
        total.update(f"{relative}\0{'x' if executable else '-'}\0{digest}\n".encode())
    return total.hexdigest()


def _files(root: Path, recursive: bool) -> Iterator[tuple[str, Path]]:
    """(path relative to ``root`` with ``/``, path) of each file that counts, in a stable order;
    symlinks are followed (pip follows them), each folder once."""
    seen: set[str] = set()

    def walk(folder: Path, prefix: str) -> Iterator[tuple[str, Path]]:
        real = os.path.realpath(folder)
        if real in seen:  # a symlink loop, or one folder linked twice
            return
        seen.add(real)
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            path, relative = Path(entry.path), prefix + entry.name
            if entry.is_dir():
                if recursive and not _skipped(entry.name, top=not prefix):
                    yield from walk(path, relative + "/")
            elif entry.is_file():
                if not entry.name.endswith((".pyc", ".pyo")):
                    yield relative, path
            elif entry.is_symlink():
                raise BootstrapError(f"{path} is a symlink to nothing ({os.readlink(path)})",
                                     "remove it or make it point at a file")

    return walk(root, "")


def _skipped(name: str, top: bool) -> bool:
    return name in _SKIPPED_DIRS or name.endswith(".egg-info") or (top and name in _SKIPPED_AT_TOP)


def _file_digest(path: Path, copy: Path | None) -> tuple[bool, str]:
    """(executable, sha256 of the bytes) of ``path``, copied to ``copy`` as they are read."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as source:
        executable = bool(os.fstat(source.fileno()).st_mode & stat.S_IXUSR)
        out: IO[bytes] | None = None
        if copy is not None:
            copy.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            out = open(copy, "xb")  # noqa: SIM115 - closed below, with the source
        try:
            while True:
                chunk = source.read(_CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
                if out is not None:
                    out.write(chunk)
        finally:
            if out is not None:
                out.close()
                os.chmod(copy, 0o700 if executable else 0o600)  # type: ignore[arg-type]
    return executable, digest.hexdigest()


def _check_way(path: Path, root: Path, item: str) -> None:
    """The site root and every folder from it down to ``path`` pass the site root's rule."""
    here = root
    _check(here, root, item)
    for part in path.relative_to(root).parts:
        here = here / part
        _check(here, root, item)


def _check(path: Path, root: Path, item: str) -> None:
    from siteboot.resources import untrusted_entry

    try:
        why = untrusted_entry(path, root)
    except OSError as exc:
        why = f"{path}: {exc.strerror or exc}"
    if why:
        raise BootstrapError(
            f"requirement {item!r}: {why}: pip would run its build code as this account, so it "
            "must come from the site root's owner, root or siteboot's owner, and nobody else may "
            "be able to change it", f"chmod go-w (or chown) it under {root}")
