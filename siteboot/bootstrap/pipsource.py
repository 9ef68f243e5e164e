"""Where pip comes from when ``ensurepip`` cannot give the tool venv one (Debian without
python3-venv): a pip wheel on this machine (``--wheelhouse``, ``PIP_FIND_LINKS``, pip's
``find-links``, ``/usr/share/python-wheels``) or, failing that, the package index that pip's own
configuration names, read the way pip reads it (``PIP_*`` variables over its config files).
"""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Callable, NamedTuple

from siteboot.bootstrap.requirements import python_satisfies, version_tuple
from siteboot.errors import BootstrapError

SYSTEM_WHEEL_DIRS: tuple[Path, ...] = (Path("/usr/share/python-wheels"),)
DEFAULT_INDEX_URL = "https://pypi.org/simple/"

_PIP_WHEEL_RE = re.compile(r"^pip-(\d+(?:\.\d+)*)-(?:py3|py2\.py3)-none-any\.whl$")


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


# --- a pip wheel on this machine ----------------------------------------------------------------


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
