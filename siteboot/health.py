"""What the healer records for ``status``: probe results and restart attempts per process.

The event listener inside each supervisord (``healer``) writes one JSON file per instance in
the owner's state dir (``InstancePlan.health_path``); ``status`` reads it instead of probing, so
it stays one request per instance. Standard library only, and small: ``status`` imports it.

    {"written_at": 1700000000.0, "processes": {"web": {
        "pid": 4242, "health": "not ready", "checked_at": 1700000000.0, "detail": "HTTP 500",
        "attempts": 3, "next_try": 1700000004.0, "last_attempt": 1699999996.0}}}
"""

from __future__ import annotations

import json
from pathlib import Path

TYPE_CHECKING = False  # no typing at run time: every command pays for its import
if TYPE_CHECKING:
    from typing import Any

READY = "ready"
NOT_READY = "not ready"
UNKNOWN = "unknown"
# Probes run every 5 s (TICK_5); a result older than this is not a verdict any more (the
# listener is gone, or stuck in a probe).
STALE_AFTER = 60.0


def read(path: Path) -> dict[str, dict[str, Any]]:
    """process name -> its record; {} when there is none or it cannot be read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    processes = data.get("processes") if isinstance(data, dict) else None
    if not isinstance(processes, dict):
        return {}
    return {str(k): v for k, v in processes.items() if isinstance(v, dict)}


def write(path: Path, processes: dict[str, dict[str, Any]], now: float) -> None:
    from siteboot.fsutil import atomic_write

    text = json.dumps({"written_at": now, "processes": processes}, indent=1, sort_keys=True)
    atomic_write(path, text + "\n", mode=0o600)


class Health:
    """One process's health and restart state, as ``status`` shows it.

    (A plain class, like ``control._Tracked``: a dataclass costs ``status`` a millisecond.)
    """

    def __init__(self, state: str, detail: str = "", attempts: int = 0,
                 next_try_s: int | None = None) -> None:
        self.state = state  # ready, not ready, unknown
        self.detail = detail  # the probe's last error, or why unknown
        self.attempts = attempts  # restarts by the healer since it last stayed up
        self.next_try_s = next_try_s  # seconds until the next one, when one is planned

    def backoff_json(self) -> dict[str, Any] | None:
        if not self.attempts and self.next_try_s is None:
            return None
        return {"attempts": self.attempts, "next_try_s": self.next_try_s}


def health_of(probed: bool, state: str, pid: int | None, record: dict[str, Any] | None,
              now: float) -> Health:
    """``probed``: the program has a ``ready`` probe (without one it is ready once RUNNING).
    A probe result counts only for the process that runs now and only while it is fresh."""
    record = record or {}
    attempts = _int(record.get("attempts")) or 0
    next_try = _float(record.get("next_try"))
    next_try_s = max(0, round(next_try - now)) if next_try is not None and \
        state not in ("RUNNING", "STARTING") else None
    if state != "RUNNING":
        return Health(NOT_READY, "", attempts, next_try_s)
    if not probed:
        return Health(READY, "", attempts, None)
    checked_at = _float(record.get("checked_at"))
    if record.get("pid") != pid or checked_at is None:
        return Health(UNKNOWN, "not probed yet", attempts, None)
    if now - checked_at > STALE_AFTER:
        return Health(UNKNOWN, f"last probed {round(now - checked_at)}s ago", attempts, None)
    verdict = record.get("health")
    if verdict not in (READY, NOT_READY):
        return Health(UNKNOWN, "", attempts, None)
    return Health(str(verdict), str(record.get("detail") or ""), attempts, None)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
