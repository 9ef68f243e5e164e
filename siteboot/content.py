"""What a program runs beyond its config section, as digests that restart it when they change.

Something a program reads that its section does not name changes what runs without changing
the section. Each *provider* names such content of one program
with a digest; ``content_digests`` collects them, render writes them as ``; content NAME =
DIGEST`` comments into the program's section (supervisord ignores them), and
``siteboot.changes`` compares them with the copy of what was applied: a changed digest restarts
exactly that program, in ``up``, ``deploy`` and in what ``diff`` reports.

A provider is ``(plan, inst, program) -> {name: digest}``; add one to ``PROVIDERS``. Providers
read the invoker's own files: they run for owned instances. (``[files]`` restart their readers
through ``sitefiles.restarts``, which ``diff`` reports too.)
"""

from __future__ import annotations

from typing import Callable

from siteboot.plan import InstancePlan, Plan, ProgramPlan

ContentProvider = Callable[[Plan, InstancePlan, ProgramPlan], "dict[str, str]"]


# The venv build a program runs on needs no provider: ``venvs.with_builds`` names it in the
# program's environment, which the comparison sees anyway.
PROVIDERS: list[ContentProvider] = []


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
