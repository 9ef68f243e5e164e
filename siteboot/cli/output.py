"""Printing for the command line: tables, colours, JSON. Standard library only (no click),
so the ``status`` fast path can use it."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, Callable

_CODES = {"red": 31, "green": 32, "yellow": 33}
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


def print_status(report: Any) -> None:
    for inst in report.instances:
        head = f"{inst.name} ({inst.user}) {inst.state}"
        head += f", pid {inst.pid}" if inst.pid else ""
        echo(styled(head, bold=True) + f"  {inst.url}")
        if inst.error:
            echo(styled(f"  {inst.error}", fg="red"))
        rows = []
        for p in inst.programs:
            detail = f"uptime {p.uptime_s}s" if p.uptime_s is not None else (p.spawnerr or (
                f"exit {p.exitstatus}" if p.exitstatus is not None else ""))
            rows.append(["  " + p.name, p.state, p.pid or "", detail])
        if rows:
            echo(table(["  program", "state", "pid", ""], rows,
                       {1: lambda state: _STATE_COLORS.get(state, "red")}))
