"""benchmarks/run.py runs end to end (its figures are not asserted: timing is the machine's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import REPO, processes_under

pytestmark = pytest.mark.slow


def test_benchmark_rows_run_and_report_ratios(tmp_path):
    out = tmp_path / "results.json"
    short = Path(tempfile.mkdtemp(prefix="sbt-bench-", dir="/tmp"))
    env = dict(os.environ, SITEBOOT_VENV=str(tmp_path / "tool-venv"))
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--runs", "2",
         "--rows", "status,status-rss,big-check-render", "--out", str(out), "--tmp", str(short)],
        env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode in (0, 1), done.stderr  # 1: a target missed on this machine
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"status", "status-rss", "big-check-render"}
    for row in rows.values():
        assert row["value"] > 0
        assert row["target"] > 0
        assert isinstance(row["holds"], bool)
    assert rows["status"]["siteboot"]["n"] == 2
    assert "| status |" in done.stdout
    assert not processes_under(short)  # it stopped what it started
    assert not list(short.iterdir())  # and removed its sites
    short.rmdir()
