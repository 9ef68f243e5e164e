"""The account's crontab lines that keep a site alive: ``@reboot`` and every five minutes,
``siteboot revive`` (cron runs with almost no environment, and no login shell).

siteboot owns one block per site in the crontab, between two marker comments; everything else
in the crontab is left exactly as it is. Installing twice changes nothing.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from siteboot.errors import SitebootError
from siteboot.login import wrap
from siteboot.proc import run_command, run_with_input

CRONTAB = "crontab"
EVERY = "*/5 * * * *"


@dataclass(frozen=True)
class CronResult:
    site: str
    lines: list[str]  # the block siteboot wants in the crontab
    action: str  # "printed" | "installed" | "already installed" | "removed" | "not installed"
    log: Path
    exit_code = 0

    def as_json(self) -> dict[str, Any]:
        return {"site": self.site, "action": self.action, "lines": self.lines, "log": str(self.log)}


def markers(site: str) -> tuple[str, str]:
    return f"# >>> siteboot {site}: managed by `siteboot cron`", f"# <<< siteboot {site}"


def launcher() -> list[str]:
    """How cron runs siteboot: the tool venv's launcher when there is one, else this python."""
    candidate = Path(sys.prefix) / "bin" / "siteboot"
    if candidate.is_file():
        return [str(candidate)]
    return [sys.executable, "-I", "-m", "siteboot"]


def block(site: str, site_path: Path, root: Path | None, log: Path,
          preamble: Sequence[str] = ()) -> list[str]:
    """The crontab block for ``site``: revive every env it has run, at boot and every 5 minutes.

    ``preamble``: the site's login environment (``module load ...``), which cron does not have;
    its output and failures go to the log too."""
    argv = [*launcher(), "revive", "--all-envs", "--site", str(site_path)]
    if root is not None:
        argv += ["--root", str(root)]
    command = f"{shlex.join(wrap(preamble, argv))} >> {shlex.quote(str(log))} 2>&1"
    command = command.replace("%", "\\%")  # cron turns an unescaped % into a line break
    begin, end = markers(site)
    return [begin, f"@reboot {command}", f"{EVERY} {command}", end]


def without_block(lines: list[str], site: str) -> list[str]:
    """``lines`` minus siteboot's block for ``site`` (and nothing else)."""
    begin, end = markers(site)
    kept, inside = [], False
    for line in lines:
        if line == begin:
            inside = True
        elif inside and line == end:
            inside = False
        elif not inside:
            kept.append(line)
    return kept


def read_crontab() -> list[str]:
    result = run_command([CRONTAB, "-l"])
    if result.returncode == 127:
        raise SitebootError(f"cannot run `{CRONTAB}`: {result.output.strip()}",
                            "install cron (Debian: apt install cron), or add the lines by hand")
    if result.returncode != 0:
        if "no crontab" in result.output.lower():
            return []
        raise SitebootError(f"`{CRONTAB} -l` failed: {result.output.strip()}")
    return result.output.splitlines()


def write_crontab(lines: list[str]) -> None:
    text = "\n".join(lines).strip("\n") + "\n" if lines else ""
    result = run_with_input([CRONTAB, "-"], text)
    if result.returncode != 0:
        raise SitebootError(f"`{CRONTAB} -` refused the new crontab: {result.output.strip()}")


def apply(site: str, wanted: list[str], install: bool, remove: bool, log: Path) -> CronResult:
    if not (install or remove):
        return CronResult(site, wanted, "printed", log)
    current = read_crontab()
    others = without_block(current, site)
    if remove:
        if others == current:
            return CronResult(site, wanted, "not installed", log)
        write_crontab(others)
        return CronResult(site, wanted, "removed", log)
    if current == [*others, *wanted] or _contains(current, wanted):
        return CronResult(site, wanted, "already installed", log)
    write_crontab([*others, *wanted])
    return CronResult(site, wanted, "installed", log)


def _contains(lines: list[str], wanted: list[str]) -> bool:
    size = len(wanted)
    return any(lines[i:i + size] == wanted for i in range(len(lines) - size + 1))
