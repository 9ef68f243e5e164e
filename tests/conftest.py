"""Shared fixtures: short temp dirs, site files in tmp dirs. Helpers live in tests/helpers.py."""

from __future__ import annotations

import shutil
import signal
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from siteboot.hints import remember
from tests.helpers import MINIMAL_SITE


def pytest_configure(config: pytest.Config) -> None:
    """Tests stop followers with SIGINT (Ctrl-C). Started in the background by a shell (`cmd &`),
    pytest inherits SIGINT ignored and so would every process it starts, which would then never
    see it: a handled signal is reset to its default in children."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def no_remembered_invocation() -> Iterator[None]:
    """Every test starts as if the command line gave no site options (a CliRunner test records
    its own; hints elsewhere must not carry them)."""
    remember([], {})
    yield
    remember([], {})


@pytest.fixture(autouse=True)
def private_template_cache(tmp_path_factory: pytest.TempPathFactory,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiled templates go to a temp dir of the test run, not to the real home's cache."""
    from siteboot import templatecache

    folder = tmp_path_factory.getbasetemp() / "template-cache" / "templates"
    monkeypatch.setattr(templatecache, "TEMPLATE_CACHE_DIR", str(folder))


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short path under /tmp: unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="sb-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def write_site(tmp_path: Path) -> Callable[..., Path]:
    """Write a site file (dedented) and return its path."""

    def write(text: str = MINIMAL_SITE, name: str = "t") -> Path:
        folder = tmp_path / "sites"
        folder.mkdir(exist_ok=True)
        path = folder / f"{name}.toml"
        path.write_text(textwrap.dedent(text))
        return path

    return write
