"""diff, releases and rollback through the CLI, before anything was deployed."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.helpers import invoke_cli, own_site_text


@pytest.fixture
def site(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, short_dir: Path) -> Path:
    for name in ("SITEBOOT_SITE", "SITEBOOT_ENV", "SITEBOOT_ROOT", "SITEBOOT_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "t.toml"
    path.write_text(textwrap.dedent(own_site_text(short_dir)))
    return path


def test_diff_of_an_instance_that_does_not_run(site):
    result = invoke_cli("diff", "--site", site)
    assert result.exit_code == 1
    assert "main: not running" in result.stdout
    assert "web added" in result.stdout
    data = json.loads(invoke_cli("diff", "--site", site, "--json").stdout)
    assert data["same"] is False
    assert data["instances"][0]["changes"]["programs"] == [
        {"program": "web", "change": "added", "keys": [], "restarts": True}]


def test_releases_and_rollback_before_any_deploy(site):
    result = invoke_cli("releases", "--site", site)
    assert result.exit_code == 0
    assert result.stdout.strip() == "no releases yet"
    result = invoke_cli("rollback", "--site", site)
    assert result.exit_code == 2
    assert "no previous release of t dev to roll back to" in result.stderr
    assert "siteboot releases" in result.stderr
