"""Where things are: the site root (``sites/`` and ``templates/``) and the shipped defaults.

The site root comes from ``--root``, ``SITEBOOT_ROOT``, or the nearest directory above the
current one that holds ``sites/``. The package's own ``templates/`` and ``sites/`` are the
fallback: in a checkout they are the top-level folders beside ``siteboot/``; in an installed
wheel they are ``siteboot/templates`` and ``siteboot/sites`` (``setup.cfg`` maps them there).

Without ``--site`` (or ``SITEBOOT_SITE``) the site is the site root's own: the one its
``sites/default`` file names, else the only ``.toml`` in its ``sites/``; else the shipped
``local``. ``sites/default`` is read like every file of an implicitly found root: only when the
root passed the trust check (``untrusted``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from siteboot.errors import UsageError

TYPE_CHECKING = False  # no typing at run time: every command pays for its import
if TYPE_CHECKING:
    from typing import Callable

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_SITE = "local"
DEFAULT_ENV = "dev"
DEFAULT_FILE = "default"  # sites/default: one line, the name of the site a root uses by default
_SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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

    A site root found by walking up is used only when nobody but the invoker, root or the owner
    of the siteboot being run could have changed it (``untrusted``): a folder planted in /tmp,
    or one holding a ``sites`` symlink into a trusted checkout beside its own templates, neither
    runs nor blocks. ``notice`` is told why it was passed over (the CLI prints it). A root named
    explicitly (``--root``, ``SITEBOOT_ROOT``) is the operator's own choice and is used as is.
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
            why = untrusted(candidate)
        except OSError:
            continue
        if why:
            if notice is not None:
                notice(f"note: ignoring the site root {candidate}: {why}; to use it anyway, "
                       f"pass --root {candidate}")
            continue
        return candidate
    return None


def trusted_uids() -> set[int]:
    """Whose files siteboot may read as code or configuration: root, the invoker, and the owner
    of the siteboot being run (its code runs anyway: one account's checkout used by both)."""
    return {0, os.geteuid(), PACKAGE_DIR.stat().st_uid}


def untrusted(root: Path) -> str | None:
    """Why the site root ``root`` must not be used implicitly, or None: the folder itself,
    ``sites/``, ``templates/`` and every file below them must be of a trusted owner and not
    writable by others; a symlink only counts when the link and its target both are."""
    why = untrusted_entry(root, root)
    if why:
        return why
    for folder in (root / "sites", root / "templates"):
        if not os.path.lexists(folder):
            continue
        why = untrusted_entry(folder, root)
        if why:
            return why
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            for name in sorted(dirnames + filenames):
                why = untrusted_entry(Path(dirpath) / name, root)
                if why:
                    return why
    return None


def untrusted_entry(path: Path, root: Path) -> str | None:
    import stat

    from siteboot.fsutil import owner_name

    allowed = trusted_uids()
    info = os.lstat(path)
    where = str(path.relative_to(root)) if path != root else str(path)
    if stat.S_ISLNK(info.st_mode):
        if info.st_uid not in allowed:
            return f"{where} is a symlink of {owner_name(info.st_uid)}"
        info = os.stat(path)  # and what it points at must pass as well
        where = f"{where} (-> {os.path.realpath(path)})"
    if info.st_uid not in allowed:
        return f"{where} belongs to {owner_name(info.st_uid)}"
    # Not even a sticky shared folder (like /tmp) will do as a root: a stranger could add a
    # templates/ of theirs after this check.
    if info.st_mode & stat.S_IWOTH:
        return f"{where} is writable by everyone"
    if info.st_mode & stat.S_IWGRP:
        return f"{where} is writable by its group"
    return None


def config_template(root: Path | None, name: str) -> Path:
    """The template file ``name`` that rendering uses: the site root's, else the shipped one."""
    for folder in template_dirs(root):
        if (folder / name).is_file():
            return folder / name
    return shipped_templates() / name


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


def resolve_site_path(site: str | None, root: Path | None) -> Path:
    """A site name (``sites/<name>.toml``) or a path to a ``.toml`` file; None: the default
    (``default_site_path``)."""
    if site is None:
        return default_site_path(root)
    if site.endswith(".toml") or os.sep in site:
        path = Path(site).expanduser()
        if not path.is_file():
            raise UsageError(f"site file {path} does not exist", _elsewhere(path, root))
        return path.resolve()
    for folder in site_dirs(root):
        path = folder / f"{site}.toml"
        if path.is_file():
            return path
    raise UsageError(f"no site named '{site}' (looked in {', '.join(map(str, site_dirs(root)))})",
                     f"known sites: {', '.join(site_names(root)) or 'none'}; or pass a path to a "
                     ".toml file")


def site_names(root: Path | None) -> list[str]:
    """The names ``--site`` takes: every ``sites/<name>.toml`` of the root and the shipped ones."""
    return sorted({p.stem for folder in site_dirs(root) for p in folder.glob("*.toml")})


def root_of(site_path: Path, root: Path | None) -> Path:
    """The folder a site file's relative paths start from: the site root whose ``sites/``
    holds it (a checkout: ``sites/jaws.toml`` beside ``jaws-site/``), else its own folder (a
    site file named by path from elsewhere)."""
    if root is not None and Path(os.path.realpath(root / "sites")) in \
            Path(os.path.realpath(site_path)).parents:
        return root
    return site_path.parent


def _elsewhere(path: Path, root: Path | None) -> str | None:
    """``--site myapp.toml`` run beside ``sites/``, or ``--site sites/myapp.toml`` from below
    the root: the file of that name under ``sites/``, as a ``--site`` that works."""
    for folder in site_dirs(root):
        found = folder / path.name
        if found.suffix == ".toml" and found.is_file():
            return f"did you mean --site {found.stem} ({found})?"
    return None


def default_site_path(root: Path | None) -> Path:
    """The site used when none is named: the one the site root's ``sites/default`` names, else
    the root's only site, else the shipped ``local``."""
    folder = root / "sites" if root is not None else None
    if folder is not None and folder.is_dir():
        named = folder / DEFAULT_FILE
        if os.path.lexists(named):
            return _declared_default(named)
        own = sorted(folder.glob("*.toml"))
        if len(own) == 1:
            return own[0]
    return resolve_site_path(DEFAULT_SITE, root)


def _declared_default(named: Path) -> Path:
    """The site ``sites/default`` names: one line, a site name (``#`` comments allowed)."""
    try:
        lines = named.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {named}: {exc}", "it names the default site: one "
                         "line, a site name under sites/") from None
    names = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    name = names[0] if len(names) == 1 else ""
    name = name[:-len(".toml")] if name.endswith(".toml") else name
    if not _SITE_NAME.fullmatch(name):
        raise UsageError(f"{named} must hold one site name (a line like `myapp`), not "
                         f"{' / '.join(names) or 'nothing'}", "or pass --site")
    path = named.parent / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in named.parent.glob("*.toml"))
        raise UsageError(f"{named} names site '{name}', but there is no {path}",
                         f"sites there: {', '.join(known) or 'none'}; fix {named} or pass --site")
    return path


def all_site_paths(root: Path | None) -> list[Path]:
    """Every site file under the root's ``sites/`` (the shipped ones when there is no root)."""
    dirs = site_dirs(root)
    folder = dirs[0] if dirs else shipped_sites()
    return sorted(folder.glob("*.toml"))
