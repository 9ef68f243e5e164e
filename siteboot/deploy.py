"""Deploys: what differs from what runs, releases with rollback, one deploy at a time.

A *release* is what one deploy brought: a folder in the deployer's state dir
(``Plan.releases_dir``) named ``<UTC time>-<git commit>``, holding a copy of the site file
(``sites/``), of the template used (``templates/``), previews of the rendered configs
(``configs/``, placeholder key hash) and ``release.json``. Its ``sites/`` and ``templates/``
make it a site root of its own: a rollback renders from it exactly what that deploy rendered.
``pointers.json`` names the current and the previous release; the last ``keep_releases`` are
kept, and the current and the previous one never go.

A deploy builds the venvs, makes the release, starts the instances that are down and applies
the new configs to the others (exactly the changed programs restart, ``instances.apply_config``),
starts what should run (``control.converge``), waits until it settled and checks the status. If
any of the invoker's instances is then not all well, the previous release is applied again the
same way, and the deploy fails saying what failed and that it rolled back.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from siteboot.errors import EXIT_FAILED, EXIT_OK, InstanceError, SitebootError, UsageError
from siteboot.fsutil import atomic_write, ensure_private_dir, flock
from siteboot.plan import InstancePlan, Plan, Selection
from siteboot.progress import SILENT, Reporter

if TYPE_CHECKING:
    from siteboot.changes import ConfigChanges
    from siteboot.deployrequest import RequestOutcome
    from siteboot.instances import LifecycleResult
    from siteboot.statusreport import StatusResult
    from siteboot.venvs import VenvOutcome

LOCK_TIMEOUT = 600.0
POINTERS = "pointers.json"
RELEASE_FILE = "release.json"
NO_COMMIT = "nogit"


# ------------------------------------------------------------------------------------------
# diff


@dataclass
class InstanceDiff:
    instance: str
    state: str  # "same", "differs", "not running", "skipped", "failed"
    changes: ConfigChanges | None = None
    detail: str = ""

    def lines(self) -> list[str]:
        """What differs, one line each (programs with their keys, then server settings)."""
        if self.changes is None:
            return []
        from siteboot.hints import command

        restart = (f"`{command('down', instance=self.instance)}` then "
                   f"`{command('up', instance=self.instance)}`")
        return ([c.describe() for c in self.changes.programs]
                + [f"server setting {key} changed (applied by {restart})"
                   for key in self.changes.server])

    def as_json(self) -> dict[str, Any]:
        return {"instance": self.instance, "state": self.state, "detail": self.detail,
                "changes": self.changes.as_json() if self.changes else None}


@dataclass
class DiffResult:
    instances: list[InstanceDiff]

    @property
    def exit_code(self) -> int:
        same = all(d.state in ("same", "skipped") for d in self.instances)
        return EXIT_OK if same else EXIT_FAILED

    def as_json(self) -> dict[str, Any]:
        return {"same": self.exit_code == EXIT_OK,
                "instances": [d.as_json() for d in self.instances]}


def diff(plan: Plan, root: Path | None) -> DiffResult:
    """The checkout's render against what each of the invoker's running instances has loaded
    (the venv builds are in the programs' environments: ``venvs.with_builds``)."""
    return DiffResult([diff_instance(plan, inst_name, root) for inst_name in plan.instances])


def diff_instance(plan: Plan, name: str, root: Path | None) -> InstanceDiff:
    from siteboot.changes import ConfigChanges, ProgramChange
    from siteboot.instances import find_supervisord, loaded_changes, rendered
    from siteboot.keys import read_own_key
    from siteboot.rpc import connect

    inst = plan.instance(name)
    if not plan.owns(inst):
        if inst.grants_deploy:  # what its loaded config is, only its owner's siteboot reads
            return InstanceDiff(name, "skipped", detail=f"owned by {inst.user}, who grants "
                                f"deploy to {inst.group}: `siteboot deploy` asks its deploy "
                                f"agent to apply the checkout; `siteboot diff` as {inst.user} "
                                "shows what differs")
        return InstanceDiff(name, "skipped", detail=f"owned by {inst.user}: run as {inst.user}")
    if find_supervisord(inst) is None:
        every = ConfigChanges([ProgramChange(p.name, "added") for p in inst.programs])
        return InstanceDiff(name, "not running", every, "a deploy (or `siteboot up`) starts it")
    try:
        key = read_own_key(inst)
        changes = loaded_changes(inst, rendered(plan, inst, root, key), connect(plan, inst, 10.0))
        changes = with_file_changes(changes, changed_files(plan, inst, root))
    except SitebootError as exc:
        return InstanceDiff(name, "failed", detail=exc.message)
    return InstanceDiff(name, "differs" if not changes.empty else "same", changes)


def changed_files(plan: Plan, inst: InstancePlan, root: Path | None) -> dict[str, list[str]]:
    """program -> its ``[files]`` whose rendered content differs from what its instance's
    programs last started with (rendered only: nothing is written)."""
    from siteboot.render import render_files
    from siteboot.sitefiles import SiteFiles, restarts, secret_store

    hashes = {f.name: f.sha256 for f in render_files(plan, inst, root, secret_store(inst))}
    return restarts(inst, SiteFiles(hashes=hashes))


def with_file_changes(changes: ConfigChanges, files: dict[str, list[str]]) -> ConfigChanges:
    """``changes`` with a ``file NAME`` key for each changed file of each program reading it."""
    from dataclasses import replace

    from siteboot.changes import ProgramChange

    programs = list(changes.programs)
    for program, names in files.items():
        keys = tuple(f"file {name}" for name in names)
        at = next((i for i, c in enumerate(programs) if c.program == program), None)
        if at is None:
            programs.append(ProgramChange(program, "changed", keys))
        elif programs[at].change == "changed":
            programs[at] = replace(programs[at], keys=programs[at].keys + keys)
    return replace(changes, programs=programs)


# ------------------------------------------------------------------------------------------
# Releases


@dataclass(frozen=True)
class Release:
    id: str
    path: Path
    commit: str
    created: float
    source: str  # the site file it was made from
    failed: str = ""  # why its deploy failed (and was rolled back), if it did
    requester: str = ""  # the member of a deploy grant whose request made it (``deployrequest``)

    @property
    def site_file(self) -> Path:
        return next((self.path / "sites").glob("*.toml"))

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "path": str(self.path), "commit": self.commit,
                "created": self.created, "source": self.source, "failed": self.failed,
                "requester": self.requester}


@dataclass(frozen=True)
class Pointers:
    current: str | None = None
    previous: str | None = None


def git_commit(folder: Path) -> str:
    """The short commit of the checkout holding ``folder``, or ``nogit``."""
    from siteboot.proc import run_command

    result = run_command(["git", "-C", str(folder), "rev-parse", "--short=12", "HEAD"], timeout=30)
    commit = result.output.strip()
    return commit if result.returncode == 0 and commit.isalnum() else NO_COMMIT


def read_pointers(plan: Plan) -> Pointers:
    try:
        data = json.loads((plan.releases_dir / POINTERS).read_text(encoding="utf-8"))
        return Pointers(data.get("current"), data.get("previous"))
    except (OSError, ValueError, AttributeError):
        return Pointers()


def _write_pointers(plan: Plan, pointers: Pointers) -> None:
    atomic_write(plan.releases_dir / POINTERS, json.dumps(
        {"current": pointers.current, "previous": pointers.previous}, indent=2) + "\n", mode=0o600)


def _read_release(path: Path) -> Release | None:
    try:
        data = json.loads((path / RELEASE_FILE).read_text(encoding="utf-8"))
        return Release(data["id"], path, data["commit"], float(data["created"]), data["source"],
                       data.get("failed", ""), data.get("requester", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_releases(plan: Plan) -> list[Release]:
    """Every release of the site and env, oldest first."""
    try:
        entries = sorted(os.listdir(plan.releases_dir))
    except OSError:
        return []
    found = (_read_release(plan.releases_dir / name) for name in entries)
    return [release for release in found if release is not None]


def find_release(plan: Plan, release_id: str) -> Release:
    releases = {r.id: r for r in list_releases(plan)}
    if release_id not in releases:
        from siteboot.errors import did_you_mean

        raise UsageError(f"no release '{release_id}' of {plan.site.name} {plan.env}"
                         + did_you_mean(release_id, releases),
                         "`siteboot releases` lists them")
    return releases[release_id]


def make_release(plan: Plan, root: Path | None, now: float | None = None,
                 requester: str = "", commit: str | None = None) -> Release:
    """A new release folder: the site file and template copied, previews of the configs.
    ``requester``, ``commit``: a deploy agent's, from the member's request."""
    from siteboot.render import CONFIG_TEMPLATE, render_preview
    from siteboot.resources import config_template

    created = time.time() if now is None else now
    commit = commit or git_commit(plan.site.path.parent)
    ensure_private_dir(plan.releases_dir.parent)
    ensure_private_dir(plan.releases_dir)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(created))
    release_id, n = f"{stamp}-{commit}", 1
    while os.path.lexists(plan.releases_dir / release_id):  # two deploys in one second
        n += 1
        release_id = f"{stamp}-{commit}-{n}"
    path = ensure_private_dir(plan.releases_dir / release_id)
    for folder in ("sites", "templates", "configs"):
        ensure_private_dir(path / folder)
    atomic_write(path / "sites" / plan.site.path.name, plan.site.path.read_bytes(), mode=0o600)
    _copy_templates(root, path / "templates")
    atomic_write(path / "templates" / CONFIG_TEMPLATE,
                 config_template(root, CONFIG_TEMPLATE).read_bytes(), mode=0o600)
    for inst in plan.instances.values():
        atomic_write(path / "configs" / inst.conf_path.name, render_preview(plan, inst, root),
                     mode=0o600)
    release = Release(release_id, path, commit, created, str(plan.site.path),
                      requester=requester)
    _write_release(release)
    return release


def _copy_templates(root: Path | None, into: Path) -> None:
    """The site root's ``templates/`` (the ``[files]`` templates too), each file 0600."""
    source = root / "templates" if root is not None else None
    if source is None or not source.is_dir():
        return
    for dirpath, _dirnames, filenames in os.walk(source):
        folder = into / Path(dirpath).relative_to(source)
        ensure_private_dir(folder)
        for name in filenames:
            atomic_write(folder / name, (Path(dirpath) / name).read_bytes(), mode=0o600)


def _write_release(release: Release) -> None:
    data = release.as_json()
    data.pop("path")
    atomic_write(release.path / RELEASE_FILE, json.dumps(data, indent=2) + "\n", mode=0o600)


def release_plan(plan: Plan, release: Release) -> Plan:
    """``plan``'s env as ``release`` describes it (its copy of the site file)."""
    from siteboot.plan import make_plan
    from siteboot.site import load_site

    return make_plan(load_site(release.site_file), plan.env, plan.invoker)


def prune(plan: Plan, pointers: Pointers) -> list[str]:
    """Delete the oldest releases beyond ``keep_releases``; never the current or previous one."""
    keep = {pointers.current, pointers.previous}
    releases = list_releases(plan)
    removed = []
    for release in releases[:max(0, len(releases) - plan.site.keep_releases)]:
        if release.id in keep:
            continue
        shutil.rmtree(release.path, ignore_errors=True)
        removed.append(release.id)
    return removed


# ------------------------------------------------------------------------------------------
# The lock


@contextmanager
def deploy_lock(plan: Plan, timeout: float = LOCK_TIMEOUT,
                progress: Reporter = SILENT) -> Iterator[None]:
    """One deploy or rollback of the site and env at a time; a second one waits (saying who holds
    the lock) up to ``timeout``, then fails naming the holder."""
    path = plan.deploy_lock_path
    ensure_private_dir(plan.invoker_state_dir)
    ensure_private_dir(path.parent)
    holder_path = path.with_name(path.name + ".holder")
    holder = _holder(holder_path)

    def waiting() -> None:
        progress.note(f"waiting for the deploy lock of {plan.site.name} {plan.env}, held by "
                      f"{holder} (up to {timeout:g} s)")

    with flock(path, timeout=timeout, on_wait=waiting, error=InstanceError,
               what=f"the deploy lock of {plan.site.name} {plan.env}, held by {holder},"):
        atomic_write(holder_path, json.dumps({"pid": os.getpid(), "user": plan.invoker,
                                              "since": time.time()}) + "\n", mode=0o600)
        yield


def _holder(path: Path) -> str:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        since = time.strftime("%H:%M:%S", time.localtime(float(data["since"])))
        return f"pid {data['pid']} of {data['user']} since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another siteboot"


# ------------------------------------------------------------------------------------------
# deploy and rollback


@dataclass
class Applied:
    """One release applied to the invoker's instances, and the status once it settled."""

    release: str
    instances: LifecycleResult
    status: StatusResult
    failures: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"release": self.release, "instances": self.instances.as_json(),
                "status": self.status.as_json(), "failures": self.failures}


@dataclass
class DeployResult:
    release: str
    previous: str | None
    venvs: list[VenvOutcome]
    applied: Applied | None  # None: it failed before anything was applied
    failures: list[str]  # what failed (empty: deployed)
    rollback: Applied | None = None  # the previous release applied again
    pruned: list[str] = field(default_factory=list)
    # instances of other accounts granting deploy: what their agents did with our requests
    requests: list[RequestOutcome] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.failures or not all(r.ok for r in self.requests) else EXIT_OK

    @property
    def rolled_back(self) -> bool:
        return self.rollback is not None and not self.rollback.failures

    def as_json(self) -> dict[str, Any]:
        return {"ok": not self.failures, "release": self.release, "previous": self.previous,
                "venvs": [v.as_json() for v in self.venvs],
                "applied": self.applied.as_json() if self.applied else None,
                "failures": self.failures,
                "rolled_back_to": self.rollback.release if self.rollback else None,
                "rollback": self.rollback.as_json() if self.rollback else None,
                "pruned": self.pruned, "requests": [r.as_json() for r in self.requests]}


def apply_release(plan: Plan, root: Path | None, release: str, timeout: float,
                  progress: Reporter = SILENT, instance: Selection = None) -> Applied:
    """Start the invoker's instances that are down, apply the config to the others (exactly the
    changed programs restart), start what should run, wait until it settled, check the status."""
    from siteboot import instances
    from siteboot.control import settle, status_problems
    from siteboot.readiness import converge_outcomes

    result = instances.up(plan, root, instance, timeout)
    converge_outcomes(plan, result.outcomes)
    settled = settle(plan, timeout, progress=progress, every_program=True)
    owned = {inst.name for inst in plan.select(instance) if plan.owns(inst)}
    failed = {o.instance for o in result.outcomes if o.action == "failed"}
    failures = [f"{o.instance}: {o.detail}" for o in result.outcomes if o.instance in failed]
    failures += status_problems(settled, owned - failed)  # what the outcomes did not say
    failures += [str(late) for late in _not_ready(plan, owned - failed)]
    return Applied(release, result, settled, failures)


def _not_ready(plan: Plan, instances: set[str]) -> list[Any]:
    """RUNNING is not serving: the programs with a ``ready`` probe that should run are waited
    for, each up to its ``ready_timeout``; those that do not get ready (``NotReady``)."""
    from siteboot.readiness import wait_ready
    from siteboot.records import operator_stops

    late = []
    for name in sorted(instances):
        inst = plan.instance(name)
        held = operator_stops(inst)
        probed = [p.name for p in inst.programs if p.probe is not None and p.autostart
                  and not set(p.process_names()) <= held]
        if probed:
            late += wait_ready(plan, inst, probed)
    return late


def deploy(plan: Plan, root: Path | None, wheelhouse: Path | None = None, timeout: float = 60.0,
           lock_timeout: float = LOCK_TIMEOUT, progress: Reporter = SILENT,
           instance: str | None = None, requester: str = "",
           commit: str | None = None) -> DeployResult:
    """Bring the env to the checkout: venvs, a new release, apply, verify; roll back on failure.

    ``instance``, ``requester``, ``commit``: a deploy agent applies a member's request to its
    one instance; the release names the member and the commit of the member's checkout."""
    with deploy_lock(plan, lock_timeout, progress):
        return _deploy_locked(plan, root, wheelhouse, timeout, progress, instance, requester,
                              commit)


def _deploy_locked(plan: Plan, root: Path | None, wheelhouse: Path | None, timeout: float,
                   progress: Reporter, instance: str | None, requester: str,
                   commit: str | None) -> DeployResult:
    from siteboot.venvs import ensure_venvs

    pointers = read_pointers(plan)
    release = make_release(plan, root, requester=requester, commit=commit)
    try:
        venvs = ensure_venvs(plan, wheelhouse, progress=progress)
    except SitebootError as exc:  # a failed build changed nothing: nothing to roll back
        _mark_failed(release, exc.message)
        return DeployResult(release.id, pointers.current, [], None, [exc.message])
    applied = apply_release(plan, root, release.id, timeout, progress, instance)
    if not applied.failures:
        pointers = Pointers(release.id, pointers.current)
        _write_pointers(plan, pointers)
        return DeployResult(release.id, pointers.previous, venvs, applied, [],
                            pruned=prune(plan, pointers))
    _mark_failed(release, "; ".join(applied.failures))
    result = DeployResult(release.id, pointers.current, venvs, applied, applied.failures)
    if pointers.current is not None:
        progress.note(f"deploy failed; rolling back to {pointers.current}")
        result.rollback = _reapply(plan, find_release(plan, pointers.current), wheelhouse,
                                   timeout, progress, instance)
    return result


def _mark_failed(release: Release, why: str) -> None:
    from dataclasses import replace

    _write_release(replace(release, failed=why))


def _reapply(plan: Plan, release: Release, wheelhouse: Path | None, timeout: float,
             progress: Reporter = SILENT, instance: str | None = None) -> Applied:
    """Apply ``release`` again from its own copies of the site file and template."""
    from siteboot.venvs import ensure_venvs

    try:
        target = release_plan(plan, release)
        # the build it used is kept while it is the previous one: usually nothing to build
        ensure_venvs(target, wheelhouse, progress=progress)
        return apply_release(target, release.path, release.id, timeout, progress, instance)
    except SitebootError as exc:
        from siteboot.instances import LifecycleResult
        from siteboot.statusreport import StatusResult

        return Applied(release.id, LifecycleResult([]), StatusResult(plan.site.name, plan.env, []),
                       [exc.message])


@dataclass
class RollbackResult:
    release: str
    replaced: str | None
    applied: Applied
    requests: list[RequestOutcome] = field(default_factory=list)  # as ``DeployResult``'s

    @property
    def exit_code(self) -> int:
        failed = self.applied.failures or not all(r.ok for r in self.requests)
        return EXIT_FAILED if failed else EXIT_OK

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.exit_code == EXIT_OK, "release": self.release,
                "replaced": self.replaced, "applied": self.applied.as_json(),
                "requests": [r.as_json() for r in self.requests]}


def rollback(plan: Plan, to: str | None = None, wheelhouse: Path | None = None,
             timeout: float = 60.0, lock_timeout: float = LOCK_TIMEOUT,
             progress: Reporter = SILENT, instance: str | None = None) -> RollbackResult:
    """Apply an earlier release again (default: the previous one); it becomes the current one.
    ``instance``: only that one of the invoker's instances (a deploy agent's request)."""
    with deploy_lock(plan, lock_timeout, progress):
        pointers = read_pointers(plan)
        target_id = to or pointers.previous
        if target_id is None:
            raise UsageError(f"no previous release of {plan.site.name} {plan.env} to roll back to",
                             "`siteboot releases` lists them; name one with --to ID")
        applied = _reapply(plan, find_release(plan, target_id), wheelhouse, timeout, progress,
                           instance)
        if not applied.failures and target_id != pointers.current:
            _write_pointers(plan, Pointers(target_id, pointers.current))
        return RollbackResult(target_id, pointers.current, applied)


def nothing_to_roll_back(plan: Plan) -> RollbackResult:
    """The invoker's own part of a rollback when it has no release (only granted instances)."""
    from siteboot.instances import LifecycleResult
    from siteboot.statusreport import StatusResult

    return RollbackResult("", read_pointers(plan).current, Applied(
        "", LifecycleResult([]), StatusResult(plan.site.name, plan.env, []), []))


@dataclass
class ReleasesResult:
    releases: list[Release]
    pointers: Pointers
    exit_code = EXIT_OK

    def as_json(self) -> dict[str, Any]:
        return {"current": self.pointers.current, "previous": self.pointers.previous,
                "releases": [r.as_json() for r in self.releases]}


def releases(plan: Plan) -> ReleasesResult:
    return ReleasesResult(list_releases(plan), read_pointers(plan))
