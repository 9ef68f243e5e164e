"""Fixtures of the unit layer."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import psutil
import pytest

from tests.helpers import start_fake_supervisord


@pytest.fixture
def spawn() -> Iterator[Any]:
    """Start processes that are killed and reaped whatever the test does."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        for child in _descendants(proc.pid):
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[Any, str]]]:
    """Start fake supervisords (``tests.helpers.start_fake_supervisord``); all stop afterwards."""
    running: list[Any] = []

    def start(where: Path | None, key: str = "s3cret",
              raw: tuple[int, bytes] | None = None) -> tuple[Any, str]:
        server, url = start_fake_supervisord(where, key, raw)
        running.append(server)
        return server, url

    yield start
    for server in running:
        server.shutdown()
        server.server_close()
        server.thread.join()
