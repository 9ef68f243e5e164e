"""Who runs siteboot, and where: the invoker's account and home, another account's uid and home,
this host. Standard library only: ``status`` reads them before anything else is imported."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from siteboot.errors import UsageError

# The user name siteboot gives itself in every instance's RPC server (the key is the password).
RPC_USERNAME = "siteboot"
HOST_ENV = "SITEBOOT_HOST"


def this_host() -> str:
    """The host commands run on: ``$SITEBOOT_HOST``, else the kernel's host name (as short or
    as full as the host is set up: ``same_host`` matches either). Not ``getfqdn``: it asks DNS,
    which can hang a login node for seconds, and ``status`` runs every minute."""
    return os.environ.get(HOST_ENV) or os.uname().nodename


def current_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid without a passwd entry (containers)
        return str(os.geteuid())


def uid_of(user: str) -> int:
    if user == current_user():  # also a uid without a passwd entry (containers, CI)
        return os.geteuid()
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise UsageError(f"user {user} does not exist on this host",
                         "check the instance's `user` in the site file") from None


def expand_home(path: str, user: str) -> Path:
    """Expand ``~`` to ``user``'s home (not the invoker's): state lives with its owner."""
    if path == "~" or path.startswith("~/"):
        if user == current_user():
            return own_home() / path[2:] if path != "~" else own_home()
        return Path(os.path.expanduser("~" + user + path[1:]))
    return Path(os.path.expanduser(path))


def own_home() -> Path:
    """The invoker's home: ``$HOME`` as every tool honours it, unless it is plainly not the
    invoker's (someone else's directory: cron or ``sudo -u`` without ``-H`` keep the caller's),
    in which case the account database's; ``home_note`` says so."""
    env_home = os.environ.get("HOME")
    database = _database_home()
    if not env_home:
        return Path(database or "/")
    if database and wrong_home(env_home):
        return Path(database)
    return Path(env_home)


def wrong_home(home: str) -> bool:
    """``home`` exists and belongs to another account."""
    try:
        return os.stat(home).st_uid != os.geteuid()
    except OSError:
        return False


def _database_home() -> str | None:
    try:
        return pwd.getpwuid(os.geteuid()).pw_dir
    except KeyError:  # a uid without a passwd entry (containers): $HOME is all there is
        return None


def home_note() -> str | None:
    """What to tell the operator once when ``$HOME`` is not the invoker's."""
    env_home = os.environ.get("HOME")
    if env_home and wrong_home(env_home) and _database_home():
        return (f"note: $HOME ({env_home}) belongs to another account; using {current_user()}'s "
                f"home {_database_home()} for keys and state")
    return None
