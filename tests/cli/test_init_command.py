"""`siteboot init` through click: `--no-start` (a CI build stage) and what it shows meanwhile."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from siteboot.progress import SILENT, Lines
from tests.helpers import invoke_cli, own_site_text


@pytest.fixture
def site(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, short_dir: Path) -> Path:
    for name in ("SITEBOOT_SITE", "SITEBOOT_ENV", "SITEBOOT_ROOT", "SITEBOOT_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = tmp_path / "t.toml"
    path.write_text(textwrap.dedent(own_site_text(short_dir)))
    return path


@pytest.fixture
def venv_builds(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The progress reporter each venv build was given (nothing is built)."""
    given: list[Any] = []

    def ensure_venvs(plan: Any, wheelhouse: Any = None, progress: Any = None,
                     root: Any = None) -> list[Any]:
        given.append(progress)
        return []

    def no_up(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("--no-start must start nothing")

    monkeypatch.setattr("siteboot.venvs.ensure_venvs", ensure_venvs)
    monkeypatch.setattr("siteboot.instances.up", no_up)
    return given


def test_no_start_builds_and_renders_and_starts_nothing(site, short_dir, venv_builds):
    result = invoke_cli("init", "--site", site, "--no-start")
    assert result.exit_code == 0, result.stderr
    conf = short_dir / "rt-dev" / "main" / "supervisord-main.conf"
    assert f"main: rendered: {conf}" in result.stdout
    assert result.stdout.rstrip().endswith("nothing started (--no-start)")
    assert conf.is_file()
    assert not (conf.parent / "supervisord.pid").exists()
    assert type(venv_builds[0]) is Lines  # not a terminal: the notes only

    data = json.loads(invoke_cli("init", "--site", site, "--no-start", "--json").stdout)
    assert data["status"] is None
    assert [(i["instance"], i["action"], i["detail"]) for i in data["instances"]] == [
        ("main", "rendered", str(conf))]
    assert venv_builds[1] is SILENT  # --json: nothing on stderr either


def test_no_start_skips_instances_of_others(site, venv_builds, short_dir):
    site.write_text(textwrap.dedent(own_site_text(short_dir)) + textwrap.dedent("""
        [instances.theirs]
        user = "nobody"
        port = { dev = 40011, staging = 40012, prod = 40013 }
        """))
    result = invoke_cli("init", "--site", site, "--no-start")
    assert result.exit_code == 0, result.stderr
    assert "theirs: skipped: owned by nobody" in result.stdout


def test_no_start_writes_the_files_and_dirs_too(site, short_dir, venv_builds, tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "app.j2").write_text("level=debug\n")
    site.write_text(textwrap.dedent(own_site_text(short_dir, extra=f"""
        files = ["app"]

        [dirs.data]
        path = "{short_dir}/data"
        instance = "main"

        [files.app]
        template = "templates/app.j2"
        path = "{{dir:data}}/app.conf"
        instance = "main"
        """)))
    result = invoke_cli("init", "--site", site, "--root", tmp_path, "--no-start", "--json")
    assert result.exit_code == 0, result.stderr
    [main] = json.loads(result.stdout)["instances"]
    assert main["action"] == "rendered"
    assert main["notes"][0] == f"file app: {short_dir}/data/app.conf"
    assert main["notes"][1].startswith(f"dir data: created {short_dir}/data")
    assert (short_dir / "data" / "app.conf").read_text() == "level=debug\n"
