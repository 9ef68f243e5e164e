"""What differs between two configs of one supervisord, per program and for the server.

Pure: text in, differences out. ``up``, ``diff`` and ``deploy`` compare the config whose programs
a supervisord runs (the copy kept at its last start or apply) with what the checkout renders
now; every program is a group of its own, so a changed program is removed and added again
alone, and the others keep running.

Keys are the config's own option names (``command``, ``environment``, ``startsecs``, ...);
``content NAME`` keys are the digests ``siteboot.content`` renders as comments into a program's
section (a venv build, a file): supervisord never sees them, siteboot restarts on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CONTENT_PREFIX = "; content "
# supervisord's process groups: programs, and event listeners (the healer), each its own group
PROCESS_PREFIXES = ("program:", "eventlistener:")
# supervisord reads these only when a program is added, and siteboot starts and stops programs
# to match them anyway: a change to them alone restarts nothing.
NO_RESTART_KEYS = frozenset({"autostart"})
UNKNOWN = "(not applied by siteboot: unknown)"


@dataclass(frozen=True)
class ProgramChange:
    program: str
    change: str  # "added", "removed" or "changed"
    keys: tuple[str, ...] = ()

    @property
    def restarts(self) -> bool:
        """Applying it restarts the program (or starts or stops it: added, removed)."""
        return self.change != "changed" or any(k not in NO_RESTART_KEYS for k in self.keys)

    def describe(self) -> str:
        if self.change == "changed":
            return f"{self.program} changed ({', '.join(self.keys)})"
        return f"{self.program} {self.change}"

    def as_json(self) -> dict[str, Any]:
        return {"program": self.program, "change": self.change, "keys": list(self.keys),
                "restarts": self.restarts}


@dataclass(frozen=True)
class ConfigChanges:
    programs: list[ProgramChange] = field(default_factory=list)
    server: list[str] = field(default_factory=list)  # "[section] key" of the server part

    @property
    def empty(self) -> bool:
        return not self.programs and not self.server

    def named(self, change: str) -> list[str]:
        return [c.program for c in self.programs if c.change == change]

    def to_restart(self) -> list[str]:
        """Programs present before and after whose change needs a restart."""
        return [c.program for c in self.programs if c.change == "changed" and c.restarts]

    def as_json(self) -> dict[str, Any]:
        return {"programs": [c.as_json() for c in self.programs], "server": self.server}


def sections(text: str) -> dict[str, dict[str, str]]:
    """``[section]`` -> {key: value} of a rendered config; comments are dropped except the
    ``; content NAME = DIGEST`` lines of a program section (key ``content NAME``)."""
    found: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    last_key = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            current = found.setdefault(stripped[1:-1].strip(), {})
            last_key = ""
        elif current is None or not stripped:
            continue
        elif stripped.startswith(CONTENT_PREFIX):
            name, _, digest = stripped[len(CONTENT_PREFIX):].partition("=")
            current[f"content {name.strip()}"] = digest.strip()
        elif stripped.startswith((";", "#")):
            continue
        elif line[:1].isspace() and last_key:  # an INI continuation line
            current[last_key] += "\n" + stripped
        elif "=" in stripped:
            key, _, value = stripped.partition("=")
            last_key = key.strip()
            current[last_key] = value.strip()
    return found


def programs_of(text: str) -> dict[str, dict[str, str]]:
    """group name -> options of every program and event listener (each a group of its own)."""
    return {name.partition(":")[2]: options for name, options in sections(text).items()
            if name.startswith(PROCESS_PREFIXES)}


def server_of(text: str) -> dict[str, dict[str, str]]:
    """Everything but programs and listeners (and groups, which older siteboots rendered)."""
    return {name: options for name, options in sections(text).items()
            if not name.startswith((*PROCESS_PREFIXES, "group:"))}


def _differing(old: dict[str, str], new: dict[str, str],
               names: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The keys whose values differ (named through ``names``: never the values, which may be
    secrets), each once, in the order of ``new``."""
    keys = list(new) + [k for k in old if k not in new]
    found = [(names or {}).get(k, k) for k in keys if old.get(k) != new.get(k)]
    return tuple(dict.fromkeys(found))


def compare_programs(loaded: str, rendered: str, running: set[str] | None = None,
                     names: Mapping[str, str] | None = None) -> list[ProgramChange]:
    """Programs added, removed and changed (with the keys) from ``loaded`` to ``rendered``.

    ``running``: the programs supervisord has in use, when known; it decides what is added and
    removed, and a program it runs that ``loaded`` does not describe counts as changed.
    ``names``: supervisord option -> the site file's key (``render.SITE_KEY_OF_OPTION``).
    """
    old, new = programs_of(loaded), programs_of(rendered)
    present = set(old) if running is None else running
    changes = [ProgramChange(name, "removed") for name in sorted(present - set(new))]
    for name, options in new.items():
        if name not in present:
            changes.append(ProgramChange(name, "added"))
        elif name not in old:
            changes.append(ProgramChange(name, "changed", (UNKNOWN,)))
        else:
            keys = _differing(old[name], options, names)
            if keys:
                changes.append(ProgramChange(name, "changed", keys))
    return changes


def compare_server(started: str, rendered: str) -> list[str]:
    """``[section] key`` of every server setting that differs (they need a new supervisord)."""
    old, new = server_of(started), server_of(rendered)
    differing = []
    for name in list(new) + [n for n in old if n not in new]:
        differing += [f"[{name}] {key}" for key in _differing(old.get(name, {}), new.get(name, {}))]
    return differing


def compare(started: str, applied: str, rendered: str, running: set[str] | None = None,
            names: Mapping[str, str] | None = None) -> ConfigChanges:
    """What applying ``rendered`` to a supervisord started with ``started``, whose programs
    run as ``applied`` says, would change."""
    return ConfigChanges(compare_programs(applied, rendered, running, names),
                         compare_server(started, rendered) if started else [])
