"""The login environment: a site's ``preamble`` run in a login shell before a command.

On HPC hosts ``python3`` and the programs exist only after ``module load ...``, and ``module``
is a shell function that ``/etc/profile`` (through ``/etc/profile.d/``) defines for login
shells. supervisord and cron start commands with no shell at all, so a command that needs the
preamble becomes::

    /bin/bash -lc 'eval LINE1 && eval LINE2 && exec "$@" || {...}' siteboot-preamble ARGV...

- ``bash -l``: a login shell reads ``/etc/profile`` and the account's ``~/.bash_profile`` (or
  ``~/.profile``), as the operator's own ssh login does, where the preamble was tried out.
  ``bash`` rather than ``sh``: ``module`` and most site profiles are written for bash.
- ``eval`` of each line, quoted: a line is one complete shell command as written (``;``, ``&&``,
  a trailing comment), never run together with the next one.
- ``&&``: a line that fails (a module that no longer exists after an upgrade) stops the start,
  with a line in the program's stderr log, rather than starting it with the wrong interpreter.
- ``exec "$@"``: the real command replaces the shell, so supervisord's pid (and the pid that
  ``stop`` signals) is the program's own; its arguments are passed as they are, never parsed
  by the shell again.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

LOGIN_SHELL = "/bin/bash"
# $0 of the wrapper shell: how a process still in its preamble is recognised (``ps`` shows it)
WRAPPER_NAME = "siteboot-preamble"
_FAILED = ('{ s=$?; echo "siteboot: the preamble failed (exit $s): not starting $1" >&2; '
           'exit "$s"; }')


def wrap(preamble: Sequence[str], argv: Sequence[str]) -> list[str]:
    """``argv`` run after ``preamble`` in a login shell; ``argv`` itself when there is none."""
    if not preamble:
        return list(argv)
    steps = [f"eval {shlex.quote(line)}" for line in preamble]
    script = " && ".join([*steps, 'exec "$@"']) + " || " + _FAILED
    return [LOGIN_SHELL, "-lc", script, WRAPPER_NAME, *argv]


def wrap_command(preamble: Sequence[str], command: str) -> str:
    """A supervisord ``command`` line (split as supervisord splits it) run after ``preamble``."""
    if not preamble:
        return command
    return shlex.join(wrap(preamble, shlex.split(command)))


def source_line(path: str) -> str:
    """The preamble line that sources a ``preamble_file``."""
    return f". {shlex.quote(path)}"


def in_preamble(cmdline: Sequence[str]) -> bool:
    """Whether a process is still the wrapper shell (its preamble runs; no exec yet)."""
    return len(cmdline) > 3 and cmdline[0] == LOGIN_SHELL and cmdline[3] == WRAPPER_NAME


def file_problem(path: Path) -> str | None:
    """Why the ``preamble_file`` at ``path`` must not be sourced, or None. It runs as every
    instance's account: like a site root's files it must be root's, the invoker's or
    siteboot's owner's, and neither it nor its folder writable by anyone else. It is read at
    every start, long after this check: nobody else may swap a directory on its way either."""
    import os

    from siteboot.errors import OwnershipError
    from siteboot.fsutil import verify_unswappable
    from siteboot.resources import trusted_uids, untrusted_entry

    try:
        why = untrusted_entry(path.parent, path.parent) or untrusted_entry(path, path.parent)
        if not why:
            verify_unswappable(path.parent, os.geteuid(), trusted_uids())
    except OwnershipError as exc:
        return f"preamble_file {path}: {exc.message.replace(': refusing to use it', '')}"
    except FileNotFoundError:
        return f"preamble_file {path} does not exist"
    except OSError as exc:
        return f"preamble_file {path}: {exc.strerror or exc}"
    return f"preamble_file {path}: {why}" if why else None
