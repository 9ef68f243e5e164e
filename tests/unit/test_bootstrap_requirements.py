"""siteboot/bootstrap/requirements.py: install_requires, specifiers and markers."""

from __future__ import annotations

from pathlib import Path

import pytest

from siteboot.bootstrap import requirements
from siteboot.errors import BootstrapError
from tests.unit.bootstrap_fakes import REQUIRES, make_checkout


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    return make_checkout(tmp_path)


def test_requirements_are_read_as_written(checkout: Path) -> None:
    assert requirements.read_requirements(checkout / "setup.cfg") == REQUIRES


def test_missing_setup_cfg_is_a_bootstrap_error(tmp_path: Path) -> None:
    with pytest.raises(BootstrapError, match="cannot read install_requires"):
        requirements.read_requirements(tmp_path / "setup.cfg")


@pytest.mark.parametrize(("spec", "python", "ok"), [
    (None, "3.9.1", True),
    (">=3.9", "3.9.0", True),
    (">=3.10", "3.9.18", False),
    (">=2.6,!=3.0.*,!=3.1.*,!=3.2.*", "3.1.4", False),
    (">=2.6,!=3.0.*,!=3.1.*,!=3.2.*", "3.9.4", True),
    ("<3.11", "3.11.0", False),
    ("~=3.8", "3.12.1", True),
    ("==3.9.*", "3.10.0", False),
    ("nonsense", "3.9.1", True),
])
def test_python_satisfies(spec: str | None, python: str, ok: bool) -> None:
    assert requirements.python_satisfies(spec, python) is ok


def test_required_distributions_skip_markers_that_do_not_apply() -> None:
    assert requirements.required_distributions(REQUIRES, "3.11.2") == ["supervisor", "click"]
    assert requirements.required_distributions(REQUIRES, "3.9.18") == ["supervisor", "click", "tomli"]
    assert requirements.required_distributions(['x; sys_platform == "linux"'], "3.9.1") == ["x"]
    assert requirements.distributions_installed(["pytest"])
    assert not requirements.distributions_installed(["siteboot-no-such-package-xyz"])
