"""The commands and what each does, written once: the click CLI takes its command list, order
and one-line summaries from here, and stage 0 (``python3 -m siteboot --help`` on a fresh clone,
before ``init`` has built the tool venv that holds click) answers ``--help`` and ``--version``
with the same text. A test renders both and compares them.

Standard library only, and nothing imported: stage 0 reads it before any dependency exists.
"""

from __future__ import annotations

PROG = "siteboot"
SUMMARY = "Run privilege-separated supervisord instances for a site, without root."
INIT_COMMAND = "python3 -m siteboot init"

# In the order `siteboot --help` lists them: a day's work first, site files last.
COMMANDS: dict[str, str] = {
    "init": "Build venvs, render, start, show status (safe to re-run).",
    "up": "Start the supervisord of every instance you own.",
    "down": "Stop your instances: shutdown, then SIGTERM, then SIGKILL.",
    "status": "Every instance and program of the env (monitoring exit codes).",
    "start": "Start programs and wait until they count as started.",
    "stop": "Stop programs and wait until they have stopped.",
    "restart": "Stop, then start programs.",
    "logs": "Every program's stdout and stderr as one stream, lines named.",
    "tail": "The end of one program's log; -f follows it across rotations.",
    "ctl": "The real supervisorctl against one instance, through a relay.",
    "revive": "Bring back all of yours after a reboot, /tmp purge or kill.",
    "doctor": "Explain what is wrong, each with its fix; change nothing.",
    "cron": "Print or install crontab lines that run `siteboot revive`.",
    "rotate-key": "Give your instances new keys (leaked keys stop working).",
    "ports": "The port matrix: one row per program, one column per env.",
    "check": "Validate site files and the port matrix; report every problem.",
    "render": "Render one supervisord config per instance.",
    "runner": "The site's gitlab-runner: status, revive, drain, stop.",
}

# The options of the command group itself, as `siteboot --help` lists them.
DEBUG_HELP = "Show tracebacks (also SITEBOOT_DEBUG=1)."
GROUP_OPTIONS: dict[str, str] = {
    "--version": "Show the version and exit.",
    "--debug": DEBUG_HELP,
    "-h, --help": "Show this message and exit.",
}

# What a fresh clone needs to know about `init` before it can ask click (names are checked
# against the click command).
INIT_OPTIONS: dict[str, str] = {
    "-e, --env ENV": "The env to bring up [default: dev].",
    "-s, --site SITE": "A site under sites/, or a path to a .toml.",
    "--wheelhouse DIR": "Install from these wheels only (offline nodes).",
    "--no-start": "Build the venvs and render the configs; start nothing.",
}


def version_line(version: str) -> str:
    """What ``--version`` prints (as click's ``version_option`` does)."""
    return f"{PROG}, version {version}"


def _listing(title: str, rows: dict[str, str]) -> list[str]:
    width = max(len(name) for name in rows)
    return [f"{title}:", *(f"  {name.ljust(width)}  {text}" for name, text in rows.items())]


def stage0_help(command: str | None) -> str:
    """``--help`` before the tool venv exists: the commands and their summaries (``command``:
    that one's summary, and for ``init`` its main options); the full help comes with the venv."""
    not_yet = ["  The tool venv (click and the rest) is not built yet:",
               f"  `{INIT_COMMAND}` builds it and brings the site up; every option of",
               "  every command is listed after that."]
    if command is None:
        return "\n".join([f"Usage: {PROG} [OPTIONS] COMMAND [ARGS]...", "", f"  {SUMMARY}", "",
                          *not_yet, "", *_listing("Options", GROUP_OPTIONS), "",
                          *_listing("Commands", COMMANDS)])
    lines = [f"Usage: {PROG} {command} [OPTIONS]", "", f"  {COMMANDS[command]}", ""]
    if command == "init":
        lines += [f"  From a checkout with bare python3: {INIT_COMMAND} --env dev", "",
                  *_listing("Options", INIT_OPTIONS), ""]
    return "\n".join(lines + not_yet)
