"""siteboot/bootstrap/pipsource.py: pip's config, local pip wheels, the package index."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from siteboot.bootstrap import pipsource
from siteboot.errors import BootstrapError
from tests.unit.bootstrap_fakes import make_wheel


def test_local_wheel_sources_order(tmp_path: Path) -> None:
    sources = pipsource.local_wheel_sources(
        tmp_path / "wh", {"PIP_FIND_LINKS": f"file://{tmp_path}/a  {tmp_path}/b https://x/y"},
        {"find-links": f"{tmp_path}/c"}, [Path("/usr/share/python-wheels")])
    assert sources == [tmp_path / "wh", tmp_path / "a", tmp_path / "b", tmp_path / "c",
                       Path("/usr/share/python-wheels")]


def test_first_source_with_a_usable_wheel_wins(tmp_path: Path) -> None:
    make_wheel(tmp_path / "b", "22.0")
    make_wheel(tmp_path / "b", "23.1")
    make_wheel(tmp_path / "b", "99.0", requires_python=">=3.99")
    make_wheel(tmp_path / "c", "24.0")
    (tmp_path / "b" / "pip-23.2-py3-none-any.whl").write_text("not a zip")
    sources = [tmp_path / "missing", tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    (tmp_path / "a").mkdir()
    assert pipsource.find_local_pip_wheel(sources, "3.9.18") == tmp_path / "b" / "pip-23.1-py3-none-any.whl"
    assert pipsource.find_local_pip_wheel(sources[:2], "3.9.18") is None


def test_index_url_precedence() -> None:
    assert pipsource.index_url({}, {}) == "https://pypi.org/simple/"
    assert pipsource.index_url({}, {"index-url": "https://c/simple"}) == "https://c/simple"
    assert pipsource.index_url({"PIP_INDEX_URL": "https://e/simple"},
                               {"index-url": "https://c/simple"}) == "https://e/simple"


def test_pip_config_later_files_and_install_section_win(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("[global]\nindex-url = https://a/\ncert = /a.pem\n")
    (tmp_path / "b.conf").write_text("[global]\nindex-url = https://b/\n[install]\nfind-links = /w\n")
    (tmp_path / "bad.conf").write_text("no section header\n")
    merged = pipsource.read_pip_config([tmp_path / "a.conf", tmp_path / "bad.conf",
                                        tmp_path / "b.conf", tmp_path / "missing.conf"])
    assert merged == {"index-url": "https://b/", "cert": "/a.pem", "find-links": "/w"}
    files = pipsource.pip_config_files({"HOME": "/h", "PIP_CONFIG_FILE": "/x.conf"})
    assert files == [Path("/etc/xdg/pip/pip.conf"), Path("/etc/pip.conf"),
                     Path("/h/.pip/pip.conf"), Path("/h/.config/pip/pip.conf"), Path("/x.conf")]


def _anchor(href: str, text: str, requires: str | None = None, extra: str = "") -> str:
    attrs = f' data-requires-python="{requires}"' if requires else ""
    return f'<a href="{href}"{attrs}{extra}>{text}</a><br/>'


FILES = "https://files.example"


PYPI_PAGE = "\n".join([
    "<!DOCTYPE html>",
    '<html><head><meta name="pypi:repository-version" content="1.1"></head><body>',
    "<h1>Links for pip</h1>",
    _anchor(f"{FILES}/ab/pip-9.0.3-py2.py3-none-any.whl#sha256=c3ed", "pip-9.0.3-py2.py3-none-any.whl",
            "&gt;=2.6,!=3.0.*,!=3.1.*,!=3.2.*"),
    _anchor(f"{FILES}/cd/pip-26.0.1-py3-none-any.whl#sha256=AAAA", "pip-26.0.1-py3-none-any.whl",
            "&gt;=3.9"),
    _anchor(f"{FILES}/cd/pip-26.0.1.tar.gz#sha256=bbbb", "pip-26.0.1.tar.gz", "&gt;=3.9"),
    _anchor(f"{FILES}/ef/pip-26.1-py3-none-any.whl#sha256=dddd", "pip-26.1-py3-none-any.whl",
            "&gt;=3.9", ' data-yanked="broken"'),
    _anchor(f"{FILES}/gh/pip-26.3-py3-none-any.whl#sha256=eeee", "pip-26.3-py3-none-any.whl",
            "&gt;=3.10"),
    _anchor(f"{FILES}/ij/pip-27.0b1-py3-none-any.whl#sha256=ffff", "pip-27.0b1-py3-none-any.whl",
            "&gt;=3.10"),
    _anchor("../../packages/pip-20.0-py2.py3-none-any.whl", "relative, no hash"),
    "</body></html>",
])


def test_index_page_parsing() -> None:
    links = pipsource.parse_index_page(PYPI_PAGE, "https://pypi.example/simple/pip/")
    assert [link.filename for link in links] == [
        "pip-9.0.3-py2.py3-none-any.whl", "pip-26.0.1-py3-none-any.whl",
        "pip-26.3-py3-none-any.whl", "pip-20.0-py2.py3-none-any.whl"]  # no sdist, yanked, beta
    assert links[1].sha256 == "aaaa"
    assert links[1].url == "https://files.example/cd/pip-26.0.1-py3-none-any.whl"
    assert links[0].requires_python == ">=2.6,!=3.0.*,!=3.1.*,!=3.2.*"
    assert links[3].url == "https://pypi.example/packages/pip-20.0-py2.py3-none-any.whl"
    assert links[3].sha256 is None
    assert pipsource.choose_pip(links, "3.9.18").filename == "pip-26.0.1-py3-none-any.whl"  # type: ignore[union-attr]
    assert pipsource.choose_pip(links, "3.12.1").filename == "pip-26.3-py3-none-any.whl"  # type: ignore[union-attr]
    assert pipsource.choose_pip(links[2:3], "3.9.0") is None


def test_download_verifies_the_hash(tmp_path: Path) -> None:
    wheel = b"wheel bytes"
    good = hashlib.sha256(wheel).hexdigest()
    page = f'<a href="/f/pip-24.0-py3-none-any.whl#sha256={good}">x</a>'.encode()
    pages = {"https://i/simple/pip/": page, "https://i/f/pip-24.0-py3-none-any.whl": wheel}
    saved = pipsource.download_pip_wheel("https://i/simple/", "3.9.1", pages.__getitem__, tmp_path)
    assert saved == tmp_path / "pip-24.0-py3-none-any.whl"
    assert saved.read_bytes() == wheel
    pages["https://i/f/pip-24.0-py3-none-any.whl"] = b"tampered"
    with pytest.raises(BootstrapError, match="does not match the index's sha256"):
        pipsource.download_pip_wheel("https://i/simple", "3.9.1", pages.__getitem__, tmp_path)


def test_file_index_is_read_from_disk(tmp_path: Path) -> None:
    (tmp_path / "simple" / "pip").mkdir(parents=True)
    (tmp_path / "files").mkdir()
    data = b"local wheel"
    (tmp_path / "files" / "pip-23.3-py3-none-any.whl").write_bytes(data)
    (tmp_path / "simple" / "pip" / "index.html").write_text(
        f'<a href="../../files/pip-23.3-py3-none-any.whl#sha256={hashlib.sha256(data).hexdigest()}">'
        "pip-23.3-py3-none-any.whl</a>")
    fetch = pipsource.make_fetcher({}, {})
    (tmp_path / "out").mkdir()
    saved = pipsource.download_pip_wheel(f"file://{tmp_path}/simple", "3.9.1", fetch, tmp_path / "out")
    assert saved.read_bytes() == data
