"""The crontab block: built once, found again, replaced without touching anyone else's lines."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from siteboot import cron
from siteboot.cron import apply, block, markers, without_block

LOG = Path("/home/u/.local/state/siteboot/jaws-revive.log")


def test_the_block_revives_at_boot_and_every_five_minutes():
    lines = block("jaws", Path("/srv/deploy/sites/jaws.toml"), Path("/srv/deploy"), LOG)
    begin, end = markers("jaws")
    assert lines[0] == begin
    assert lines[-1] == end
    assert lines[1].startswith("@reboot ")
    assert lines[2].startswith("*/5 * * * * ")
    for line in lines[1:3]:
        assert "revive --all-envs --site /srv/deploy/sites/jaws.toml --root /srv/deploy" in line
        assert line.endswith(f">> {LOG} 2>&1")


def test_paths_are_shell_quoted_and_a_preamble_runs_in_a_login_shell():
    (_, boot, _, _) = block("s", Path("/a b/s.toml"), None, LOG, preamble=["module load python/3.11"])
    assert boot.startswith("@reboot /bin/bash -lc ")
    assert "eval '\"'\"'module load python/3.11'\"'\"' && exec \"$@\"" in boot
    command = shlex.split(boot.removeprefix("@reboot ").removesuffix(f" >> {LOG} 2>&1"))
    assert command[3:] == ["siteboot-preamble", *cron.launcher(), "revive", "--all-envs", "--site",
                           "/a b/s.toml"]
    assert boot.endswith(f" >> {LOG} 2>&1")  # login-shell noise and a failed preamble: logged


def test_a_percent_sign_is_escaped_for_cron():
    (_, boot, _, _) = block("s", Path("/s/s.toml"), None, LOG, preamble=["export STAMP=$(date +%s)"])
    assert "+\\%s" in boot
    assert "%" not in boot.replace("\\%", "")


def test_without_block_removes_only_that_sites_block():
    mine = block("jaws", Path("/s/jaws.toml"), None, LOG)
    other = block("demo", Path("/s/demo.toml"), None, LOG)
    crontab = ["MAILTO=ops@example.org", *mine, "0 3 * * * backup", *other]
    assert without_block(crontab, "jaws") == ["MAILTO=ops@example.org", "0 3 * * * backup", *other]
    assert without_block(crontab, "nope") == crontab


@pytest.fixture
def crontab(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The crontab as a list (unit layer: the real one is exercised with a real account)."""
    state: list[list[str]] = [["0 3 * * * backup"]]
    monkeypatch.setattr(cron, "read_crontab", lambda: list(state[0]))
    monkeypatch.setattr(cron, "write_crontab", lambda lines: state.__setitem__(0, list(lines)))
    return state


def test_install_is_idempotent_and_remove_leaves_the_rest(crontab: list[list[str]]):
    lines = block("jaws", Path("/s/jaws.toml"), None, LOG)
    assert apply("jaws", lines, install=False, remove=False, log=LOG).action == "printed"
    assert crontab[0] == ["0 3 * * * backup"]
    assert apply("jaws", lines, install=True, remove=False, log=LOG).action == "installed"
    assert crontab[0] == ["0 3 * * * backup", *lines]
    assert apply("jaws", lines, install=True, remove=False, log=LOG).action == "already installed"
    moved = block("jaws", Path("/elsewhere/jaws.toml"), None, LOG)
    assert apply("jaws", moved, install=True, remove=False, log=LOG).action == "installed"
    assert crontab[0] == ["0 3 * * * backup", *moved]  # replaced, not added twice
    assert apply("jaws", moved, install=False, remove=True, log=LOG).action == "removed"
    assert crontab[0] == ["0 3 * * * backup"]
    assert apply("jaws", moved, install=False, remove=True, log=LOG).action == "not installed"
