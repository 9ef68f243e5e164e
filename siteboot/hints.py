"""Commands in messages, written so that they work when pasted.

A hint such as "run `siteboot up`" is wrong for an operator who ran ``siteboot status --site
myapp -e prod``: pasted, it starts the default site in dev. So the CLI records once per process
what the operator gave (``remember``: ``--site``, ``--env``, ``--root`` and ``-i``, from the
command line or ``SITEBOOT_*``, as click reads them) and every command in a message is made by
``command``, which carries them.

Standard library only: stage 0, ``rpc`` and ``keys`` make hints too, and ``status`` stays fast.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence

from siteboot.plain import Plain
from siteboot.resources import DEFAULT_ENV


class Invocation(Plain):  # stage 0 and every command make one: no dataclass, no NamedTuple
    """What the operator gave; None (or no instances) where they gave nothing."""

    __slots__ = ("env", "instances", "root", "site")

    def __init__(self, site: str | None = None, env: str | None = None, root: str | None = None,
                 instances: tuple[str, ...] = ()) -> None:
        self.site = site
        self.env = env
        self.root = root
        self.instances = instances


# The options every command that works on a site takes, and where ``Invocation`` keeps them.
_OPTIONS = {"--site": "site", "-s": "site", "--env": "env", "-e": "env", "--root": "root",
            "--instance": "instances", "-i": "instances"}
_ENVIRONMENT = {"site": "SITEBOOT_SITE", "env": "SITEBOOT_ENV", "root": "SITEBOOT_ROOT"}
# Commands that take -i (several times): a hint for one of them keeps the instances given.
_TAKE_INSTANCES = frozenset({"up", "down", "status", "render", "rotate-key", "tail", "logs"})

_given = Invocation()


def read_invocation(args: Sequence[str], environ: Mapping[str, str]) -> Invocation:
    """The site options in ``args`` (a command line without the program name), else in
    ``environ``. Arguments after ``--`` (``ctl``'s) are not siteboot's."""
    values: dict[str, str | None] = {key: environ.get(var) or None
                                     for key, var in _ENVIRONMENT.items()}
    instances: list[str] = []
    rest = iter(args)
    for arg in rest:
        if arg == "--":
            break
        name, equals, value = arg.partition("=")
        if equals and name.startswith("--") and name in _OPTIONS:
            key = _OPTIONS[name]
        elif arg in _OPTIONS:
            key, value = _OPTIONS[arg], next(rest, "")
        elif arg[:2] in _OPTIONS and not arg.startswith("--") and len(arg) > 2:  # -eprod
            key, value = _OPTIONS[arg[:2]], arg[2:]
        else:
            continue
        if key == "instances":
            instances.append(value)
        else:
            values[key] = value or None
    return Invocation(site=values["site"], env=values["env"], root=values["root"],
                      instances=tuple(instances))


def remember(args: Sequence[str], environ: Mapping[str, str] | None = None) -> Invocation:
    """Record what this process's command line gave, for every hint it prints."""
    global _given
    _given = read_invocation(args, os.environ if environ is None else environ)
    return _given


def given() -> Invocation:
    return _given


def command(verb: str, *args: str, env: str | None = None, instance: str | None = None,
            program: str = "siteboot") -> str:
    """``siteboot VERB ARGS [--root R] [--site S] [-e ENV] [-i I]...`` as the operator can paste
    it.

    ``env``: the env the hint is about (``revive --all-envs`` goes through several); shown when
    the operator named one or it is not the default. ``instance``: the one the hint is about;
    without it, a verb that takes -i gets the instances the operator gave.
    """
    words = [*program.split(), *verb.split(), *args]
    if _given.root:
        words += ["--root", _given.root]
    if _given.site:
        words += ["--site", _given.site]
    shown_env = env or _given.env
    if shown_env and (_given.env or shown_env != DEFAULT_ENV):
        words += ["-e", shown_env]
    chosen = [instance] if instance else list(_given.instances) if verb in _TAKE_INSTANCES else []
    for name in chosen:
        words += ["-i", name]
    return " ".join(shlex.quote(word) for word in words)
