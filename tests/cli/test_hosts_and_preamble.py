"""The CLI on sites with hosts and a login preamble: check, cron, render."""

from __future__ import annotations

import shlex
import textwrap
from pathlib import Path

from tests.helpers import invoke_cli

SITE = """
[site]
name = "h"
envs = ["dev"]
runtime_dir = "{base}/run"
state_dir = "{base}/state"
preamble = ["module load python/3.11"]

[instances.site]
host = "jaws.lbl.gov"
port = {{ dev = 40001 }}

[instances.central]
host = "central.lbl.gov"
port = {{ dev = 40001 }}

[programs.rest]
instance = "central"
command = "jaws-central rest"
"""


def write(base: Path) -> Path:
    path = base / "h.toml"
    path.write_text(textwrap.dedent(SITE).format(base=base))
    return path


def test_check_accepts_one_port_on_two_hosts(tmp_path):
    result = invoke_cli("check", "--site", write(tmp_path))
    assert result.exit_code == 0, result.stderr
    assert "checked 1 site file(s): ok" in result.stdout


def test_cron_revives_after_the_preamble(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(tmp_path)
    result = invoke_cli("cron", "--site", path)
    assert result.exit_code == 0, result.stderr
    boot = next(line for line in result.stdout.splitlines() if line.startswith("@reboot "))
    argv = shlex.split(boot.removeprefix("@reboot ").split(" >> ")[0])
    assert argv[:2] == ["/bin/bash", "-lc"]
    assert argv[2].startswith("eval 'module load python/3.11' && exec \"$@\"")
    assert argv[3] == "siteboot-preamble"
    start = argv.index("revive")
    assert argv[start:start + 4] == ["revive", "--all-envs", "--site", str(path)]


def test_render_previews_wrap_every_program_and_skip_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SITEBOOT_HOST", "jaws")
    path = write(tmp_path)
    out = tmp_path / "out"
    previews = invoke_cli("render", "--site", path, "--out", out)
    assert previews.exit_code == 0, previews.stderr
    conf = (out / "supervisord-h-central-dev.conf").read_text()
    assert "command = /bin/bash -lc 'eval '\"'\"'module load python/3.11'\"'\"' && exec" in conf
    assert conf.count("siteboot-preamble jaws-central rest") == 1
    in_place = invoke_cli("render", "--site", path)
    assert in_place.exit_code == 0, in_place.stderr
    assert "skipped central: on central.lbl.gov: render it there" in in_place.stdout
