"""The one error hierarchy and the one exit-code table.

Every failure that an operator can cause or fix is a ``SitebootError``: the CLI prints its
message (what, where, what to do) and exits with its ``exit_code``; nothing else is a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence

# Exit codes of ordinary commands.
EXIT_OK = 0
EXIT_FAILED = 1  # the operation was attempted and failed
EXIT_USAGE = 2  # bad usage or a bad site file: nothing was attempted

# Exit codes of `siteboot status`, as monitoring plugins (Nagios, Icinga) read them.
STATUS_OK = 0  # every program that should run is RUNNING
STATUS_WARNING = 1  # some program is STARTING or BACKOFF
STATUS_CRITICAL = 2  # an instance is down, or a program is FATAL/EXITED/STOPPED
STATUS_UNKNOWN = 3  # no verdict possible: bad site file, no key, key refused


class SitebootError(Exception):
    """An expected failure, with a message meant for the operator."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class UsageError(SitebootError):
    """The command line or environment asks for something that does not exist."""

    exit_code = EXIT_USAGE


class SiteFileError(SitebootError):
    """A site file cannot be read or does not validate; carries every problem found."""

    exit_code = EXIT_USAGE

    def __init__(self, path: str, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = list(problems)
        count = len(self.problems)
        head = f"{path}: {count} problem{'s' if count != 1 else ''}"
        super().__init__("\n".join([head, *(f"  {p}" for p in self.problems)]))


class RenderError(SitebootError):
    """A program's values cannot be written into a supervisord config without changing them."""

    exit_code = EXIT_USAGE


class OwnershipError(SitebootError):
    """A directory or file belongs to someone it must not belong to."""


class KeyAccessError(SitebootError):
    """The invoking user may not have (or does not have) an instance's key."""


class InstanceError(SitebootError):
    """A supervisord instance could not be started, reached or stopped."""


class BootstrapError(SitebootError):
    """The tool or an application virtualenv could not be built."""
