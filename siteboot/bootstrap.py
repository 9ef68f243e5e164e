"""Stage 0: build siteboot's own virtualenv from a bare ``python3``, with the standard library only.

``python3 -m siteboot init`` in a checkout (the folder holding ``setup.cfg`` beside the
``siteboot`` package) makes the *tool venv* (``<checkout>/.venv``, or ``$SITEBOOT_VENV``):

1. ``venv.EnvBuilder`` (no pip), then pip from ``ensurepip``; where ``ensurepip`` is missing
   (Debian without python3-venv) from a pip wheel on the machine (``--wheelhouse``,
   ``PIP_FIND_LINKS``, pip's ``find-links``, ``/usr/share/python-wheels``) or, failing that,
   from the configured package index;
2. ``pip install`` of ``setup.cfg``'s ``install_requires``, as written (markers included);
3. ``siteboot.pth`` (the checkout path) in its site-packages and a relocatable ``bin/siteboot``;
4. ``siteboot-stamp.json``: a sha256 over the requirements, siteboot's version, the venv's
   Python version and the checkout path. A matching stamp and a working ``bin/python`` mean
   nothing to do: no pip call at all.

Every build, the first one too, happens at ``<venv>.new``, which carries a ``siteboot-building``
marker from the moment it is created until the stamp is written into it. Only when everything
succeeded are its absolute paths rewritten to the final ones, the stamp written and the venv
moved in place: a first build is a rename; an existing venv is moved to ``<venv>.old`` first and
deleted after. A failed build leaves the previous venv untouched and working, and one that was
killed half-way leaves a ``<venv>.new`` that the next ``init`` recognises by its marker and
removes. ``init`` deletes nothing that carries neither the marker nor a stamp.

Nothing here may import a third-party module: this runs before any of them exist. Every
subprocess goes through one injectable ``Runner`` so tests can fake pip and ensurepip.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import sys
import time
import types
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

from siteboot import proc
from siteboot.errors import BootstrapError
from siteboot.proc import RunResult, last_lines

PACKAGE_DIR = Path(__file__).resolve().parent
STAMP_NAME = "siteboot-stamp.json"
BUILDING_NAME = "siteboot-building"  # in a venv that is being built: it is siteboot's, unfinished
PTH_NAME = "siteboot.pth"
ENV_VENV = "SITEBOOT_VENV"
ENV_BOOTSTRAPPED = "SITEBOOT_BOOTSTRAPPED"
ENV_WHEELHOUSE = "SITEBOOT_WHEELHOUSE"
ENV_DEBUG = "SITEBOOT_DEBUG"
WHEELHOUSE_OPTION = "--wheelhouse"
SYSTEM_WHEEL_DIRS: tuple[Path, ...] = (Path("/usr/share/python-wheels"),)
DEFAULT_INDEX_URL = "https://pypi.org/simple/"
INIT_COMMAND = "python3 -m siteboot init"
OFFLINE_HINT = ("on a node without network access pass --wheelhouse DIR (a folder of wheels, made "
                "elsewhere with `pip download -d DIR <requirements>`), or set PIP_FIND_LINKS / "
                "PIP_INDEX_URL; then rerun `python3 -m siteboot init`")
PIP_TAIL_LINES = 12
MIN_PYTHON = (3, 9)

# The shell launcher: finds the venv from its own location, so the venv may move. `-I`: no
# `siteboot` package from the current directory (nor PYTHONPATH) can take the checkout's place.
LAUNCHER = """\
#!/bin/sh
# siteboot launcher, written by `python3 -m siteboot init`: runs siteboot with the python of
# the virtualenv this file lives in, wherever that is.
self=$0
if [ -L "$self" ]; then
    self=$(readlink -f -- "$self" 2>/dev/null || printf '%s' "$self")
fi
case $self in
    */*) bindir=${self%/*} ;;
    *) bindir=. ;;
esac
exec "$bindir/python" -I -m siteboot "$@"
"""

_PROBE = "import sys; print('%d.%d.%d' % sys.version_info[:3])"
_PIP_WHEEL_RE = re.compile(r"^pip-(\d+(?:\.\d+)*)-(?:py3|py2\.py3)-none-any\.whl$")


def debug_enabled(argv: Sequence[str] = ()) -> bool:
    return os.environ.get(ENV_DEBUG, "") not in ("", "0") or "--debug" in argv


def log(message: str) -> None:
    print(f"siteboot: {message}", file=sys.stderr, flush=True)


# --- where things are -------------------------------------------------------------------------


def find_checkout(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The checkout holding the package, or None when siteboot was installed (from a wheel)."""
    root = package_dir.parent
    setup_cfg = root / "setup.cfg"
    if not setup_cfg.is_file():
        return None
    try:
        return root if read_setup_cfg(setup_cfg).get("metadata", "name", fallback="") == "siteboot" \
            else None
    except (OSError, configparser.Error):
        return None


def tool_venv_path(checkout: Path, environ: Mapping[str, str] = os.environ) -> Path:
    configured = environ.get(ENV_VENV, "")
    if configured:
        return Path(os.path.abspath(os.path.expanduser(configured)))
    return checkout / ".venv"


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def same_path(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def wheelhouse_from(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> Path | None:
    """``--wheelhouse DIR`` / ``--wheelhouse=DIR`` anywhere in argv (before ``--``), else
    ``$SITEBOOT_WHEELHOUSE``. It stays in argv: the ``init`` command takes it too."""
    value: str | None = None
    for index, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == WHEELHOUSE_OPTION and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith(WHEELHOUSE_OPTION + "="):
            value = arg.split("=", 1)[1]
    value = value or environ.get(ENV_WHEELHOUSE) or None
    return Path(os.path.abspath(os.path.expanduser(value))) if value else None


# --- setup.cfg and the stamp ------------------------------------------------------------------


def read_setup_cfg(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    with open(path, encoding="utf-8") as handle:
        parser.read_file(handle)
    return parser


def read_requirements(setup_cfg: Path) -> list[str]:
    """``[options] install_requires``, one requirement string per line, markers kept as written."""
    try:
        raw = read_setup_cfg(setup_cfg).get("options", "install_requires", fallback="")
    except (OSError, configparser.Error) as exc:
        raise BootstrapError(f"cannot read install_requires from {setup_cfg}: {exc}") from None
    lines = (line.strip() for line in raw.splitlines())
    return [line for line in lines if line and not line.startswith(("#", ";"))]


def read_metadata_version(checkout: Path) -> str:
    """``[metadata] version``: a literal, or ``attr: pkg.module.NAME`` read from the source."""
    import ast

    try:
        value = read_setup_cfg(checkout / "setup.cfg").get("metadata", "version", fallback="")
    except (OSError, configparser.Error) as exc:
        raise BootstrapError(f"cannot read the version from {checkout / 'setup.cfg'}: {exc}") from None
    value = value.strip()
    if not value.startswith("attr:"):
        return value
    dotted = value[len("attr:"):].strip()
    module, _, name = dotted.rpartition(".")
    base = checkout.joinpath(*module.split("."))
    for source in (base.with_suffix(".py"), base / "__init__.py"):
        if source.is_file():
            tree = ast.parse(source.read_text(encoding="utf-8"))
            for node in tree.body:
                if isinstance(node, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id == name for t in node.targets):
                    found = ast.literal_eval(node.value)
                    return str(found)
    raise BootstrapError(f"setup.cfg's version ({value}) names nothing in {checkout}")


def compute_stamp(requires: Sequence[str], version: str, python_version: str,
                  checkout: Path) -> str:
    payload = json.dumps({"install_requires": list(requires), "version": version,
                          "python": python_version, "checkout": str(checkout)}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def venv_cfg_version(venv_dir: Path) -> str | None:
    """The Python version ``pyvenv.cfg`` records (``version``, else ``version_info``), as
    ``3.11.2``; None when there is none."""
    try:
        text = (venv_dir / "pyvenv.cfg").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip().lower()] = value.strip()
    for key in ("version", "version_info"):
        match = re.match(r"^(\d+\.\d+\.\d+)(?:$|[^\d])", values.get(key, ""))
        if match:
            return match.group(1)
    return None


def venv_python_version(venv_dir: Path) -> str | None:
    """The version of a venv's python without running it: ``pyvenv.cfg``'s, when ``bin/python``
    is executable and (where the file it links to is named ``pythonX.Y``) of the same X.Y."""
    python = venv_python(venv_dir)
    version = venv_cfg_version(venv_dir)
    if version is None or not os.access(python, os.X_OK):  # also false for a dangling symlink
        return None
    match = re.match(r"^python(\d+\.\d+)$", os.path.basename(os.path.realpath(python)))
    if match and not version.startswith(match.group(1) + "."):
        return None  # the base python was replaced by another minor version
    return version


def made_by_siteboot(path: Path) -> bool:
    """A directory (not a symlink) with siteboot's building marker or a stamp in it."""
    if path.is_symlink() or not path.is_dir():
        return False
    return (path / BUILDING_NAME).is_file() or bool(read_stamp(path))


def read_stamp(venv_dir: Path) -> dict[str, object]:
    try:
        data = json.loads((venv_dir / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_stamp(venv_dir: Path, requires: Sequence[str], version: str, python_version: str,
                checkout: Path) -> None:
    data = {"sha256": compute_stamp(requires, version, python_version, checkout),
            "install_requires": list(requires), "version": version, "python": python_version,
            "checkout": str(checkout)}
    from siteboot.fsutil import atomic_write  # not at the top: it imports tempfile

    atomic_write(venv_dir / STAMP_NAME, json.dumps(data, indent=2) + "\n", 0o644)


# --- versions and requires-python ---------------------------------------------------------------


def version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.strip().split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def _pad(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)), b + (0,) * (width - len(b))


def python_satisfies(specifier: str | None, python: str) -> bool:
    """Whether ``python`` (``3.9.18``) meets a Requires-Python specifier such as ``>=3.9,!=3.0.*``.

    Clauses that cannot be read are ignored (pip will have the last word anyway).
    """
    if not specifier:
        return True
    have = version_tuple(python)
    for clause in specifier.split(","):
        match = re.match(r"^\s*(~=|===|==|!=|<=|>=|<|>)\s*([0-9][0-9.]*)(\.\*)?\s*$", clause)
        if not match:
            continue
        op, text, wildcard = match.group(1), match.group(2).rstrip("."), match.group(3)
        want = version_tuple(text)
        if wildcard and op in ("==", "!="):
            equal = have[:len(want)] == want
            if equal != (op == "=="):
                return False
            continue
        left, right = _pad(have, want)
        ok = {"==": left == right, "===": left == right, "!=": left != right,
              "<=": left <= right, ">=": left >= right, "<": left < right, ">": left > right,
              "~=": left >= right and have[:max(len(want) - 1, 1)] == want[:max(len(want) - 1, 1)],
              }[op]
        if not ok:
            return False
    return True


def marker_applies(marker: str, python: str) -> bool | None:
    """Evaluate a ``python_version``/``python_full_version`` marker; None for anything else."""
    match = re.match(r"""^\s*python_(full_)?version\s*(~=|==|!=|<=|>=|<|>)\s*["']([^"']+)["']\s*$""",
                     marker)
    if not match:
        return None
    have = python if match.group(1) else ".".join(python.split(".")[:2])
    return python_satisfies(f"{match.group(2)}{match.group(3)}", have)


def required_distributions(requires: Sequence[str], python: str | None = None) -> list[str]:
    """Distribution names this Python needs (markers other than python_version: assumed yes)."""
    python = python or ".".join(str(n) for n in sys.version_info[:3])
    names = []
    for requirement in requires:
        spec, _, marker = requirement.partition(";")
        if marker.strip() and marker_applies(marker, python) is False:
            continue
        match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
        if match:
            names.append(match.group(1))
    return names


def distributions_installed(names: Sequence[str]) -> bool:
    """Whether every named distribution is importable by this interpreter (metadata lookup only)."""
    from importlib import metadata

    for name in names:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            return False
    return True


# --- subprocesses -------------------------------------------------------------------------------


if TYPE_CHECKING:  # (collections.abc generics cannot be subscripted at run time before 3.9)
    Runner = Callable[[Sequence[str]], RunResult]


def run_command(cmd: Sequence[str]) -> RunResult:
    """Run ``cmd`` with stdout and stderr captured together (streamed too with SITEBOOT_DEBUG).

    PYTHONPATH and PYTHONHOME are dropped: they would make pip see (and skip) packages that
    live outside the venv. Everything else, PIP_* included, is passed on.
    """
    return proc.run_command(cmd, env=proc.clean_env(), echo=sys.stderr if debug_enabled() else None)


def tail(output: str, count: int = PIP_TAIL_LINES) -> str:
    return "\n".join(f"  | {line}" for line in last_lines(output, count))


def probe_python(python: Path, runner: Runner) -> str | None:
    """The version of a venv's python (``3.11.2``), or None when it does not run."""
    if not os.path.exists(python):  # follows symlinks: a dangling one after a python upgrade
        return None
    result = runner([str(python), "-I", "-c", _PROBE])
    text = result.output.strip().splitlines()[-1:] if result.output.strip() else []
    if result.returncode != 0 or not text or not re.match(r"^\d+\.\d+\.\d+$", text[0]):
        return None
    return text[0]


# --- pip's configuration ------------------------------------------------------------------------


def pip_config_files(environ: Mapping[str, str] = os.environ) -> list[Path]:
    """pip's config files, lowest precedence first (site-wide, then the user's, then PIP_CONFIG_FILE)."""
    home = Path(environ.get("HOME") or os.path.expanduser("~"))
    xdg_dirs = (environ.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(os.pathsep)
    files = [Path(d) / "pip" / "pip.conf" for d in reversed(xdg_dirs) if d]
    files.append(Path("/etc/pip.conf"))
    files.append(home / ".pip" / "pip.conf")
    files.append(Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "pip" / "pip.conf")
    explicit = environ.get("PIP_CONFIG_FILE", "")
    if explicit and explicit != os.devnull:
        files.append(Path(explicit))
    return files


def read_pip_config(files: Sequence[Path]) -> dict[str, str]:
    """``[global]`` then ``[install]`` of each file, later files overriding earlier ones."""
    merged: dict[str, str] = {}
    for path in files:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle)
        except (OSError, configparser.Error, UnicodeDecodeError):
            continue
        for section in ("global", "install"):
            if parser.has_section(section):
                merged.update({k: v.strip() for k, v in parser.items(section)})
    return merged


def index_url(environ: Mapping[str, str], config: Mapping[str, str]) -> str:
    url = environ.get("PIP_INDEX_URL") or config.get("index-url") or DEFAULT_INDEX_URL
    return url.split()[0]


def _find_links_dirs(value: str) -> list[Path]:
    import urllib.request

    found = []
    for entry in value.split():
        parsed = urllib.parse.urlsplit(entry)
        if parsed.scheme == "file":
            found.append(Path(urllib.request.url2pathname(parsed.path)))
        elif not parsed.scheme:
            found.append(Path(os.path.expanduser(entry)))
    return found


def local_wheel_sources(wheelhouse: Path | None, environ: Mapping[str, str],
                        config: Mapping[str, str],
                        system_dirs: Sequence[Path] = SYSTEM_WHEEL_DIRS) -> list[Path]:
    """Where a pip wheel may already lie, in the order they are tried."""
    sources: list[Path] = []
    if wheelhouse is not None:
        sources.append(wheelhouse)
    sources += _find_links_dirs(environ.get("PIP_FIND_LINKS", ""))
    sources += _find_links_dirs(config.get("find-links", ""))
    sources += list(system_dirs)
    unique: list[Path] = []
    for source in sources:
        if source not in unique:
            unique.append(source)
    return unique


def wheel_requires_python(wheel: Path) -> str | None:
    """``Requires-Python`` from a wheel's METADATA (None when absent); raises on a bad wheel."""
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.count("/") == 1 and name.endswith(".dist-info/METADATA"):
                for line in archive.read(name).decode("utf-8", "replace").splitlines():
                    if not line.strip():
                        break  # end of the headers
                    if line.lower().startswith("requires-python:"):
                        return line.split(":", 1)[1].strip()
                return None
    raise zipfile.BadZipFile(f"{wheel} has no METADATA")


def pip_wheel_version(filename: str) -> tuple[int, ...]:
    match = _PIP_WHEEL_RE.match(filename)
    return version_tuple(match.group(1)) if match else ()


def find_local_pip_wheel(sources: Sequence[Path], python: str) -> Path | None:
    """The newest pip wheel that supports ``python`` in the first source that has one."""
    import zipfile

    for source in sources:
        if source.is_file():
            candidates = [source] if _PIP_WHEEL_RE.match(source.name) else []
        elif source.is_dir():
            candidates = [p for p in source.glob("pip-*.whl") if _PIP_WHEEL_RE.match(p.name)]
        else:
            continue
        candidates.sort(key=lambda p: pip_wheel_version(p.name), reverse=True)
        for wheel in candidates:
            try:
                if python_satisfies(wheel_requires_python(wheel), python):
                    return wheel
            except (OSError, zipfile.BadZipFile, KeyError):
                continue
    return None


# --- the package index --------------------------------------------------------------------------


class IndexLink(NamedTuple):
    filename: str
    url: str  # without the fragment
    version: tuple[int, ...]
    sha256: str | None
    requires_python: str | None


def parse_index_page(page: str, page_url: str) -> list[IndexLink]:
    """The pip wheels listed on a PEP 503 simple-index page (yanked ones left out)."""
    import html.parser

    class Anchors(html.parser.HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.anchors: list[dict[str, str | None]] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "a":
                self.anchors.append(dict(attrs))

    parser = Anchors()
    parser.feed(page)
    parser.close()
    links = []
    for anchor in parser.anchors:
        href = anchor.get("href")
        if not href or "data-yanked" in anchor:
            continue
        url, _, fragment = urllib.parse.urljoin(page_url, href).partition("#")
        filename = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
        match = _PIP_WHEEL_RE.match(filename)
        if not match:
            continue
        digest = None
        for part in fragment.split("&"):
            if part.startswith("sha256="):
                digest = part[len("sha256="):].lower()
        links.append(IndexLink(filename, url, version_tuple(match.group(1)), digest,
                               anchor.get("data-requires-python")))
    return links


def choose_pip(links: Sequence[IndexLink], python: str) -> IndexLink | None:
    usable = [link for link in links if python_satisfies(link.requires_python, python)]
    return max(usable, key=lambda link: link.version) if usable else None


def redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query,
                                    parts.fragment))


Fetcher = Callable[[str], bytes]


def make_fetcher(environ: Mapping[str, str], config: Mapping[str, str]) -> Fetcher:
    """GET a URL (http(s) with pip's ``cert`` and ``timeout``; file:// with index.html for dirs)."""
    cafile = environ.get("PIP_CERT") or config.get("cert") or None
    try:
        timeout = float(environ.get("PIP_DEFAULT_TIMEOUT") or config.get("timeout") or 30)
    except ValueError:
        timeout = 30.0

    def fetch(url: str) -> bytes:
        import ssl
        import urllib.request

        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "file":
            path = Path(urllib.request.url2pathname(parts.path))
            return (path / "index.html" if path.is_dir() else path).read_bytes()
        headers = {"Accept": "text/html", "User-Agent": "siteboot-bootstrap"}
        if parts.username is not None:
            import base64

            credentials = f"{urllib.parse.unquote(parts.username)}:" \
                          f"{urllib.parse.unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
            host = parts.hostname or ""
            if parts.port:
                host += f":{parts.port}"
            url = urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, ""))
        context = ssl.create_default_context(cafile=cafile) if parts.scheme == "https" else None
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            data: bytes = response.read()
            return data

    return fetch


def download_pip_wheel(index: str, python: str, fetch: Fetcher, dest: Path) -> Path:
    """Fetch the newest pip wheel for ``python`` from a simple index into ``dest``."""
    page_url = index.rstrip("/") + "/pip/"
    try:
        page = fetch(page_url).decode("utf-8", "replace")
    except (OSError, ValueError) as exc:
        raise BootstrapError(f"cannot read {redact(page_url)}: {exc}") from None
    link = choose_pip(parse_index_page(page, page_url), python)
    if link is None:
        raise BootstrapError(f"{redact(page_url)} lists no pip wheel for Python {python}")
    try:
        data = fetch(link.url)
    except (OSError, ValueError) as exc:
        raise BootstrapError(f"cannot download {redact(link.url)}: {exc}") from None
    if link.sha256 is not None and hashlib.sha256(data).hexdigest() != link.sha256:
        raise BootstrapError(f"{redact(link.url)} does not match the index's sha256 "
                             f"({link.sha256}): refusing to install it")
    target = dest / link.filename
    target.write_bytes(data)
    return target


# --- venvs --------------------------------------------------------------------------------------


def base_interpreter() -> str:
    """The real interpreter behind this one: a tool venv built from inside another venv must
    not depend on that venv (Python < 3.11 reports the venv's own python as the base)."""
    base = getattr(sys, "_base_executable", "") or sys.executable
    if sys.prefix == sys.base_prefix:
        return base
    inside = os.path.realpath(sys.prefix) + os.sep
    if base and not os.path.realpath(os.path.dirname(base)).startswith(inside) \
            and os.path.exists(base):
        return base
    for name in (f"python{sys.version_info[0]}.{sys.version_info[1]}", "python3", "python"):
        candidate = os.path.join(sys.base_prefix, "bin", name)
        if os.path.exists(candidate):
            return candidate
    return base


def create_venv(target: Path, prompt: str) -> None:
    """``EnvBuilder(with_pip=False, symlinks=True)`` whose python links to the base interpreter."""
    import venv

    base = base_interpreter()

    class ToolEnvBuilder(venv.EnvBuilder):
        def ensure_directories(self, env_dir: str | bytes | os.PathLike[str] | os.PathLike[bytes],
                               ) -> types.SimpleNamespace:
            context = super().ensure_directories(env_dir)
            if os.path.abspath(base) != os.path.abspath(context.executable):
                context.executable = base
                context.python_dir, context.python_exe = os.path.split(os.path.abspath(base))
                context.env_exe = os.path.join(context.bin_path, context.python_exe)
                context.env_exec_cmd = context.env_exe
            return context

    ToolEnvBuilder(with_pip=False, symlinks=True, prompt=prompt).create(str(target))


def have_ensurepip() -> bool:
    try:
        import ensurepip  # noqa: F401
    except ImportError:
        return False
    return True


def rewrite_paths(venv_dir: Path, old: str, new: str) -> list[Path]:
    """Replace ``old`` by ``new`` in the text files of ``bin/`` (shebangs, activate scripts) and
    in ``pyvenv.cfg``; binaries and symlinks are left alone. Returns the files changed."""
    before, after = old.encode(), new.encode()
    candidates = [venv_dir / "pyvenv.cfg"]
    bindir = venv_dir / "bin"
    if bindir.is_dir():
        candidates += sorted(bindir.iterdir())
    changed = []
    for path in candidates:
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data or before not in data:
            continue
        path.write_bytes(data.replace(before, after))  # in place: mode and owner are kept
        changed.append(path)
    return changed


def _remove(path: Path) -> None:
    import shutil

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            shutil.rmtree(path)  # once more, this time reporting what is in the way


class Bootstrapper:
    """Makes the tool venv for ``checkout`` at ``venv_dir`` current. Every seam is a parameter."""

    system_wheel_dirs: Sequence[Path] = SYSTEM_WHEEL_DIRS

    def __init__(self, checkout: Path, venv_dir: Path, *, wheelhouse: Path | None = None,
                 runner: Runner = run_command,
                 environ: Mapping[str, str] | None = None,
                 ensurepip_available: Callable[[], bool] = have_ensurepip,
                 make_venv: Callable[[Path, str], None] = create_venv,
                 fetcher: Fetcher | None = None,
                 pip_config: Mapping[str, str] | None = None,
                 log: Callable[[str], None] = log) -> None:
        self.checkout = checkout
        self.venv = venv_dir
        self.wheelhouse = wheelhouse
        self.runner = runner
        self.environ = os.environ if environ is None else environ
        self.ensurepip_available = ensurepip_available
        self.make_venv = make_venv
        self.pip_config = (read_pip_config(pip_config_files(self.environ)) if pip_config is None
                           else pip_config)
        self.fetcher = fetcher or make_fetcher(self.environ, self.pip_config)
        self.log = log
        self.requires = read_requirements(checkout / "setup.cfg")
        self.version = read_metadata_version(checkout)

    @property
    def new(self) -> Path:
        return self.venv.with_name(self.venv.name + ".new")

    @property
    def old(self) -> Path:
        return self.venv.with_name(self.venv.name + ".old")

    @property
    def python(self) -> Path:
        return venv_python(self.venv)

    def expected_stamp(self, python_version: str) -> str:
        return compute_stamp(self.requires, self.version, python_version, self.checkout)

    def is_current(self, run_python: bool = False) -> bool:
        """A stamp that matches and a ``bin/python`` that is executable, of the version in
        ``pyvenv.cfg`` (no process started); with ``run_python``, that runs, of the version it
        reports (what ``init`` checks before deciding to build nothing)."""
        stamp = read_stamp(self.venv).get("sha256")
        if not stamp:
            return False
        python_version = (probe_python(self.python, self.runner) if run_python
                          else venv_python_version(self.venv))
        return python_version is not None and stamp == self.expected_stamp(python_version)

    def why_outdated(self) -> str:
        stamp = read_stamp(self.venv)
        python_version = probe_python(self.python, self.runner)
        if python_version is None:
            return "its python does not run"
        if stamp.get("python") != python_version:
            return f"its python changed ({stamp.get('python')} -> {python_version})"
        if stamp.get("install_requires") != self.requires:
            return "setup.cfg's install_requires changed"
        if stamp.get("version") != self.version:
            return f"siteboot's version changed ({stamp.get('version')} -> {self.version})"
        if stamp.get("checkout") != str(self.checkout):
            return f"it was made for the checkout at {stamp.get('checkout')}"
        return "its stamp does not match"

    def ensure(self) -> Path:
        """Make the tool venv current; return its python."""
        try:
            self.venv.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BootstrapError(f"cannot create {self.venv.parent}: {exc.strerror or exc}") from None
        from siteboot.fsutil import flock  # not at the top: stage 0's decision path skips it

        with flock(self.venv.parent, best_effort=True, on_wait=lambda: self.log(
                f"waiting for another `siteboot init` (lock on {self.venv.parent})")):
            try:
                return self._ensure()
            except OSError as exc:  # a half-made <venv>.new is already gone (_build_or_remove)
                raise BootstrapError(f"cannot build the tool venv at {self.venv}: {exc}") from None

    def _ensure(self) -> Path:
        exists = os.path.lexists(self.venv)
        # a first build killed half-way at the final path (as siteboot used to build them)
        half_built = exists and made_by_siteboot(self.venv) and not read_stamp(self.venv)
        if exists and not half_built and not (self.venv / "pyvenv.cfg").is_file():
            if not self.venv.is_dir() or any(self.venv.iterdir()):
                raise BootstrapError(
                    f"{self.venv} exists and is not a virtualenv: refusing to replace it",
                    f"remove it, or set {ENV_VENV} to another path")
            self.venv.rmdir()
            exists = False
        if exists and not half_built and not read_stamp(self.venv):
            raise BootstrapError(
                f"{self.venv} is a virtualenv that `{INIT_COMMAND}` did not make (it has no "
                f"{STAMP_NAME}): refusing to replace it",
                f"remove it, or set {ENV_VENV} to another path")
        if exists and not half_built and self.is_current(run_python=True):
            self.log(f"tool venv up to date ({self.venv})")
            return self.python
        for leftover in (self.new, self.old):
            if not os.path.lexists(leftover):
                continue
            if not made_by_siteboot(leftover):
                raise BootstrapError(
                    f"{leftover} is in the way, and `{INIT_COMMAND}` did not make it (it has "
                    f"neither {BUILDING_NAME} nor {STAMP_NAME}): refusing to remove it",
                    f"move it away or remove it yourself, or set {ENV_VENV} to another path")
            self.log(f"removing leftover {leftover}")
            _remove(leftover)
        started = time.monotonic()
        if not exists:
            self.log(f"creating tool venv at {self.venv}")
            self._build_or_remove("")
            try:
                os.rename(self.new, self.venv)
            except OSError as exc:
                _remove(self.new)
                raise BootstrapError(f"cannot move {self.new} to {self.venv}: {exc}") from None
        elif half_built:
            self.log(f"tool venv at {self.venv} was left half-built by an interrupted `init`; "
                     f"building a new one at {self.new}")
            self._build_or_remove(f"the half-built tool venv at {self.venv} is unchanged")
            self._swap()
        else:
            self.log(f"tool venv at {self.venv} is out of date ({self.why_outdated()}); "
                     f"building a new one at {self.new}")
            self._build_or_remove(
                f"the previous tool venv at {self.venv} is unchanged and still works")
            self._swap()
        self.log(f"tool venv ready at {self.venv} ({time.monotonic() - started:.0f} s)")
        return self.python

    def _build_or_remove(self, note: str) -> None:
        """A complete, stamped venv at ``<venv>.new`` with its paths already the final ones; on
        any failure, no ``<venv>.new`` at all."""
        target = self.new
        target.mkdir()
        try:
            (target / BUILDING_NAME).write_text(
                f"`{INIT_COMMAND}` is building this virtualenv for {self.venv}\n", encoding="utf-8")
            python_version = self.build(target)
            # before the rename: a venv at the final path is always complete and stamped
            rewrite_paths(target, str(target), str(self.venv))
            write_stamp(target, self.requires, self.version, python_version, self.checkout)
            (target / BUILDING_NAME).unlink()
        except BootstrapError as exc:
            _remove(target)
            if not note:
                raise
            raise BootstrapError(f"{exc.message}\n  {note}", exc.hint) from None
        except BaseException:
            _remove(target)
            raise

    def _swap(self) -> None:
        """The commit: <venv> -> <venv>.old, <venv>.new -> <venv>, .old removed."""
        try:
            os.rename(self.venv, self.old)
        except OSError as exc:
            _remove(self.new)
            raise BootstrapError(f"cannot move {self.venv} aside to {self.old}: {exc}; the "
                                 "previous tool venv is unchanged") from None
        try:
            os.rename(self.new, self.venv)
        except OSError as exc:
            os.rename(self.old, self.venv)
            _remove(self.new)
            raise BootstrapError(f"cannot move {self.new} to {self.venv}: {exc}; the previous "
                                 "tool venv was put back") from None
        _remove(self.old)

    def build(self, target: Path) -> str:
        """A complete venv at ``target``: python, pip, the requirements, siteboot.pth, launcher.
        Returns the version of its python."""
        try:
            self.make_venv(target, self.venv.name)  # the final name as the prompt
        except (OSError, ValueError) as exc:  # (with_pip=False: venv itself runs no subprocess)
            raise BootstrapError(f"cannot create a virtualenv at {target}: {exc}") from None
        python = venv_python(target)
        python_version = probe_python(python, self.runner)
        if python_version is None:
            raise BootstrapError(f"the new virtualenv's python ({python}) does not run")
        self.install_pip(python, python_version)
        self.install_requirements(python)
        self.install_siteboot(target, python_version)
        return python_version

    def install_pip(self, python: Path, python_version: str) -> None:
        import tempfile

        if self.ensurepip_available():
            result = self.runner([str(python), "-Im", "ensurepip", "--upgrade", "--default-pip"])
            if result.returncode == 0:
                return
            last = result.output.strip().splitlines()[-1:] or [f"exit code {result.returncode}"]
            why = f"ensurepip failed ({last[0].strip()})"
        else:
            why = "ensurepip is not available (Debian without python3-venv?)"
        with tempfile.TemporaryDirectory(prefix="siteboot-pip-") as tmp:
            wheel = self.find_pip_wheel(python_version, Path(tmp), why)
            result = self.runner([str(python), f"{wheel}/pip", "install", "--no-index",
                                  "--disable-pip-version-check", "--quiet", str(wheel)])
            if result.returncode != 0:
                raise BootstrapError(f"{why}; installing pip from {wheel} failed:\n"
                                     f"{tail(result.output)}",
                                     "install python3-venv (Debian/Ubuntu: apt install "
                                     "python3-venv), or put a working pip wheel into --wheelhouse")
        self.log(f"{why}; installed pip from {wheel}")

    def find_pip_wheel(self, python_version: str, tmp: Path, why: str) -> Path:
        sources = local_wheel_sources(self.wheelhouse, self.environ, self.pip_config,
                                      self.system_wheel_dirs)
        wheel = find_local_pip_wheel(sources, python_version)
        if wheel is not None:
            return wheel
        looked = ", ".join(str(s) for s in sources)
        if self.wheelhouse is not None:
            raise BootstrapError(f"{why}, and no pip wheel for Python {python_version} in {looked}",
                                 f"put a pip-*.whl into {self.wheelhouse} (pip download -d DIR "
                                 "pip), or install python3-venv")
        index = index_url(self.environ, self.pip_config)
        self.log(f"{why}; no pip wheel in {looked}; fetching one from {redact(index)}")
        try:
            return download_pip_wheel(index, python_version, self.fetcher, tmp)
        except BootstrapError as exc:
            raise BootstrapError(f"{why}, no pip wheel on this machine ({looked}), and "
                                 f"{exc.message}",
                                 "install python3-venv (Debian/Ubuntu: apt install python3-venv), "
                                 "or pass --wheelhouse DIR holding a pip-*.whl") from None

    def install_requirements(self, python: Path) -> None:
        if not self.requires:
            return
        cmd = [str(python), "-I", "-m", "pip", "install", "--disable-pip-version-check"]
        if self.wheelhouse is not None:
            cmd += ["--no-index", "--find-links", str(self.wheelhouse)]
        names = ", ".join(required_distributions(self.requires, None)) or "requirements"
        where = f" from {self.wheelhouse}" if self.wheelhouse else ""
        self.log(f"installing {names}{where} with pip")
        result = self.runner([*cmd, *self.requires])
        if result.returncode != 0:
            raise BootstrapError(
                f"pip could not install siteboot's dependencies (setup.cfg install_requires)"
                f"{where} into {python.parent.parent} (exit code {result.returncode}):\n"
                f"{tail(result.output)}",
                OFFLINE_HINT if self.wheelhouse is None else
                f"put a wheel for every requirement (and their dependencies) into {self.wheelhouse}: "
                f"`pip download -d {self.wheelhouse} <requirements>` on a machine with network "
                "access, for this Python version and platform")

    def install_siteboot(self, target: Path, python_version: str) -> None:
        """``siteboot.pth`` (the checkout on sys.path) and the ``bin/siteboot`` launcher."""
        from siteboot.fsutil import atomic_write  # not at the top: it imports tempfile

        major_minor = ".".join(python_version.split(".")[:2])
        site_packages = target / "lib" / f"python{major_minor}" / "site-packages"
        try:
            site_packages.mkdir(parents=True, exist_ok=True)
            atomic_write(site_packages / PTH_NAME, f"{self.checkout}\n", 0o644)
            atomic_write(target / "bin" / "siteboot", LAUNCHER, 0o755)
        except OSError as exc:
            raise BootstrapError(f"cannot install siteboot into {target}: {exc}") from None
        # Bytecode, as pip compiles what it installs: `siteboot status` starts measurably faster
        # where PYTHONDONTWRITEBYTECODE is set. Best effort: the checkout may be read-only to us.
        self.runner([str(venv_python(target)), "-I", "-m", "compileall", "-q",
                     str(self.checkout / "siteboot")])


def reexec(python: Path, args: Sequence[str]) -> None:
    """Replace this process by ``<venv>/bin/python -I -m siteboot <args>`` (never returns).

    ``-I``: the current directory is not on sys.path, so a ``siteboot`` package there cannot run
    instead of the checkout's (which the venv's ``siteboot.pth`` still puts on sys.path)."""
    env = dict(os.environ)
    env[ENV_BOOTSTRAPPED] = "1"
    try:
        proc.exec_replace(proc.python_module("siteboot", *args, python=str(python)), env)
    except OSError as exc:
        raise BootstrapError(f"cannot run {python}: {exc.strerror or exc}",
                             f"remove {python.parent.parent} and run `{INIT_COMMAND}`") from None
