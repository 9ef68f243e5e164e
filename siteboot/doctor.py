"""``siteboot doctor``: what goes wrong after maintenance, each finding with its fix.

Read-only: it looks at files, processes, ports and the crontab, changes nothing, and never
sends a key anywhere (``status`` and ``revive`` talk to supervisords; the doctor does not need to).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from siteboot.errors import EXIT_FAILED, EXIT_OK, SitebootError
from siteboot.hints import command
from siteboot.plan import InstancePlan, Plan


@dataclass(frozen=True)
class Finding:
    check: str  # which check: site, runtime, state, ports, stale, orphans, venvs, preamble, runner, cron
    ok: bool
    message: str
    fix: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"check": self.check, "ok": self.ok, "message": self.message, "fix": self.fix}


@dataclass
class DoctorResult:
    site: str
    env: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.problems else EXIT_OK

    def as_json(self) -> dict[str, Any]:
        return {"site": self.site, "env": self.env, "ok": not self.problems,
                "findings": [f.as_json() for f in self.findings]}


def examine(plan: Plan, root: Path | None, checks: list[Callable[[Plan, Path | None], list[Finding]]]
            | None = None) -> DoctorResult:
    """Run every check; one that cannot run says so instead of stopping the others."""
    result = DoctorResult(plan.site.name, plan.env)
    for check in checks or CHECKS:
        try:
            result.findings += check(plan, root)
        except (SitebootError, OSError) as exc:
            result.findings.append(Finding(check.__name__.replace("check_", ""), False,
                                           f"could not check: {exc}"))
    return result


def _hint(plan: Plan, verb: str, program: str = "siteboot") -> str:
    """A command that works when pasted: for the site and env that were examined."""
    return f"`{command(verb, env=plan.env, program=program)}`"


def check_site(plan: Plan, root: Path | None) -> list[Finding]:
    """The site file and root in use, against where this account started the site before."""
    from siteboot.records import starts_of

    where = f"site file {plan.site.path}" + (f", root {root}" if root else ", shipped templates")
    findings = [Finding("site", True, f"using {where}")]
    elsewhere = sorted({r.site_path for r in starts_of(plan.invoker, plan.site.name)
                        if r.site_path != str(plan.site.path)})
    for path in elsewhere:
        findings.append(Finding(
            "site", False, f"site {plan.site.name} was started from {path}, not {plan.site.path}: "
            "a different directory or site root than this one",
            f"run from the checkout that holds {path}, or pass `--site {path}`"))
    return findings


def check_runtime(plan: Plan, root: Path | None) -> list[Finding]:
    """Each own instance's runtime dir: there (if the instance runs), ours, real, private."""
    from siteboot.fsutil import owner_name
    from siteboot.instances import find_supervisord

    findings = []
    for inst in _owned(plan):
        path = inst.runtime_dir
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            running = find_supervisord(inst)
            if running is not None:
                findings.append(Finding("runtime", False, f"{inst.name}: runtime dir {path} is gone "
                                        f"while supervisord pid {running.pid} runs (a /tmp cleaner?)",
                                        _hint(plan, "revive") + " restores it without restarting "
                                        "programs"))
            continue
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            findings.append(Finding("runtime", False, f"{inst.name}: {path} is not a directory "
                                    "(a symlink?): refused", f"remove {path}, or change runtime_dir"))
        elif info.st_uid != os.geteuid():
            findings.append(Finding("runtime", False, f"{inst.name}: runtime dir {path} belongs to "
                                    f"{owner_name(info.st_uid)}", "its owner must remove it, or "
                                    "change runtime_dir in the site file"))
        elif stat.S_IMODE(info.st_mode) & 0o077:
            findings.append(Finding("runtime", False, f"{inst.name}: runtime dir {path} is mode "
                                    f"{stat.S_IMODE(info.st_mode):o}, not 700", f"chmod 700 {path}"))
    return findings


def check_state(plan: Plan, root: Path | None) -> list[Finding]:
    """State dirs 0700, key dirs 0700, keys 0600 regular files of the owner."""
    findings = []
    for inst in _owned(plan):
        for path, mode in ((inst.state_dir, 0o700), (inst.key_path.parent, 0o700),
                           (inst.key_path, 0o600)):
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            kind_ok = stat.S_ISREG(info.st_mode) if mode == 0o600 else stat.S_ISDIR(info.st_mode)
            if not kind_ok:
                findings.append(Finding("state", False, f"{inst.name}: {path} is not a "
                                        f"{'file' if mode == 0o600 else 'directory'}",
                                        f"remove {path}; {_hint(plan, 'up')} makes it anew"))
            elif info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & ~mode & 0o777:
                findings.append(Finding("state", False, f"{inst.name}: {path} is mode "
                                        f"{stat.S_IMODE(info.st_mode):o} (uid {info.st_uid})",
                                        f"chmod {mode:o} {path}"))
    return findings


def check_ports(plan: Plan, root: Path | None) -> list[Finding]:
    """A port of this env held by a process outside the site: pid, user, command."""
    from siteboot.ports import in_use_problems

    problems = in_use_problems(plan.site, "error", envs={plan.env})
    return [Finding("ports", False, p.message, "stop that process, or move the port in the site "
                    f"file ({_hint(plan, 'check')} finds clashes)") for p in problems]


def check_stale(plan: Plan, root: Path | None) -> list[Finding]:
    """Pidfiles and sockets that no live supervisord of the instance stands behind."""
    from siteboot.instances import find_supervisord, read_pidfile

    findings = []
    for inst in _owned(plan):
        if find_supervisord(inst) is not None:
            continue
        pid = read_pidfile(inst)
        if os.path.lexists(inst.pidfile):
            findings.append(Finding("stale", False, f"{inst.name}: stale pidfile {inst.pidfile} "
                                    f"(pid {pid}, not this instance's supervisord)",
                                    _hint(plan, "up") + " removes it (the pid is never signalled)"))
        if os.path.lexists(inst.socket_path):
            findings.append(Finding("stale", False, f"{inst.name}: stale socket {inst.socket_path}",
                                    _hint(plan, "up") + " removes it"))
    return findings


def check_orphans(plan: Plan, root: Path | None) -> list[Finding]:
    """Programs a killed supervisord left running, and instances the site no longer describes."""
    from siteboot.instances import find_orphans, find_supervisord
    from siteboot.records import is_running, orphaned

    findings = []
    for inst in _owned(plan):
        left = find_orphans(inst, find_supervisord(inst))
        if left:
            pids = ", ".join(str(p.pid) for p in left)
            findings.append(Finding("orphans", False, f"{inst.name}: {len(left)} program "
                                    f"process(es) without their supervisord (pids {pids})",
                                    _hint(plan, "revive") + " stops them and starts the instance"))
    for record in orphaned(plan):
        if is_running(record):
            findings.append(Finding("orphans", False, f"instance {record.instance} (pid {record.pid},"
                                    f" runtime dir {record.runtime_dir}) runs but is no longer in "
                                    "the site", _hint(plan, "down --orphans")))
    return findings


def check_venvs(plan: Plan, root: Path | None) -> list[Finding]:
    """The tool venv matches its stamp; each app venv of an own program exists and runs."""
    from siteboot.bootstrap.locate import find_checkout, tool_venv_path
    from siteboot.venvs import broken_reason

    findings = []
    checkout = find_checkout()
    if checkout is not None:
        from siteboot.bootstrap.stamp import interpreter_moved, is_current

        venv = tool_venv_path(checkout)
        # no tool venv at all is fine (siteboot runs from another environment); a broken one
        # is what a module upgrade or a moved python leaves behind
        if os.path.lexists(venv) and not is_current(checkout, venv):
            reason = interpreter_moved(venv) or ("its python moved, or siteboot's dependencies "
                                                 "changed")
            findings.append(Finding("venvs", False, f"the tool venv {venv} is out of date or "
                                    f"broken: {reason}",
                                    _hint(plan, "init", "python3 -m siteboot") + " rebuilds it"))
    seen: set[Path] = set()
    for inst in _owned(plan):
        for program in inst.programs:
            if program.venv is None or program.venv in seen:
                continue
            seen.add(program.venv)
            why = broken_reason(program.venv)
            if why:
                findings.append(Finding("venvs", False, f"app venv {program.venv} (program "
                                        f"{program.name}): {why}", _hint(plan, "init")
                                        + " builds it again"))
    return findings


def check_preamble(plan: Plan, root: Path | None) -> list[Finding]:
    """The login preamble's file: there, and nobody else's to change (it runs as each account)."""
    from siteboot.login import file_problem
    from siteboot.plan import preamble_path

    path = preamble_path(plan.site, plan.invoker)
    if path is None:
        return []
    problem = file_problem(path)
    if problem:
        return [Finding("preamble", False, problem, f"fix it, or [site] preamble_file in "
                        f"{plan.site.path}")]
    return [Finding("preamble", True, f"programs start after `. {path}` in a login shell")]


def check_runner(plan: Plan, root: Path | None) -> list[Finding]:
    """The site's detached gitlab-runner: running, once (a supervised one is a program)."""
    runner = plan.runner
    if runner is None or runner.mode != "detached" or runner.user != plan.invoker:
        return []
    from siteboot import runner as runners

    found = runners.status(plan)
    findings = [Finding("runner", False, problem, f"stop the extra one: {_hint(plan, 'runner stop')}"
                        ", then " + _hint(plan, "runner revive")) for problem in found.problems]
    if found.state == "not running":
        findings.append(Finding("runner", False, f"the gitlab-runner for {runner.config} is not "
                                "running", _hint(plan, "runner revive")))
    elif not findings:
        findings.append(Finding("runner", True, f"gitlab-runner {found.state}"
                                + (f" (pid {', '.join(map(str, found.pids))})" if found.pids else "")))
    return findings


def check_cron(plan: Plan, root: Path | None) -> list[Finding]:
    """After a reboot nothing comes back unless cron revives it."""
    from siteboot.cron import markers, read_crontab

    try:
        lines = read_crontab()
    except SitebootError as exc:
        return [Finding("cron", False, f"cannot read the crontab: {exc.message}",
                        exc.hint or "install cron, or revive the site by hand after each reboot")]
    begin, _ = markers(plan.site.name)
    if begin in lines:
        return [Finding("cron", True, "the crontab revives the site at boot and every 5 minutes")]
    return [Finding("cron", False, "no crontab line revives this site after a reboot",
                    _hint(plan, "cron --install"))]


CHECKS: list[Callable[[Plan, Path | None], list[Finding]]] = [
    check_site, check_runtime, check_state, check_ports, check_stale, check_orphans, check_venvs,
    check_preamble, check_runner, check_cron]


def _owned(plan: Plan) -> list[InstancePlan]:
    return [inst for inst in plan.instances.values() if plan.owns(inst) and inst.here]
