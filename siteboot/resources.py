"""Where things are: the site root (``sites/`` and ``templates/``) and the shipped defaults.

The site root comes from ``--root``, ``SITEBOOT_ROOT``, or the nearest directory above the
current one that holds ``sites/``. The package's own ``templates/`` and ``sites/`` are the
fallback: in a checkout they are the top-level folders beside ``siteboot/``; in an installed
wheel they are ``siteboot/templates`` and ``siteboot/sites`` (``setup.cfg`` maps them there).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from siteboot.errors import UsageError

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_SITE = "local"
DEFAULT_ENV = "dev"


def _shipped(folder: str) -> Path:
    installed = PACKAGE_DIR / folder
    if installed.is_dir():
        return installed
    return PACKAGE_DIR.parent / folder


def shipped_templates() -> Path:
    return _shipped("templates")


def shipped_sites() -> Path:
    return _shipped("sites")


def find_root(explicit: str | None = None, cwd: Path | None = None,
              notice: Callable[[str], None] | None = None) -> Path | None:
    """The site root, or None when only the shipped defaults are available.

    A ``sites/`` found by walking up that is not to be trusted is passed over, and ``notice``
    is told so (the CLI prints it), so a folder planted in /tmp neither runs nor blocks.
    """
    chosen = explicit or os.environ.get("SITEBOOT_ROOT")
    if chosen:
        root = Path(chosen).expanduser().resolve()
        if not root.is_dir():
            raise UsageError(f"site root {root} is not a directory",
                             "pass --root DIR or set SITEBOOT_ROOT to a folder holding sites/")
        return root
    here = (cwd or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        try:
            if not (candidate / "sites").is_dir():
                continue
            why = _distrust(candidate / "sites")
        except OSError:
            continue
        if why:
            if notice is not None:
                notice(f"note: ignoring {candidate / 'sites'}: it {why}; to use it anyway, "
                       f"pass --root {candidate}")
            continue
        return candidate
    return None


def _distrust(folder: Path) -> str | None:
    """Why a ``sites/`` found by walking up is not to be used implicitly (None: it is fine).

    It must be the invoker's, root's, or belong to whoever owns the siteboot being run (its
    code runs anyway: the JAWS model, one account's checkout used by both), and not be
    writable by everyone: in /tmp anybody could plant one."""
    import stat

    from siteboot.fsutil import owner_name

    info = folder.stat()
    if info.st_uid not in (0, os.geteuid(), PACKAGE_DIR.stat().st_uid):
        return f"belongs to {owner_name(info.st_uid)}"
    if info.st_mode & stat.S_IWOTH:
        return "is writable by everyone"
    return None


def template_dirs(root: Path | None) -> list[Path]:
    """Template search path: the site root's templates override the shipped ones."""
    dirs = []
    if root is not None and (root / "templates").is_dir():
        dirs.append(root / "templates")
    shipped = shipped_templates()
    if shipped not in dirs:
        dirs.append(shipped)
    return dirs


def site_dirs(root: Path | None) -> list[Path]:
    dirs = []
    if root is not None and (root / "sites").is_dir():
        dirs.append(root / "sites")
    shipped = shipped_sites()
    if shipped.is_dir() and shipped.resolve() not in [d.resolve() for d in dirs]:
        dirs.append(shipped)
    return dirs


def resolve_site_path(site: str, root: Path | None) -> Path:
    """A site name (``sites/<name>.toml``) or a path to a ``.toml`` file."""
    if site.endswith(".toml") or os.sep in site:
        path = Path(site).expanduser()
        if not path.is_file():
            raise UsageError(f"site file {path} does not exist")
        return path.resolve()
    for folder in site_dirs(root):
        path = folder / f"{site}.toml"
        if path.is_file():
            return path
    known = sorted({p.stem for folder in site_dirs(root) for p in folder.glob("*.toml")})
    raise UsageError(f"no site named '{site}' (looked in {', '.join(map(str, site_dirs(root)))})",
                     f"known sites: {', '.join(known) or 'none'}; or pass a path to a .toml file")


def all_site_paths(root: Path | None) -> list[Path]:
    """Every site file under the root's ``sites/`` (the shipped ones when there is no root)."""
    dirs = site_dirs(root)
    folder = dirs[0] if dirs else shipped_sites()
    return sorted(folder.glob("*.toml"))
