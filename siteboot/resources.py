"""Where things are: the site root (``sites/`` and ``templates/``) and the shipped defaults.

The site root comes from ``--root``, ``SITEBOOT_ROOT``, or the nearest directory above the
current one that holds ``sites/``. The package's own ``templates/`` and ``sites/`` are the
fallback: in a checkout they are the top-level folders beside ``siteboot/``; in an installed
wheel they are ``siteboot/templates`` and ``siteboot/sites`` (``setup.cfg`` maps them there).
"""

from __future__ import annotations

import os
from pathlib import Path

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


def find_root(explicit: str | None = None, cwd: Path | None = None) -> Path | None:
    """The site root, or None when only the shipped defaults are available."""
    chosen = explicit or os.environ.get("SITEBOOT_ROOT")
    if chosen:
        root = Path(chosen).expanduser().resolve()
        if not root.is_dir():
            raise UsageError(f"site root {root} is not a directory",
                             "pass --root DIR or set SITEBOOT_ROOT to a folder holding sites/")
        return root
    here = (cwd or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "sites").is_dir() and _trusted(candidate / "sites"):
            return candidate
    return None


def _trusted(folder: Path) -> bool:
    """A ``sites/`` found by walking up must be the invoker's or root's and not writable by
    everyone: in /tmp anybody could plant one, and its commands would run as the invoker."""
    import stat

    info = folder.stat()
    return info.st_uid in (0, os.geteuid()) and not info.st_mode & stat.S_IWOTH


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
