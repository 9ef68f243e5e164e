"""The login environment: a site's preamble before each program, in a login shell, then exec."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from siteboot.login import LOGIN_SHELL, WRAPPER_NAME, file_problem, in_preamble, wrap, wrap_command
from siteboot.render import render_preview
from siteboot.site import parse_site
from tests.helpers import plan_from, supervisor_parse, wait_until

SITE = """
    [site]
    name = "t"
    envs = ["dev"]
    runtime_dir = "{folder}/run"
    state_dir = "{folder}/state"
    {site_extra}

    [instances.main]
    port = {{ dev = 40001 }}

    [programs.web]
    instance = "main"
    command = "{{python}} -m http.server {{port}} --directory '/srv/a b'"
    port = {{ dev = 41001 }}
    """

ARGV = ["printf", "%s|", "two words", "$HOME", "it's", '"quoted"', "*"]


def run_wrapped(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60,
                          env={**os.environ, **(env or {})})


def test_no_preamble_leaves_the_command_alone():
    assert wrap([], ARGV) == ARGV
    assert wrap_command([], "a 'b c'") == "a 'b c'"


def test_the_command_reaches_exec_word_for_word():
    wrapped = wrap(["export GREETING=hello"], ARGV)
    assert wrapped[:2] == [LOGIN_SHELL, "-lc"]
    assert wrapped[3] == WRAPPER_NAME
    assert in_preamble(wrapped)
    assert not in_preamble(ARGV)
    result = run_wrapped(wrapped)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "two words|$HOME|it's|\"quoted\"|*|"  # nothing expanded twice


def test_each_line_is_one_command_and_the_environment_carries_over():
    lines = ["export A=1; export B=2  # a comment ends the line, not the preamble",
             'if [ -n "$A" ]; then export C=$A$B; fi']
    result = run_wrapped(wrap(lines, ["sh", "-c", 'echo "$A $B $C"']))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1 2 12\n"


def test_a_failing_line_stops_the_start_and_says_so():
    result = run_wrapped(wrap(["export A=1", "false", "export B=2"], ["touch", "/nonexistent/x"]))
    assert result.returncode == 1
    assert "siteboot: the preamble failed (exit 1): not starting touch" in result.stderr


def test_it_is_a_login_shell(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bash_profile").write_text("export FROM_PROFILE=yes\n")
    result = run_wrapped(wrap(["true"], ["sh", "-c", 'echo "$FROM_PROFILE"']),
                         env={"HOME": str(home)})
    assert result.stdout == "yes\n", result.stderr


def test_exec_keeps_the_pid(spawn):
    """The process started is the program once the preamble is done: no shell stays between."""
    started = spawn(*wrap(["true"], ["sleep", "30"]))

    def cmdline() -> list[bytes]:
        return Path(f"/proc/{started.pid}/cmdline").read_bytes().split(b"\0")

    assert wait_until(lambda: cmdline()[0] == b"sleep")
    assert cmdline()[:2] == [b"sleep", b"30"]


def test_programs_are_wrapped_as_supervisord_reads_them(tmp_path):
    plan = plan_from(SITE.format(folder=tmp_path, site_extra='preamble = ["module load python/3.11"]'),
                     tmp_path)
    [program] = plan.instance("main").programs
    conf = tmp_path / "supervisord.conf"
    conf.write_text(render_preview(plan, plan.instance("main"), None))
    [group] = supervisor_parse(conf).process_group_configs
    [config] = group.process_configs
    argv = shlex.split(config.command)  # supervisord's own split
    assert argv[:4] == [LOGIN_SHELL, "-lc", argv[2], WRAPPER_NAME]
    assert "eval 'module load python/3.11' && exec \"$@\"" in argv[2]
    assert argv[4:] == [sys.executable, "-m", "http.server", "41001", "--directory", "/srv/a b"]
    assert program.command == config.command


def test_a_preamble_file_is_sourced_relative_to_the_site_file(tmp_path):
    plan = plan_from(SITE.format(folder=tmp_path, site_extra='preamble_file = "env/login.sh"'),
                     tmp_path)
    [program] = plan.instance("main").programs
    assert f"eval '. {tmp_path}/env/login.sh'" in shlex.split(program.command)[2]
    absolute = plan_from(SITE.format(folder=tmp_path, site_extra='preamble_file = "/etc/hpc.sh"'),
                         tmp_path)
    assert "eval '. /etc/hpc.sh'" in shlex.split(absolute.instance("main").programs[0].command)[2]


def test_a_supervised_runner_gets_the_preamble_too(tmp_path):
    text = SITE.format(folder=tmp_path, site_extra='preamble = ["module load go"]') + """
    [runner]
    instance = "main"
    executable = "/opt/gitlab-runner"
    """
    plan = plan_from(text, tmp_path)
    runner = plan.instance("main").program("gitlab-runner")
    argv = shlex.split(runner.command)
    assert argv[3:] == [WRAPPER_NAME, *plan.runner.argv()]


@pytest.mark.parametrize(("extra", "message"), [
    ('preamble = ["a", "b\\nc"]', "one shell line per list item"),
    ('preamble = ["  "]', "'preamble' has an empty line"),
    ('preamble = ["a"]\npreamble_file = "/x"', "exclude each other"),
    ('preamble = ["module load x # the default"]', "reads as a comment in supervisord's config"),
    ('preamble = "module load x"', "'preamble' must be a list of strings"),
])
def test_bad_preambles_are_refused(tmp_path, extra, message):
    path = tmp_path / "t.toml"
    path.write_text(SITE.format(folder=tmp_path, site_extra=extra).replace("\n    ", "\n"))
    _, problems = parse_site(path)
    assert any(message in str(p) for p in problems), problems


def test_a_command_supervisord_cannot_split_is_refused(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(SITE.format(folder=tmp_path, site_extra="").replace("\n    ", "\n")
                    .replace("--directory '/srv/a b'", "--directory '/srv/a b"))
    _, problems = parse_site(path)
    assert any("'command' cannot be split into words" in str(p) for p in problems), problems


def test_a_preamble_file_must_be_there_and_nobody_elses_to_change(tmp_path):
    folder = tmp_path / "env"
    folder.mkdir(mode=0o755)
    script = folder / "login.sh"
    assert file_problem(script) == f"preamble_file {script} does not exist"
    script.write_text("module load python/3.11\n")
    script.chmod(0o644)
    assert file_problem(script) is None
    script.chmod(0o664)
    assert file_problem(script) == f"preamble_file {script}: login.sh is writable by its group"
    script.chmod(0o644)
    folder.chmod(0o777)  # someone else could swap the file
    assert "is writable by everyone" in (file_problem(script) or "")


def test_a_preamble_file_under_a_folder_another_account_controls_is_refused(tmp_path):
    """It is sourced at every start, long after ``up`` checked it: whoever owns a folder on
    its way could rename the checked folder away and put one of theirs in its place."""
    theirs = tmp_path / "theirs"
    folder = theirs / "env"
    folder.mkdir(parents=True, mode=0o755)
    script = folder / "login.sh"
    script.write_text("module load python/3.11\n")
    script.chmod(0o644)
    os.chmod(theirs, 0o755)
    assert file_problem(script) is None
    os.chown(theirs, 65534, 65534)
    assert file_problem(script) == (f"preamble_file {script}: {folder} lies under {theirs}, "
                                    "which belongs to nobody: that account could rename or "
                                    "replace it")
    os.chown(theirs, 0, 0)
    os.chmod(theirs, 0o777)  # anyone may rename env/ away
    assert "may write without the sticky bit" in (file_problem(script) or "")
    os.chmod(theirs, 0o1777)  # sticky, like /tmp: only env/'s owner may
    assert file_problem(script) is None


def test_doctor_and_up_check_the_preamble_file(tmp_path):
    from siteboot.doctor import check_preamble
    from siteboot.errors import UsageError
    from siteboot.instances import _check_preamble_file

    plan = plan_from(SITE.format(folder=tmp_path, site_extra='preamble_file = "login.sh"'),
                     tmp_path)
    [finding] = check_preamble(plan, None)
    assert (finding.ok, finding.check) == (False, "preamble")
    assert "does not exist" in finding.message
    with pytest.raises(UsageError, match="every program of main would fail to start"):
        _check_preamble_file(plan, plan.instance("main"))
    (tmp_path / "login.sh").write_text("true\n")
    os.chmod(tmp_path, 0o755)
    [finding] = check_preamble(plan, None)
    assert finding.ok, finding.message
    _check_preamble_file(plan, plan.instance("main"))


def test_the_event_listener_starts_after_the_preamble_too(tmp_path):
    text = SITE.format(folder=tmp_path, site_extra='preamble = ["module load python/3.11"]') + """
    [programs.web.ready]
    tcp = "{port}"
    """
    plan = plan_from(text, tmp_path)
    conf = tmp_path / "supervisord.conf"
    conf.write_text(render_preview(plan, plan.instance("main"), None))
    listener = next(g for g in supervisor_parse(conf).process_group_configs
                    if g.name == "siteboot-healer")
    argv = shlex.split(listener.process_configs[0].command)
    assert argv[:4] == [LOGIN_SHELL, "-lc", argv[2], WRAPPER_NAME]
    assert argv[4:7] == [sys.executable, "-I", "-m"]
