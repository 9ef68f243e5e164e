"""Which site a command uses without --site (issue 9): the site root's own (the one
`sites/default` names, or its only site), else the shipped `local`; and a --site path that
does not exist points at the file of that name under sites/."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from siteboot.errors import EXIT_USAGE, UsageError
from siteboot.resources import find_root, resolve_site_path, shipped_sites
from tests.helpers import MINIMAL_SITE, invoke_cli


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project of the invoker's own (0755 dirs, 0644 files): a trusted site root."""
    for name in ("SITEBOOT_SITE", "SITEBOOT_ENV", "SITEBOOT_ROOT", "SITEBOOT_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = tmp_path / "project"
    (root / "sites").mkdir(parents=True)
    (root / "src").mkdir()
    os.chmod(tmp_path, 0o755)
    return root


def add_site(root: Path, name: str, port: int = 40001) -> Path:
    path = root / "sites" / f"{name}.toml"
    path.write_text(textwrap.dedent(MINIMAL_SITE).replace('name = "t"', f'name = "{name}"')
                    .replace("40001", str(port)))
    os.chmod(path, 0o644)
    return path


def declare(root: Path, text: str) -> Path:
    path = root / "sites" / "default"
    path.write_text(text)
    os.chmod(path, 0o644)
    return path


def test_the_root_s_only_site(project):
    only = add_site(project, "myapp")
    assert resolve_site_path(None, project) == only


def test_a_declared_default_among_several(project):
    add_site(project, "a")
    b = add_site(project, "b", 40011)
    declare(project, "# the one `siteboot up` starts\nb\n")
    assert resolve_site_path(None, project) == b
    declare(project, "b.toml\n")
    assert resolve_site_path(None, project) == b
    assert resolve_site_path("a", project) == project / "sites" / "a.toml"  # --site wins


def test_several_and_none_declared_is_the_shipped_local(project):
    add_site(project, "a")
    add_site(project, "b", 40011)
    assert resolve_site_path(None, project) == shipped_sites() / "local.toml"
    assert resolve_site_path(None, None) == shipped_sites() / "local.toml"


@pytest.mark.parametrize(("text", "message"), [
    ("c\n", "names site 'c', but there is no"),
    ("../../etc/passwd\n", "must hold one site name"),
    ("a\nb\n", "must hold one site name"),
    ("# nothing\n\n", r"must hold one site name \(a line like `myapp`\), not nothing"),
])
def test_a_default_that_names_no_site(project, text, message):
    add_site(project, "a")
    named = declare(project, text)
    with pytest.raises(UsageError, match=message) as info:
        resolve_site_path(None, project)
    assert info.value.exit_code == EXIT_USAGE
    assert str(named) in info.value.message


def test_a_default_anyone_could_write_is_never_read(project):
    add_site(project, "a")
    add_site(project, "b", 40011)
    os.chmod(declare(project, "b\n"), 0o666)
    notes: list[str] = []
    assert find_root(cwd=project / "src", notice=notes.append) != project
    assert "sites/default is writable by everyone" in notes[0]


def test_a_site_path_that_is_not_there_points_to_sites(project, monkeypatch):
    add_site(project, "myapp")
    monkeypatch.chdir(project / "src")
    with pytest.raises(UsageError, match=r"site file myapp\.toml does not exist") as info:
        resolve_site_path("myapp.toml", project)
    assert info.value.hint == f"did you mean --site myapp ({project / 'sites' / 'myapp.toml'})?"
    with pytest.raises(UsageError) as info:
        resolve_site_path("nothing.toml", project)
    assert info.value.hint is None


def test_commands_run_in_a_project_use_its_site(project, monkeypatch):
    add_site(project, "myapp", 40021)
    os.chmod(project, 0o755)
    for folder in (project / "sites", project / "src"):
        os.chmod(folder, 0o755)
    monkeypatch.chdir(project / "src")
    result = invoke_cli("ports", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["site"] == "myapp"
    monkeypatch.setenv("SITEBOOT_SITE", "local")
    assert json.loads(invoke_cli("ports", "--json").stdout)["site"] == "local"
