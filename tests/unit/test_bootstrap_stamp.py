"""siteboot/bootstrap/stamp.py: the version, the stamp and whether the tool venv is current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from siteboot.bootstrap import locate, requirements, stamp
from tests.unit.bootstrap_fakes import REQUIRES, FakeRunner, fake_make_venv, make, make_checkout


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    return make_checkout(tmp_path)


def test_metadata_version_from_attr_and_literal(checkout: Path) -> None:
    assert stamp.read_metadata_version(checkout) == "1.2.3"
    (checkout / "setup.cfg").write_text("[metadata]\nversion = 4.5\n")
    assert stamp.read_metadata_version(checkout) == "4.5"


def test_the_real_checkout_parses() -> None:
    checkout = locate.find_checkout()
    assert checkout is not None
    requires = requirements.read_requirements(checkout / "setup.cfg")
    assert any(r.startswith("supervisor") for r in requires)
    from siteboot import __version__

    assert stamp.read_metadata_version(checkout) == __version__


def test_stamp_covers_every_input() -> None:
    base = stamp.compute_stamp(REQUIRES, "1.0", "3.9.18", Path("/a"))
    assert base == stamp.compute_stamp(list(REQUIRES), "1.0", "3.9.18", Path("/a"))
    assert len({base,
                stamp.compute_stamp(REQUIRES[:-1], "1.0", "3.9.18", Path("/a")),
                stamp.compute_stamp(REQUIRES, "1.1", "3.9.18", Path("/a")),
                stamp.compute_stamp(REQUIRES, "1.0", "3.9.19", Path("/a")),
                stamp.compute_stamp(REQUIRES, "1.0", "3.9.18", Path("/b"))}) == 5


def test_stamp_matches_only_with_a_working_python_of_the_same_version(checkout: Path) -> None:
    venv = checkout / ".venv"
    fake_make_venv(venv, ".venv")
    assert not make(checkout, FakeRunner()).is_current(run_python=True)  # no stamp yet
    stamp.write_stamp(venv, REQUIRES, "1.2.3", "3.9.18", checkout)
    assert json.loads((venv / locate.STAMP_NAME).read_text())["python"] == "3.9.18"
    assert make(checkout, FakeRunner("3.9.18")).is_current(run_python=True)
    assert not make(checkout, FakeRunner("3.9.19")).is_current(run_python=True)
    assert not make(checkout, FakeRunner(None)).is_current(run_python=True)
    (venv / "bin" / "python").unlink()
    assert not make(checkout, FakeRunner("3.9.18")).is_current(run_python=True)


def test_is_current_reads_pyvenv_cfg_and_runs_nothing(checkout: Path, tmp_path: Path) -> None:
    venv = checkout / ".venv"
    fake_make_venv(venv, ".venv")
    stamp.write_stamp(venv, REQUIRES, "1.2.3", "3.9.18", checkout)
    runner = FakeRunner("3.9.19")  # what the python would say if it were asked
    builder = make(checkout, runner)

    def is_current() -> bool:
        """The builder's answer, which stage 0's (no Bootstrapper, no pip config) always equals."""
        answer = builder.is_current()
        assert stamp.is_current(checkout, venv) is answer
        return answer

    assert is_current()
    cfg = venv / "pyvenv.cfg"
    cfg.write_text("home = /usr/bin\nversion = 3.9.19\n")
    assert not is_current()
    cfg.write_text("home = /usr/bin\nversion_info = 3.9.18.final.0\n")  # virtualenv's form
    assert is_current()
    cfg.write_text("home = /usr/bin\n")
    assert not is_current()
    cfg.write_text("home = /usr/bin\nversion = 3.9.18\n")
    (venv / "bin" / "python").chmod(0o644)
    assert not is_current()  # not executable
    (venv / "bin" / "python").unlink()
    (venv / "bin" / "python").symlink_to(tmp_path / "gone" / "python3.9")
    assert not is_current()  # dangling: the base python was removed
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "python3.9").write_text("")
    (tmp_path / "gone" / "python3.9").chmod(0o755)
    assert is_current()
    (tmp_path / "gone" / "python3.11").write_text("")
    (tmp_path / "gone" / "python3.11").chmod(0o755)
    (venv / "bin" / "python").unlink()
    (venv / "bin" / "python").symlink_to(tmp_path / "gone" / "python3.11")
    assert not is_current()  # python3 now is another minor version
    assert runner.calls == []


@pytest.mark.parametrize(("text", "version"), [
    ("home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.9.18\n", "3.9.18"),
    ("home = /usr/bin\nversion_info = 3.12.3.final.0\nvirtualenv = 20.25.0\n", "3.12.3"),
    ("home = /usr/bin\nversion_info = 3.12.3\n", "3.12.3"),
    ("version = 3.13.0rc2\n", "3.13.0"),
    ("home = /usr/bin\n", None),
    ("version = 3.9\n", None),
])
def test_venv_cfg_version(tmp_path: Path, text: str, version: str | None) -> None:
    (tmp_path / "pyvenv.cfg").write_text(text)
    assert stamp.venv_cfg_version(tmp_path) == version
    assert stamp.venv_cfg_version(tmp_path / "missing") is None
