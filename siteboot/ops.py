"""One operation per user-facing command: the CLI parses, calls one of these, prints the result.

Each takes a resolved ``Plan`` (``ports`` and ``check`` a site or site files: they span envs)
and returns a typed result with ``as_json()`` and, where the command's exit code depends on
it, ``exit_code``. Nothing here prints; ``progress`` callbacks let long steps say what they do.

Modules are imported inside each operation: ``siteboot status`` must not pay for jinja2,
psutil or virtualenv.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from siteboot.errors import EXIT_OK

if TYPE_CHECKING:
    from siteboot.control import ControlResult, StatusResult
    from siteboot.instances import LifecycleResult
    from siteboot.plan import Plan
    from siteboot.ports import CheckResult
    from siteboot.runner import RunnerOutcome, RunnerStatus
    from siteboot.site import Site
    from siteboot.venvs import VenvOutcome

Progress = Callable[[str], None]


# ------------------------------------------------------------------------------------------
# Results that belong to no single module


@dataclass(frozen=True)
class PortsResult:
    site: str
    envs: list[str]
    ports: dict[str, dict[str, int]]  # name -> env -> port
    exit_code = EXIT_OK

    def as_json(self) -> dict[str, Any]:
        return {"site": self.site, "envs": self.envs, "ports": self.ports}


@dataclass(frozen=True)
class RenderedConfig:
    instance: str
    path: Path
    preview: bool  # placeholder key hash: not startable as is

    def as_json(self) -> dict[str, Any]:
        return {"instance": self.instance, "path": str(self.path), "preview": self.preview}


@dataclass(frozen=True)
class RenderResult:
    rendered: list[RenderedConfig]
    skipped: list[tuple[str, str]]  # (instance, why)
    exit_code = EXIT_OK

    def as_json(self) -> dict[str, Any]:
        return {"rendered": [r.as_json() for r in self.rendered],
                "skipped": [{"instance": i, "reason": why} for i, why in self.skipped]}


@dataclass(frozen=True)
class InitResult:
    venvs: list[VenvOutcome]
    instances: LifecycleResult
    status: StatusResult

    @property
    def exit_code(self) -> int:
        """The status verdict, as monitoring reads it (a failed instance shows there too)."""
        return self.status.exit_code

    def as_json(self) -> dict[str, Any]:
        return {"venvs": [v.as_json() for v in self.venvs], "instances": self.instances.as_json(),
                "status": self.status.as_json()}


# ------------------------------------------------------------------------------------------
# Operations


def ports(site: Site) -> PortsResult:
    """The port matrix: one row per program and ``supervisord-<instance>``, one column per env."""
    from siteboot.ports import matrix

    return PortsResult(site.name, list(site.envs), matrix(site))


def check(paths: Sequence[Path], strict: bool = False) -> CheckResult:
    """Every problem of every site file at once, clashes between them, ports in use here."""
    from siteboot.ports import check as check_sites

    return check_sites(paths, strict=strict)


def render(plan: Plan, root: Path | None, out: Path | None = None,
           instance: str | None = None) -> RenderResult:
    """Render the env's configs: into ``out`` as previews, or in place for the invoker's own."""
    from siteboot.fsutil import atomic_write
    from siteboot.instances import instance_lock, provision
    from siteboot.render import render_preview

    selected = plan.select(instance)
    # Every instance is validated first (other users' too, so a bad value is found before their
    # owner deploys): a refusal leaves nothing written.
    previews = [(inst, render_preview(plan, inst, root)) for inst in selected]
    rendered: list[RenderedConfig] = []
    skipped: list[tuple[str, str]] = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for inst, text in previews:
            path = out / inst.conf_path.name
            atomic_write(path, text, mode=0o600)
            rendered.append(RenderedConfig(inst.name, path, preview=True))
        return RenderResult(rendered, skipped)
    for inst in selected:
        if plan.owns(inst):
            with instance_lock(plan, inst):  # never half-way through an `up` of the same instance
                rendered.append(RenderedConfig(inst.name, provision(plan, inst, root), False))
        else:
            skipped.append((inst.name, f"owned by {inst.user}: run as {inst.user}, "
                                       "or preview it with --out DIR"))
    return RenderResult(rendered, skipped)


def up(plan: Plan, root: Path | None, instance: str | None = None,
       timeout: float = 30.0) -> LifecycleResult:
    """Start the supervisord of every instance the invoker owns (the others: skipped)."""
    from siteboot import instances

    return instances.up(plan, root, instance, timeout)


def run_foreground(plan: Plan, root: Path | None, instance: str | None) -> None:
    """Replace this process by ``instance``'s supervisord in the foreground (never returns)."""
    from siteboot import instances
    from siteboot.proc import exec_replace

    exec_replace(instances.foreground_argv(plan, root, instance))


def down(plan: Plan, instance: str | None = None, purge: bool = False) -> LifecycleResult:
    """Stop every instance the invoker owns; ``purge`` also deletes its runtime dir and logs."""
    from siteboot import instances

    return instances.down(plan, instance, purge)


def status(plan: Plan, instance: str | None = None) -> StatusResult:
    """Every instance and program of the env, queried concurrently."""
    from siteboot.control import status as query

    return query(plan, instance)


def control(plan: Plan, action: str, names: Sequence[str]) -> ControlResult:
    """``start``, ``stop`` or ``restart`` processes and wait until each got there."""
    from siteboot.control import control as act

    return act(plan, action, list(names))


def tail(plan: Plan, name: str, write: Callable[[str], None], stderr: bool = False,
         follow: bool = False, nbytes: int = 4096) -> None:
    """Write the end of a process's log to ``write``; with ``follow``, keep writing."""
    from siteboot.control import tail as follow_log

    follow_log(plan, name, write, stderr=stderr, follow=follow, nbytes=nbytes)


def ctl(plan: Plan, instance: str, args: Sequence[str]) -> int:
    """The real supervisorctl against one instance; its exit code."""
    from siteboot.control import ctl as relay

    return relay(plan, instance, list(args))


def init(plan: Plan, root: Path | None, wheelhouse: Path | None = None, timeout: float = 30.0,
         progress: Progress | None = None) -> InitResult:
    """App venvs, then ``up``, then status once programs have settled. Safe to re-run."""
    from siteboot import instances
    from siteboot.control import settle
    from siteboot.venvs import ensure_venvs

    venvs = ensure_venvs(plan, wheelhouse, progress=progress)
    outcomes = instances.up(plan, root, None, timeout)
    return InitResult(venvs, outcomes, settle(plan, timeout))


# ------------------------------------------------------------------------------------------
# gitlab-runner (``[runner]``)


def runner_status(plan: Plan) -> RunnerStatus:
    """Whether the site's gitlab-runner runs; monitoring exit codes."""
    from siteboot import runner

    return runner.status(plan)


def runner_revive(plan: Plan) -> RunnerOutcome:
    """Start the runner unless one runs (never two on one config); clears an operator's stop."""
    from siteboot import runner

    return runner.revive(plan)


def runner_drain(plan: Plan, timeout: float | None = None,
                 progress: Progress | None = None) -> RunnerOutcome:
    """SIGQUIT: finish running jobs, take no new ones; wait up to ``timeout`` and report."""
    from siteboot import runner

    return runner.drain(plan, timeout, progress)


def runner_stop(plan: Plan, progress: Progress | None = None) -> RunnerOutcome:
    """SIGTERM now (jobs are aborted), SIGKILL if it lingers."""
    from siteboot import runner

    return runner.stop(plan, progress)
