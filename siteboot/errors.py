"""The one error hierarchy and the one exit-code table.

Every failure that an operator can cause or fix is a ``SitebootError``: the CLI prints its
message (what, where, what to do) and exits with its ``exit_code``; nothing else is a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

TYPE_CHECKING = False  # no typing at run time: every command pays for its import
if TYPE_CHECKING:
    from typing import Callable

# Exit codes of ordinary commands.
EXIT_OK = 0
EXIT_FAILED = 1  # the operation was attempted and failed
EXIT_USAGE = 2  # bad usage or a bad site file: nothing was attempted
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
EXIT_BROKEN_PIPE = 141  # the reader of our output went away, as shells report SIGPIPE

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

    def one_line(self) -> str:
        """The message's first line and the hint, for one row of a table."""
        first = self.message.splitlines()[0] if self.message else ""
        return f"{first}; {self.hint}" if self.hint else first


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


class SecretError(SitebootError):
    """A ``{secret:NAME}`` that cannot be read; the message names it, never its value."""

    exit_code = EXIT_USAGE


class OwnershipError(SitebootError):
    """A directory or file belongs to someone it must not belong to."""


class KeyAccessError(SitebootError):
    """The invoking user may not have (or does not have) an instance's key."""


class InstanceError(SitebootError):
    """A supervisord instance could not be started, reached or stopped."""


class BootstrapError(SitebootError):
    """The tool or an application virtualenv could not be built."""


def describe_os_error(exc: OSError) -> str:
    """An OS error as an operator reads it: what failed, on which file."""
    what = exc.strerror or str(exc)
    if exc.filename:
        return f"{what}: {exc.filename}"
    return f"{type(exc).__name__}: {what}"


def did_you_mean(name: str, choices: Iterable[str], template: str = "'{}'") -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or "" when none is close."""
    import difflib  # not at the top: the status path never needs it

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {template.format(close[0])}?)" if close else ""


def exit_code_for(exc: BaseException, *, debug: bool, error: Callable[[str], None],
                  internal_code: int = EXIT_FAILED, broken_pipe_code: int = EXIT_BROKEN_PIPE) -> int:
    """The one translation of an exception into a message and an exit code.

    An expected failure prints its message; Ctrl-C is 130 and quiet; a reader that went away
    (``| head``) is ``broken_pipe_code`` and quiet; anything else is a bug: one line and
    ``internal_code``. ``status`` passes UNKNOWN for both: a verdict a monitor can still read.
    With ``debug``, and for exits that are not errors, the exception is raised again.
    """
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, BrokenPipeError):  # as shells do: quietly
        silence_output()
        return broken_pipe_code
    if debug or not isinstance(exc, Exception):
        raise exc
    code = exc.exit_code if isinstance(exc, SitebootError) else internal_code
    try:
        if isinstance(exc, SitebootError):
            error(str(exc))
        else:
            error(f"internal error: {type(exc).__name__}: {exc}\n"
                  "  rerun with --debug (or SITEBOOT_DEBUG=1) for the traceback")
    except BrokenPipeError:  # stderr too went to a reader that is gone (`2>&1 | head`)
        silence_output()
    return code


def silence_output() -> None:
    """After a reader of our output went away (``| head``, ``2>&1 | head``): send the rest of
    stdout and stderr, and what Python flushes at exit, nowhere, instead of a second
    BrokenPipeError (and exit 120). Nothing is printed after it."""
    import os
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
