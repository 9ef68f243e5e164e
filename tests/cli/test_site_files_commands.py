"""`check` and `render` on a site with per-env values, vars, files, secrets and dirs, through
click as an operator runs them."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.helpers import invoke_cli

SECRET = "hunter2-never-printed"


@pytest.fixture
def root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, short_dir: Path) -> Path:
    for name in ("SITEBOOT_SITE", "SITEBOOT_ENV", "SITEBOOT_ROOT", "SITEBOOT_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("HOME", str(short_dir))
    (tmp_path / "sites").mkdir()
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "app.j2").write_text("level={{ vars.level }} pw={{ secret('PW') }}\n")
    (tmp_path / "sites" / "t.toml").write_text(textwrap.dedent(f"""
        [site]
        envs = ["dev", "prod"]
        runtime_dir = "{short_dir}/rt-{{env}}"
        state_dir = "{short_dir}/st-{{env}}"

        [vars]
        level = {{ dev = "DEBUG", prod = "INFO" }}

        [instances.main]
        port = {{ dev = 40001, prod = 40002 }}

        [dirs.data]
        path = "{short_dir}/data-{{env}}"
        mode = "0750"
        instance = "main"

        [files.app]
        template = "templates/app.j2"
        path = "{{dir:data}}/app.conf"
        instance = "main"

        [programs.web]
        instance = "main"
        command = "serve --port {{port}}"
        port = {{ dev = 41001, prod = 41002 }}
        files = ["app"]
        environment = {{ PW = "{{secret:PW}}", LEVEL = "{{var:level}}" }}
        """))
    return tmp_path


def test_render_previews_and_in_place(root: Path, short_dir: Path, monkeypatch):
    out = root / "out"
    preview = invoke_cli("render", "--root", root, "--site", "t", "--env", "prod", "--out", out)
    assert preview.exit_code == 0, preview.stderr
    assert f"wrote file app: {out}/files-t-main-prod/app  (preview: {{secret:NAME}} " \
           "placeholders)" in preview.stdout
    assert (out / "files-t-main-prod" / "app").read_text() == "level=INFO pw={secret:PW}\n"

    missing = invoke_cli("render", "--root", root, "--site", "t")
    assert missing.exit_code == 2
    assert "secret PW is not set" in missing.stderr
    assert "SITEBOOT_SECRET_PW" in missing.stderr
    assert not (short_dir / "data-dev").exists()

    monkeypatch.setenv("SITEBOOT_SECRET_PW", SECRET)
    done = invoke_cli("render", "--root", root, "--site", "t", "--json")
    assert done.exit_code == 0, done.stderr
    data = json.loads(done.stdout)
    assert [r["file"] for r in data["rendered"]] == [None, "app"]
    assert data["notes"][0].startswith(f"main: dir data: created {short_dir}/data-dev (mode 0750")
    assert (short_dir / "data-dev" / "app.conf").read_text() == f"level=DEBUG pw={SECRET}\n"
    assert SECRET not in done.stdout + done.stderr


def test_check_names_per_env_and_placeholder_problems_with_lines(root: Path):
    site = root / "sites" / "t.toml"
    site.write_text(site.read_text().replace('level = { dev = "DEBUG", prod = "INFO" }',
                                             'level = { dev = "DEBUG", prd = "INFO" }')
                    .replace('"serve --port {port}"', '"serve --port {port:wbe} {secret:PW}"'))
    result = invoke_cli("check", "--root", root, "--site", "t")
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    text = site.read_text().splitlines()
    level = next(i for i, line in enumerate(text, 1) if line.startswith("level ="))
    command = next(i for i, line in enumerate(text, 1) if line.startswith("command ="))
    assert f"{site}:{level}: [vars] level: 'level.prd': 'prd' is not an env of this site (did you " \
           "mean 'prod'?)" in lines
    assert f"{site}:{level}: [vars] level: 'level' has no value for env 'prod' (add it, or a " \
           "'default' for the envs not named)" in lines
    assert any(line.startswith(f"{site}:{command}: [programs.web] command: 'command' uses {{port:wbe}}, "
                               "but there is no program 'wbe' (did you mean 'web'?)")
               for line in lines), lines
    assert any("'command' cannot use {secret:PW}" in line for line in lines)
