"""Fixtures of the unit layer."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import psutil
import pytest


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
