"""siteboot/bootstrap/locate.py: the checkout, the tool venv, the wheelhouse, the re-exec."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from siteboot.bootstrap import locate
from tests.unit.bootstrap_fakes import make_checkout, make_isolated_venv


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    return make_checkout(tmp_path)


def test_find_checkout_needs_our_setup_cfg(tmp_path: Path, checkout: Path) -> None:
    assert locate.find_checkout(checkout / "siteboot") == checkout
    (tmp_path / "site-packages" / "siteboot").mkdir(parents=True)
    assert locate.find_checkout(tmp_path / "site-packages" / "siteboot") is None
    (checkout / "setup.cfg").write_text("[metadata]\nname = other\n")
    assert locate.find_checkout(checkout / "siteboot") is None


@pytest.mark.parametrize(("text", "name"), [
    ("[metadata]\nname = siteboot\n", "siteboot"),
    ("[metadata]\nversion = 1\nname=siteboot\n[options]\nname = x\n", "siteboot"),
    ("[options]\nname = siteboot\n", ""),  # not the metadata section
    ("[metadata]\ndescription = a\n  name = siteboot\n", ""),  # a continuation line
    ("[metadata]\nnamespace = siteboot\n", ""),
])
def test_setup_cfg_name_is_read_as_configparser_would(tmp_path: Path, text: str, name: str) -> None:
    path = tmp_path / "setup.cfg"
    path.write_text(text)
    parsed = locate.read_setup_cfg(path).get("metadata", "name", fallback="")
    assert parsed == name
    assert locate._metadata_name(text) == name


def test_tool_venv_path(tmp_path: Path) -> None:
    assert locate.tool_venv_path(tmp_path, {}) == tmp_path / ".venv"
    assert locate.tool_venv_path(tmp_path, {"SITEBOOT_VENV": "/x/v"}) == Path("/x/v")


@pytest.mark.parametrize(("argv", "env", "expected"), [
    (["init", "--wheelhouse", "/w"], {}, Path("/w")),
    (["init", "--wheelhouse=rel"], {}, Path(os.path.abspath("rel"))),
    (["init"], {"SITEBOOT_WHEELHOUSE": "/e"}, Path("/e")),
    (["init", "--wheelhouse", "/w"], {"SITEBOOT_WHEELHOUSE": "/e"}, Path("/w")),
    (["init", "--", "--wheelhouse", "/w"], {}, None),
    (["init"], {}, None),
])
def test_wheelhouse_from(argv: list[str], env: dict[str, str], expected: Path | None) -> None:
    assert locate.wheelhouse_from(argv, env) == expected


def test_reexec_ignores_a_siteboot_package_in_the_current_directory(tmp_path: Path) -> None:
    venv, planted = make_isolated_venv(tmp_path)
    code = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from siteboot.bootstrap import locate
        os.chdir({str(planted)!r})
        os.environ["PYTHONPATH"] = {str(planted)!r}
        locate.reexec(Path({str(venv / "bin" / "python")!r}), ["status", "--json"])
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=str(venv), capture_output=True,
                         text=True, check=True).stdout
    assert out == "checkout 1 1 ['status', '--json']\n"
