"""One operation per user-facing command: the CLI parses, calls one of these, prints the result.

Each takes a resolved ``Plan`` (``ports`` and ``check`` a site or site files: they span envs)
and returns a typed result with ``as_json()`` and, where the command's exit code depends on
it, ``exit_code``. Nothing here prints; ``progress`` callbacks let long steps say what they do.

Modules are imported inside each operation: ``siteboot status`` must not pay for jinja2,
psutil or virtualenv.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from siteboot.errors import EXIT_OK

if TYPE_CHECKING:
    from siteboot.control import ControlResult
    from siteboot.cron import CronResult
    from siteboot.deploy import DeployResult, DiffResult, ReleasesResult, RollbackResult
    from siteboot.doctor import DoctorResult
    from siteboot.instances import InstanceOutcome, LifecycleResult
    from siteboot.logs import LogStream
    from siteboot.plan import Plan, Selection
    from siteboot.ports import CheckResult
    from siteboot.progress import Reporter
    from siteboot.runner import RunnerOutcome, RunnerStatus
    from siteboot.site import Site
    from siteboot.statusreport import SiteStatus, StatusResult
    from siteboot.venvs import VenvOutcome

Progress = Callable[[str], None]  # lines a long runner step prints as it goes


# ------------------------------------------------------------------------------------------
# Results that belong to no single module


@dataclass(frozen=True)
class PortsResult:
    site: str
    envs: list[str]
    ports: dict[str, dict[str, int | None]]  # name -> env -> port (None: auto, not allocated)
    auto: dict[str, list[str]]  # name -> the envs where its port is "auto"
    exit_code = EXIT_OK

    def as_json(self) -> dict[str, Any]:
        return {"site": self.site, "envs": self.envs, "ports": self.ports, "auto": self.auto}


@dataclass(frozen=True)
class RenderedConfig:
    instance: str
    path: Path
    preview: bool  # placeholder key hash (and {secret:NAME}): not startable as is
    file: str | None = None  # a [files] entry, not the supervisord config

    def as_json(self) -> dict[str, Any]:
        return {"instance": self.instance, "path": str(self.path), "preview": self.preview,
                "file": self.file}


@dataclass(frozen=True)
class RenderResult:
    rendered: list[RenderedConfig]
    skipped: list[tuple[str, str]]  # (instance, why)
    # "<instance>: ...": auto ports allocated (or shown as 0), managed dirs made or corrected
    notes: list[str] = field(default_factory=list)
    named: bool = False  # one instance was asked for (-i): skipping it is a failure

    @property
    def exit_code(self) -> int:
        from siteboot.errors import EXIT_FAILED

        return EXIT_FAILED if self.named and self.skipped else EXIT_OK

    def as_json(self) -> dict[str, Any]:
        return {"rendered": [r.as_json() for r in self.rendered],
                "skipped": [{"instance": i, "reason": why} for i, why in self.skipped],
                "notes": self.notes}


@dataclass(frozen=True)
class InitResult:
    venvs: list[VenvOutcome]
    instances: LifecycleResult
    status: StatusResult | None  # None: nothing was started (``--no-start``)

    @property
    def exit_code(self) -> int:
        """The status verdict, as monitoring reads it (a failed instance shows there too);
        without a start, whether every config could be written."""
        return self.instances.exit_code if self.status is None else self.status.exit_code

    def as_json(self) -> dict[str, Any]:
        return {"sources": self.instances.sources, "venvs": [v.as_json() for v in self.venvs],
                "instances": self.instances.as_json(),
                "status": None if self.status is None else self.status.as_json()}


# ------------------------------------------------------------------------------------------
# Operations


def ports(site: Site) -> PortsResult:
    """The port matrix: one row per program and ``supervisord-<instance>``, one column per env;
    an auto port shows the number allocated for the invoker (reading, never allocating)."""
    from siteboot.plan import make_plan
    from siteboot.ports import auto_rows, matrix

    plans = [make_plan(site, env) for env in site.envs] if site.auto_ports() else []
    auto: dict[str, list[str]] = {}
    for plan in plans:
        for _key, name, _port in auto_rows(plan):
            auto.setdefault(name, []).append(plan.env)
    return PortsResult(site.name, list(site.envs), matrix(site, plans), auto)


def _allocated(plan: Plan, instance: Selection = None) -> tuple[Plan, dict[str, list[str]]]:
    """``plan`` with the auto ports of the invoker's instances allocated (what starts or renders
    them needs numbers), and per instance what was chosen or moved."""
    from siteboot.ports import allocate

    allocation = allocate(plan, instance)
    return allocation.plan, allocation.notes


def _noting(result: LifecycleResult, notes: dict[str, list[str]]) -> LifecycleResult:
    for outcome in result.outcomes:
        outcome.notes[:0] = notes.get(outcome.instance, [])
    return result


def check(paths: Sequence[Path], strict: bool = False) -> CheckResult:
    """Every problem of every site file at once, clashes between them, ports in use here."""
    from siteboot.ports import check as check_sites

    return check_sites(paths, strict=strict)


def render(plan: Plan, root: Path | None, out: Path | None = None,
           instance: Selection = None) -> RenderResult:
    """Render the env's configs: into ``out`` as previews, or in place for the invoker's own."""
    _keep_compiled_templates()
    from siteboot.fsutil import atomic_write
    from siteboot.instances import instance_lock, provision_all
    from siteboot.render import render_files, render_preview
    from siteboot.venvs import with_builds

    if out is None:  # in place: what `up` will start, so with its real ports
        plan, allocations = _allocated(plan, instance)
        notes = [f"{name}: {note}" for name in allocations for note in allocations[name]]
    else:  # a preview is read-only: it allocates nothing
        from siteboot.hints import command

        notes = [f"{inst.name}: {key}: auto port not allocated yet, shown as 0 "
                 f"(`{command('up', env=plan.env, instance=inst.name)}` allocates it)"
                 for inst in plan.select(instance) for key in plan.unallocated(inst)]
    selected = plan.select(instance)
    # Every instance is validated first (other users' too, so a bad value is found before their
    # owner deploys): a refusal leaves nothing written. Previews show {secret:NAME}, never one.
    previews = [(inst, render_preview(plan, with_builds(inst), root),
                 render_files(plan, inst, root, None)) for inst in selected]
    rendered: list[RenderedConfig] = []
    skipped: list[tuple[str, str]] = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for inst, text, files in previews:
            path = inst.preview_path(out)
            atomic_write(path, text, mode=0o600)
            rendered.append(RenderedConfig(inst.name, path, preview=True))
            for item in files:
                path = inst.file_preview_path(out, item.name)
                path.parent.mkdir(exist_ok=True)
                atomic_write(path, item.text, mode=0o600)
                rendered.append(RenderedConfig(inst.name, path, True, item.name))
        return RenderResult(rendered, skipped, notes)
    for inst in selected:
        elsewhere = plan.elsewhere(inst)
        if elsewhere:
            skipped.append((inst.name, f"{elsewhere}: render it there, or preview it with --out DIR"))
        elif plan.owns(inst):
            with instance_lock(plan, inst):  # never half-way through an `up` of the same instance
                site_files, conf = provision_all(plan, inst, root)
            rendered.append(RenderedConfig(inst.name, conf, False))
            rendered += [RenderedConfig(inst.name, f.path, False, f.name) for f in inst.files]
            notes += [f"{inst.name}: {note}" for note in site_files.notes
                      if note.startswith("dir ")]
        else:
            skipped.append((inst.name, f"owned by {inst.user}: run as {inst.user}, "
                                       "or preview it with --out DIR"))
    return RenderResult(rendered, skipped, notes, named=bool(instance))


def up(plan: Plan, root: Path | None, instance: Selection = None,
       timeout: float = 30.0) -> LifecycleResult:
    """Start the supervisord of every instance the invoker owns (the others: skipped), then
    every program that should run and does not, except those an operator stopped."""
    _keep_compiled_templates()
    from siteboot import instances

    plan, notes = _allocated(plan, instance)
    result = _noting(instances.up(plan, root, instance, timeout), notes)
    _converge(plan, result.outcomes)
    result.sources = sources(plan, root)
    return result


def sources(plan: Plan, root: Path | None) -> str:
    """Which site file and template a command used: a planted root must never go unnoticed."""
    from siteboot.render import CONFIG_TEMPLATE
    from siteboot.resources import config_template

    return f"site file {plan.site.path}, template {config_template(root, CONFIG_TEMPLATE)}"


def _keep_compiled_templates() -> None:
    """Templates compiled once are kept in the invoker's private cache (``templatecache``):
    a warm ``init`` or ``up`` renders without compiling."""
    from siteboot.render import use_bytecode_cache

    use_bytecode_cache(_template_cache)


def _template_cache() -> Any:
    from siteboot.templatecache import template_cache  # imports jinja2: only when rendering

    return template_cache()


def _converge(plan: Plan, outcomes: list[InstanceOutcome]) -> None:
    from siteboot.readiness import converge_outcomes

    converge_outcomes(plan, outcomes)


def run_foreground(plan: Plan, root: Path | None, instance: Selection) -> None:
    """Replace this process by ``instance``'s supervisord in the foreground (never returns)."""
    from siteboot import instances
    from siteboot.proc import exec_replace, without_secrets

    plan, _notes = _allocated(plan, instance)
    exec_replace(instances.foreground_argv(plan, root, instance), env=without_secrets())


def down(plan: Plan, instance: Selection = None, purge: bool = False,
         orphans: bool = False) -> LifecycleResult:
    """Stop every instance the invoker owns; ``purge`` also deletes its runtime dir and logs;
    ``orphans``: also what this account started for the site and env that the site no longer
    describes (from the start records)."""
    from siteboot import instances
    from siteboot.readiness import stop_dependants_first
    from siteboot.records import orphaned

    drifted = orphaned(plan) if orphans else []  # before `down` changes the records
    first = stop_dependants_first(plan, instance)
    result = instances.down(plan, instance, purge)
    for outcome in result.outcomes:
        outcome.notes[:0] = first.get(outcome.instance, [])
    result.outcomes += [instances.stop_recorded(record) for record in drifted]
    return result


def rotate_key(plan: Plan, root: Path | None, instance: Selection = None,
               timeout: float = 30.0) -> LifecycleResult:
    """A new key per instance you own: running ones restart on it, grants are republished."""
    _keep_compiled_templates()
    from siteboot import instances

    plan, notes = _allocated(plan, instance)
    result = _noting(instances.rotate_keys(plan, root, instance, timeout), notes)
    _converge(plan, [o for o in result.outcomes if o.action == "rotated" and o.pid])
    return result


def down_recorded(site_path: Path, env: str) -> LifecycleResult:
    """``down`` when the site file does not parse: stop what the start records say was started
    from that file for ``env``. A broken edit never keeps anyone from stopping the site."""
    from siteboot import instances
    from siteboot.accounts import current_user
    from siteboot.records import read_starts

    records = [r for r in read_starts(current_user())
               if r.site_path == str(site_path) and r.env == env]
    return instances.LifecycleResult([instances.stop_recorded(r) for r in records])


def status(plan: Plan, instance: Selection = None, names: Sequence[str] = ()) -> StatusResult:
    """Every instance and program of the env (or the ``names``d ones), queried concurrently."""
    from siteboot.control import status as query

    result = query(plan, instance, names)
    runner = plan.runner
    # a supervised runner is a program in its instance's rows; a detached one is shown apart
    if runner is not None and runner.mode == "detached" and not names \
            and runner.instance in [inst.name for inst in plan.select(instance)]:
        from siteboot import runner as runners  # reads /proc: no psutil on the status path

        result.runner = runners.status(plan)
    return result


def status_all_envs(plans: Sequence[Plan], env: str, instance: Selection = None,
                    names: Sequence[str] = ()) -> SiteStatus:
    """``status`` of every env in ``plans`` that has an instance running or recorded as started
    by the invoker (none: ``env``'s, which says what is not running)."""
    from siteboot.concurrency import concurrently
    from siteboot.records import starts_of
    from siteboot.statusreport import SiteStatus, in_use

    reports = concurrently(lambda plan: status(plan, instance, names), plans)
    recorded = {r.env for plan in plans[:1] for r in starts_of(plan.invoker, plan.site.name)}
    used = [r for r in reports if r.env in recorded or in_use(r)]
    return SiteStatus(plans[0].site.name if plans else "",
                      used or [r for r in reports if r.env == env])


def control(plan: Plan, action: str, names: Sequence[str]) -> ControlResult:
    """``start``, ``stop`` or ``restart`` processes and wait until each got there.

    A stop by an operator is remembered (in the owner's state) so that ``up`` and ``revive``
    leave that process stopped; a start or restart of it lifts that.
    """
    from siteboot.readiness import control_in_waves
    from siteboot.records import mark_stopped

    result = control_in_waves(plan, action, list(names))
    for inst in plan.instances.values():
        done = [o.process for o in result.outcomes if o.instance == inst.name and o.ok]
        if done and plan.owns(inst):
            mark_stopped(inst, done, stopped=action == "stop")
    return result


def target_names(plan: Plan) -> list[str]:
    """The names ``start``, ``stop``, ``restart``, ``tail`` and ``status`` take (completion)."""
    from siteboot.control import target_names as names

    return names(plan)


def tail(plan: Plan, name: str, write: Callable[[str], None], stderr: bool = False,
         follow: bool = False, nbytes: int = 4096, instance: Selection = None) -> None:
    """Write the end of a process's log to ``write``; with ``follow``, keep writing."""
    from siteboot.control import tail as follow_log

    follow_log(plan, name, write, stderr=stderr, follow=follow, nbytes=nbytes, instance=instance)


def logs(plan: Plan, names: Sequence[str], emit: Callable[[LogStream, str], None],
         instance: Selection = None, follow: bool = False, lines: int = 10) -> None:
    """The last ``lines`` lines of the stdout and stderr of every program (or the named ones),
    each line given to ``emit`` with the log it came from; with ``follow``, every line written
    after them, until Ctrl-C."""
    from siteboot.logs import show

    show(plan, names, emit, instance, follow=follow, lines=lines)


def ctl(plan: Plan, instance: str, args: Sequence[str]) -> int:
    """The real supervisorctl against one instance; its exit code."""
    from siteboot.control import ctl as relay

    return relay(plan, instance, list(args))


def init(plan: Plan, root: Path | None, wheelhouse: Path | None = None, timeout: float = 30.0,
         progress: Reporter | None = None, start: bool = True) -> InitResult:
    """App venvs, then ``up``, then status once programs have settled. Safe to re-run.
    ``progress`` sees the venv builds and the wait for programs to settle. Without ``start``
    (a CI build stage): the venvs, and the configs of the invoker's instances rendered in
    place, nothing started."""
    _keep_compiled_templates()
    from siteboot import instances
    from siteboot.control import settle
    from siteboot.progress import SILENT
    from siteboot.venvs import ensure_venvs

    progress = progress or SILENT
    venvs = ensure_venvs(plan, wheelhouse, progress=progress, root=root)
    if not start:  # render allocates the auto ports, as up would
        return InitResult(venvs, _rendered_in_place(plan, root), None)
    plan, notes = _allocated(plan)
    outcomes = _noting(instances.up(plan, root, None, timeout), notes)
    _converge(plan, outcomes.outcomes)
    outcomes.sources = sources(plan, root)
    return InitResult(venvs, outcomes, settle(plan, timeout, progress=progress))


def _rendered_in_place(plan: Plan, root: Path | None) -> LifecycleResult:
    """``render`` as ``init --no-start`` reports it: per instance, its config (the files and
    dirs written for it as notes), or why it was skipped."""
    from siteboot.instances import InstanceOutcome, LifecycleResult

    written = render(plan, root)
    outcomes = []
    for inst in plan.instances.values():
        mine = [r for r in written.rendered if r.instance == inst.name]
        config = next((r for r in mine if r.file is None), None)
        if config is not None:
            notes = [f"file {r.file}: {r.path}" for r in mine if r.file is not None]
            notes += [n.split(": ", 1)[1] for n in written.notes if n.startswith(f"{inst.name}: ")]
            outcomes.append(InstanceOutcome(inst.name, "rendered", str(config.path), notes=notes))
    outcomes += [InstanceOutcome(name, "skipped", why) for name, why in written.skipped]
    return LifecycleResult(outcomes, sources=sources(plan, root))


# ------------------------------------------------------------------------------------------
# diff, deploy, releases, rollback


def diff(plan: Plan, root: Path | None) -> DiffResult:
    """What the checkout renders against what each of your running instances has loaded."""
    _keep_compiled_templates()
    from siteboot.deploy import diff as compare

    return compare(plan, root)


def deploy(plan: Plan, root: Path | None, wheelhouse: Path | None = None, timeout: float = 60.0,
           lock_timeout: float = 600.0, progress: Reporter | None = None) -> DeployResult:
    """Venvs, a new release, apply (exactly the changed programs restart), verify; on failure
    the previous release is applied again."""
    _keep_compiled_templates()
    from siteboot.deploy import deploy as bring
    from siteboot.deployrequest import requests_for
    from siteboot.progress import SILENT

    result = bring(plan, root, wheelhouse, timeout, lock_timeout, progress or SILENT)
    # the instances of other accounts that grant deploy: their owners' agents apply it
    result.requests = requests_for(plan, root, "deploy", timeout, progress or SILENT,
                                   "your own deploy failed" if result.failures else None)
    return result


def releases(plan: Plan) -> ReleasesResult:
    """The releases of the site and env, the current and previous one named."""
    from siteboot.deploy import releases as listing

    return listing(plan)


def rollback(plan: Plan, to: str | None = None, wheelhouse: Path | None = None,
             timeout: float = 60.0, lock_timeout: float = 600.0,
             progress: Reporter | None = None) -> RollbackResult:
    """Apply an earlier release again (default: the previous one)."""
    from siteboot.deploy import nothing_to_roll_back, read_pointers
    from siteboot.deploy import rollback as back
    from siteboot.deployrequest import granted_instances, requests_for
    from siteboot.progress import SILENT

    if to is None and read_pointers(plan).previous is None and granted_instances(plan):
        result = nothing_to_roll_back(plan)  # only the owners' agents have something to do
    else:
        result = back(plan, to, wheelhouse, timeout, lock_timeout, progress or SILENT)
    result.requests = requests_for(plan, None, "rollback", timeout, progress or SILENT)
    return result


# ------------------------------------------------------------------------------------------
# revive and cron


@dataclass(frozen=True)
class EnvRevival:
    env: str
    instances: LifecycleResult
    status: StatusResult
    runner: RunnerOutcome | None = None  # the site's detached gitlab-runner, when it is ours

    def as_json(self) -> dict[str, Any]:
        return {"env": self.env, "instances": self.instances.as_json(),
                "status": self.status.as_json(),
                "runner": self.runner.as_json() if self.runner else None}


@dataclass(frozen=True)
class ReviveResult:
    site: str
    envs: list[EnvRevival]

    @property
    def exit_code(self) -> int:
        """0 when everything of the invoker's that should run does, afterwards."""
        from siteboot.errors import EXIT_FAILED, STATUS_OK
        from siteboot.statusreport import ORPHANED

        for revival in self.envs:
            if any(o.action == "failed" for o in revival.instances.outcomes):
                return EXIT_FAILED
            if revival.runner is not None and not revival.runner.ok:
                return EXIT_FAILED
            for row in revival.status.instances:
                if row.state != ORPHANED and row.severity != STATUS_OK:
                    return EXIT_FAILED
        return EXIT_OK

    def actions(self) -> list[str]:
        """One line per thing done (or failed); nothing when all was well."""
        lines = []
        for revival in self.envs:
            for o in revival.instances.outcomes:
                if o.action in ("already running", "skipped") and not o.notes:
                    continue
                lines.append(f"{revival.env} {o.instance}: {o.action}"
                             + (f": {o.detail}" if o.detail else ""))
                lines += [f"  {note}" for note in o.notes]
            runner = revival.runner
            if runner is not None and (runner.action not in ("already running", "left stopped")
                                       or runner.notes):
                lines.append(f"{revival.env} gitlab-runner: {runner.action}"
                             + (f": {runner.detail}" if runner.detail else ""))
                lines += [f"  {note}" for note in runner.notes]
            lines += _still_wrong(revival)
        return lines

    def others(self) -> list[str]:
        """Instances of other accounts: listed, not acted on, not an error."""
        return [f"{revival.env} {o.instance}: {o.detail}" for revival in self.envs
                for o in revival.instances.outcomes if o.action == "skipped"]

    def as_json(self) -> dict[str, Any]:
        return {"site": self.site, "ok": self.exit_code == EXIT_OK,
                "envs": [e.as_json() for e in self.envs]}


def _still_wrong(revival: EnvRevival) -> list[str]:
    """What the status after reviving still finds wrong, so a failed revive says why."""
    from siteboot.control import status_problems

    return [f"{revival.env} {line}" for line in status_problems(revival.status)]


def revive_envs(plan: Plan, all_envs: bool) -> list[str]:
    """The envs ``revive`` acts on: every env this account has started the site in (from the
    start records) with ``all_envs``, else the plan's own."""
    from siteboot.records import starts_of

    if not all_envs:
        return [plan.env]
    recorded = {r.env for r in starts_of(plan.invoker, plan.site.name)}
    return [env for env in plan.site.envs if env in recorded] or [plan.env]


def revive(plans: Sequence[Plan], root: Path | None, timeout: float = 30.0,
           progress: Reporter | None = None) -> ReviveResult:
    """After maintenance or a fault: make every instance of the invoker's run, and what should
    run in it, without restarting what already runs. Safe to run from cron every few minutes.
    ``progress`` sees the wait for programs to settle."""
    _keep_compiled_templates()
    from siteboot import instances
    from siteboot.control import settle
    from siteboot.progress import SILENT

    revivals = []
    for plan in plans:
        plan, notes = _allocated(plan)
        result = _noting(instances.up(plan, root, None, timeout, replace_hung=True), notes)
        _converge(plan, result.outcomes)
        settled = settle(plan, timeout, progress=progress or SILENT)
        revivals.append(EnvRevival(plan.env, result, settled, _revive_runner(plan)))
    return ReviveResult(plans[0].site.name if plans else "", revivals)


def _revive_runner(plan: Plan) -> RunnerOutcome | None:
    """The site's detached gitlab-runner, when this account runs it (a supervised one is a
    program of its instance and came back with it). An operator's drain or stop is kept."""
    runner = plan.runner
    if runner is None or runner.mode != "detached" or runner.user != plan.invoker \
            or not plan.instance(runner.instance).here:
        return None
    from siteboot import runner as runners

    return runners.revive(plan, respect_operator_stop=True)


def cron(plan: Plan, root: Path | None, install: bool = False, remove: bool = False) -> CronResult:
    """The crontab block that revives the site at boot and every five minutes; with ``install``
    or ``remove``, put it into (or take it out of) the invoker's crontab, idempotently."""
    from siteboot import cron as crontab
    from siteboot.fsutil import ensure_private_dir
    from siteboot.records import records_dir

    log = ensure_private_dir(records_dir(plan.invoker)).parent / f"{plan.site.name}-revive.log"
    lines = crontab.block(plan.site.name, plan.site.path, root, log, plan.preamble(plan.invoker))
    return crontab.apply(plan.site.name, lines, install, remove, log)


def doctor(plan: Plan, root: Path | None) -> DoctorResult:
    """What went wrong after maintenance, each with its fix; changes nothing."""
    from siteboot.doctor import examine

    return examine(plan, root)


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
