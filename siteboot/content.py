"""What a program runs beyond its config section, as digests that restart it when they change.

A venv rebuilt behind the same ``{venv}`` path, or a file a program reads, changes what runs
without changing the program's section. Each *provider* names such content of one program
with a digest; ``content_digests`` collects them, render writes them as ``; content NAME =
DIGEST`` comments into the program's section (supervisord ignores them), and
``siteboot.changes`` compares them with the copy of what was applied: a changed digest restarts
exactly that program, in ``up``, ``deploy`` and in what ``diff`` reports.

A provider is ``(plan, inst, program) -> {name: digest}``; add one to ``PROVIDERS`` (declared
files add theirs there). Providers read the invoker's own files: they run for owned instances.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from siteboot.plan import InstancePlan, Plan, ProgramPlan

ContentProvider = Callable[[Plan, InstancePlan, ProgramPlan], "dict[str, str]"]


def venv_build(plan: Plan, inst: InstancePlan, program: ProgramPlan) -> dict[str, str]:
    """The build the program's venv symlink points at (its name holds the build's hash)."""
    if program.venv is None:
        return {}
    spec = plan.site.programs.get(program.name)
    name = spec.venv if spec is not None and spec.venv else program.venv.name
    try:
        build = Path(os.readlink(program.venv)).name
    except OSError:
        build = "(not built)"
    return {f"venv.{name}": build}


PROVIDERS: list[ContentProvider] = [venv_build]


def content_digests(plan: Plan, inst: InstancePlan) -> dict[str, dict[str, str]]:
    """program -> {name: digest} for every program of ``inst`` that has any."""
    found: dict[str, dict[str, str]] = {}
    for program in inst.programs:
        digests: dict[str, str] = {}
        for provider in PROVIDERS:
            digests.update(provider(plan, inst, program))
        if digests:
            found[program.name] = dict(sorted(digests.items()))
    return found
