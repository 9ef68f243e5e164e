"""Printing for the command line: tables, colours, JSON. Standard library only (no click),
so the ``status`` fast path can use it."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence

TYPE_CHECKING = False  # no typing at run time: every command pays for its import
if TYPE_CHECKING:
    from typing import Any, Callable

    from siteboot.instances import LifecycleResult

_CODES = {"red": 31, "green": 32, "yellow": 33, "blue": 34, "magenta": 35, "cyan": 36}
# Labels of interleaved logs (`siteboot logs`), one per process in turn; red is for errors.
LABEL_COLORS = ("cyan", "yellow", "green", "magenta", "blue")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def color_wanted(stream: Any) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (https://no-color.org)."""
    return not os.environ.get("NO_COLOR") and bool(getattr(stream, "isatty", lambda: False)())


def styled(text: str, fg: str | None = None, bold: bool = False) -> str:
    codes = ([str(_CODES[fg])] if fg else []) + (["1"] if bold else [])
    return f"\x1b[{';'.join(codes)}m{text}\x1b[0m" if codes else text


def echo(text: str = "", err: bool = False, nl: bool = True) -> None:
    stream = sys.stderr if err else sys.stdout
    if not color_wanted(stream):
        text = _ANSI.sub("", text)
    stream.write(text + ("\n" if nl else ""))
    stream.flush()


def print_json(data: Any) -> None:
    echo(json.dumps(data, indent=2, sort_keys=False))


def print_outcomes(result: LifecycleResult) -> None:
    """What ``up``, ``down``, ``init`` and the like did to each instance, with its notes."""
    if result.sources:
        echo(f"using {result.sources}")
    for o in result.outcomes:
        color = {"started": "green", "stopped": "green", "updated": "green", "rotated": "green",
                 "rendered": "green", "skipped": "yellow",
                 "failed": "red"}.get(o.action)
        detail = f": {o.detail}" if o.detail else ""
        echo(f"{o.instance}: " + (styled(o.action, fg=color) if color else o.action) + detail)
        for note in o.notes:
            echo(f"  {note}")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
          colors: dict[int, Callable[[str], str | None]] | None = None) -> str:
    """Aligned columns; ``colors`` maps a column to a function choosing each cell's colour."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        padded = []
        for i, (cell, width) in enumerate(zip(row, widths)):
            text = cell.ljust(width)
            color = colors[i](cell) if colors and i in colors and n > 0 else None
            padded.append(styled(text, fg=color) if color else text)
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def error(message: str) -> None:
    echo(styled("error: ", fg="red", bold=True) + message, err=True)


_STATE_COLORS = {"RUNNING": "green", "STARTING": "yellow", "BACKOFF": "yellow"}


def _program_detail(p: Any) -> str:
    detail = f"uptime {p.uptime_s}s" if p.uptime_s is not None else (p.spawnerr or (
        f"exit {p.exitstatus}" if p.exitstatus is not None else ""))
    history = p.history
    notes = [detail] if detail else []
    if history is not None and p.crash_looping:
        notes.append(f"crash loop: {history.restarts} restarts in {history.window_s}s "
                     f"(more than {p.restart_limit})")
    health = getattr(p, "health", None)
    if health is not None and health.detail and p.state == "RUNNING":
        notes.append(f"{health.state}: {health.detail}")
    if history is not None and history.last_exit is not None:
        last = history.last_exit
        notes.append(f"last exit {last.ago_s}s ago: {last.reason}"
                     + ("" if last.expected else ", not expected"))
    return "; ".join(notes)


def log_tail_lines(tail: Any, indent: str = "    ") -> list[str]:
    """A failing process's last log lines (``control.LogTail``), indented under its row."""
    if tail is None:
        return []
    return [f"{indent}{tail.stream} | {line}" for line in tail.lines]


_HEALTH_COLORS = {"ready": "green", "not ready": "yellow"}


def _backoff(p: Any) -> str:
    """``3 tries, next in 4s``: the healer's restarts since the program last stayed up."""
    health = getattr(p, "health", None)
    if health is None or not (health.attempts or health.next_try_s is not None):
        return ""
    text = f"{health.attempts} {'try' if health.attempts == 1 else 'tries'}"
    return text + (f", next in {health.next_try_s}s" if health.next_try_s is not None else "")


def print_status(report: Any) -> None:
    """The status table, written at once (a row a write would be a thousand system calls for
    a big site)."""
    out: list[str] = []
    runner = getattr(report, "runner", None)
    out.append(styled(f"site {report.site}, env {report.env}", bold=True))
    for inst in report.instances:
        if inst.state == "elsewhere":  # another host's: listed, not asked
            out.append(f"{inst.name} ({inst.user}) on {inst.host}")
            continue
        head = f"{inst.name} ({inst.user}) {inst.state}"
        head += f", pid {inst.pid}" if inst.pid else ""
        out.append(styled(head, bold=True) + f"  {inst.url}")
        if inst.error:
            out.append(styled(f"  {inst.error}", fg="red"))
        counted = any(p.restarts is not None for p in inst.programs)
        watched = any(getattr(p, "health", None) is not None for p in inst.programs)
        rows = []
        for p in inst.programs:
            restarts = ([] if not counted else
                        ["" if p.restarts is None else str(p.restarts) + ("!" if p.crash_looping else "")])
            healing = [p.health_state, _backoff(p)] if watched else []
            rows.append(["  " + p.name, p.state, *healing, p.pid or "", *restarts,
                         _program_detail(p)])
        if rows:
            headers = ["  program", "state", *(["health", "backoff"] if watched else []), "pid",
                       *(["restarts"] if counted else []), ""]
            colors: dict[int, Callable[[str], str | None]] = {
                1: lambda state: _STATE_COLORS.get(state, "red")}
            if watched:
                colors[2] = _HEALTH_COLORS.get
            if counted:
                colors[headers.index("restarts")] = lambda cell: "yellow" if cell.endswith("!") else None
            head, *lines = table(headers, rows, colors).split("\n")
            out.append(head)
            for p, line in zip(inst.programs, lines):
                out.append(line)
                for text in log_tail_lines(p.log_tail):
                    out.append(text)
    for problem in getattr(report, "venv_problems", []):
        used = f" (used by {', '.join(problem.programs)})" if problem.programs else ""
        out.append(styled(f"venv {problem.venv}{used}: {problem.problem}", fg="yellow"))
    if runner is not None:
        pids = ", ".join(map(str, runner.pids))
        head = f"gitlab-runner ({runner.user}, {runner.mode}) {runner.state}"
        out.append(styled(head + (f", pid {pids}" if pids else ""), bold=True) + f"  {runner.config}")
        for line in [runner.detail, *runner.problems]:
            if line:
                out.append(styled(f"  {line}", fg=None if runner.exit_code == 0 else "red"))
    echo("\n".join(out))
