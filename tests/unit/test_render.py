"""Rendering: the filters, refusals of what supervisord cannot carry, and round trips through
supervisor's own parser."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from siteboot import ops
from siteboot.errors import EXIT_USAGE, RenderError
from siteboot.keys import PLACEHOLDER_HASH
from siteboot.plan import Plan, make_plan
from siteboot.render import (
    envquote,
    percentescape,
    render_instance,
    representable,
    shellquote,
)
from siteboot.site import load_site, parse_site
from tests.helpers import REPO, supervisor_parse

INSTANCE = """
[instances.main]
port = { dev = 40001, staging = 40002, prod = 40003 }
"""


def site_text(program: str, site: str = "") -> str:
    """A one-instance site; ``program`` is the body of [programs.web]."""
    return f'[site]\nname = "t"\n{site}\n{INSTANCE}\n[programs.web]\ninstance = "main"\n{program}\n'


def make(write_site, program: str, site: str = "", env: str = "dev") -> Plan:
    return make_plan(load_site(write_site(site_text(program, site))), env)


def parse(tmp_path: Path, plan: Plan, instance: str = "main", root: Path | None = None):
    text = render_instance(plan, plan.instances[instance], PLACEHOLDER_HASH, True, root)
    path = tmp_path / f"{instance}.conf"
    path.write_text(text)
    return supervisor_parse(path)


def process_configs(opts) -> dict[str, Any]:
    return {pc.name: pc for group in opts.process_group_configs for pc in group.process_configs}


# --------------------------------------------------------------------------------------------
# Filters


@pytest.mark.parametrize(("value", "expected"), [
    ("plain", "plain"),
    ("100%", "100%%"),
    ("%(ENV_HOME)s", "%%(ENV_HOME)s"),
    (3001, "3001"),
])
def test_percentescape(value, expected):
    assert percentescape(value) == expected


@pytest.mark.parametrize("value", ["plain", "/tmp/with space", "it's", 'say "hi"', "a;b", ""])
def test_shellquote_round_trips_through_shlex(value):
    assert shlex.split(shellquote(value)) == [value]


def test_shellquote_leaves_safe_words_bare():
    assert shellquote("/usr/bin/python3") == "/usr/bin/python3"
    assert shellquote(8080) == "8080"


@pytest.mark.parametrize(("value", "expected"), [
    ("plain", '"plain"'),
    ("it's", '"it\'s"'),
    ('say "hi"', "'say \"hi\"'"),
    ("50% off", '"50%% off"'),
    ("", '""'),
])
def test_envquote(value, expected):
    assert envquote(value) == expected


# --------------------------------------------------------------------------------------------
# Refusals: never rendered changed


@pytest.mark.parametrize(("program", "key", "why"), [
    ('command = "run"\nenvironment = { X = "both \' and \\"" }', "environment.X", "both quote kinds"),
    ('command = "run"\nenvironment = { X = "\'lead" }', "environment.X", "starts or ends with a quote"),
    ('command = "run"\nenvironment = { X = "trail\\"" }', "environment.X",
     "starts or ends with a quote"),
    ('command = "run"\nenvironment = { X = "a\\nb" }', "environment.X", "line break"),
    ('command = "run"\nenvironment = { X = "a ;b" }', "environment.X", "whitespace followed by"),
    ('command = "run\\nother"', "command", "line break"),
    ('command = "run\\rother"', "command", "line break"),
    ('command = "run ; echo"', "command", "whitespace followed by"),
    ('command = "run\\t#x"', "command", "whitespace followed by"),
    ('command = "#run"', "command", "starts with ';' or '#'"),
    ('command = ";run"', "command", "starts with ';' or '#'"),
    ('command = "run"\ndirectory = "/tmp/a #b"', "directory", "whitespace followed by"),
    ('command = "run"\ndirectory = "/tmp/a "', "directory", "whitespace"),
])
def test_unrepresentable_values_are_refused(write_site, program, key, why):
    plan = make(write_site, program)
    inst = plan.instances["main"]
    (problem,) = representable(inst.programs)
    assert problem.startswith(f"[programs.web] {key} = ")
    assert why in problem
    with pytest.raises(RenderError) as info:
        render_instance(plan, inst, PLACEHOLDER_HASH, True, None)
    assert info.value.exit_code == EXIT_USAGE
    assert f"[programs.web] {key}" in str(info.value)


def test_every_refusal_is_reported_at_once(write_site):
    plan = make(write_site, 'command = "a ;b"\nenvironment = { X = "\'x\'", Y = "a\\nb" }')
    problems = representable(plan.instances["main"].programs)
    assert len(problems) == 3


def test_runtime_dir_that_supervisord_would_cut_is_refused(write_site):
    plan = make(write_site, 'command = "run"', site='runtime_dir = "/tmp/sb ;x-{env}"')
    with pytest.raises(RenderError, match=r"\[site\] runtime_dir"):
        render_instance(plan, plan.instances["main"], PLACEHOLDER_HASH, True, None)


def test_too_long_socket_path_is_a_clear_error(write_site):
    plan = make(write_site, 'command = "run"', site=f'runtime_dir = "/tmp/{"x" * 120}-{{env}}"')
    with pytest.raises(RenderError) as info:
        render_instance(plan, plan.instances["main"], PLACEHOLDER_HASH, True, None)
    assert "107" in str(info.value)
    assert "instance main" in str(info.value)
    assert info.value.exit_code == EXIT_USAGE


def test_log_maxbytes_supervisord_cannot_read_is_a_site_error(write_site):
    path = write_site(site_text('command = "run"\nlog_maxbytes = "lots"'))
    _, problems = parse_site(path)
    assert any("'log_maxbytes' must be a size" in str(p) for p in problems)


# --------------------------------------------------------------------------------------------
# Round trips through supervisor's parser


def test_tricky_values_round_trip(write_site, tmp_path):
    plan = make(write_site, r'''
        command = """sh -c 'echo "100% done, ok"' --rate=50% --name "a b" --path {runtime_dir}"""
        directory = "/tmp/50% dir, with spaces"
        log_maxbytes = "1MB"
        log_backups = 2

        [programs.web.environment]
        MSG = '50% off, "quoted" and spaces'
        APOS = "it's 100%"
        CSV = "a,b, c"
        BACKSLASH = "x\\y"
        EMPTY = ""
        FMT = "%(ENV_HOME)s %s %%"
        UNI = "grüße"
        ''', site='runtime_dir = "/tmp/sb 100% x-{env}"')
    program = plan.instances["main"].programs[0]
    assert program.environment["MSG"] == '50% off, "quoted" and spaces'
    opts = parse(tmp_path, plan)
    parsed = process_configs(opts)["web"]
    assert parsed.command == program.command
    assert "%" in parsed.command
    assert '"' in parsed.command
    assert parsed.environment == program.environment
    assert parsed.directory == program.directory
    assert parsed.stdout_logfile == str(program.log_path("web", "stdout"))
    assert parsed.stderr_logfile == str(program.log_path("web", "stderr"))
    assert parsed.stdout_logfile_maxbytes == parsed.stderr_logfile_maxbytes == 1024 * 1024
    assert parsed.stdout_logfile_backups == parsed.stderr_logfile_backups == 2
    inst = plan.instances["main"]
    sv = opts.configroot.supervisord
    assert sv.pidfile == str(inst.pidfile)
    assert sv.logfile == str(inst.logfile)
    assert sv.childlogdir == str(inst.childlogdir)
    unix = next(c for c in sv.server_configs if c["section"] == "unix_http_server")
    assert unix["file"] == str(inst.socket_path)


def test_placeholders_in_paths_with_spaces_are_shell_quoted(write_site, tmp_path):
    plan = make(write_site, '''
        command = "tool --port {port} --run {runtime_dir} --state {state_dir} --env {env}"
        port = { dev = 41001, staging = 41002, prod = 41003 }
        directory = "{runtime_dir}"
        environment = { RUN = "{runtime_dir}/x", WHO = "{site}-{instance}-{env}" }
        ''', site='runtime_dir = "/tmp/sb dir/{site}-{env}"\nstate_dir = "/tmp/sb state/{site}-{env}"')
    inst = plan.instances["main"]
    assert str(inst.runtime_dir) == "/tmp/sb dir/t-dev/main"
    program = inst.programs[0]
    assert shlex.split(program.command) == [
        "tool", "--port", "41001", "--run", "/tmp/sb dir/t-dev/main",
        "--state", "/tmp/sb state/t-dev", "--env", "dev"]
    assert program.directory == "/tmp/sb dir/t-dev/main"  # not a shell: not quoted
    assert program.environment == {"RUN": "/tmp/sb dir/t-dev/main/x", "WHO": "t-main-dev"}
    parsed = process_configs(parse(tmp_path, plan))["web"]
    assert parsed.command == program.command
    assert shlex.split(parsed.command)[4] == "/tmp/sb dir/t-dev/main"
    assert parsed.environment["RUN"] == "/tmp/sb dir/t-dev/main/x"
    assert parsed.directory == "/tmp/sb dir/t-dev/main"


def test_literal_braces(write_site, tmp_path):
    plan = make(write_site, '''command = "awk '{{print $1}}' {env}"''')
    parsed = process_configs(parse(tmp_path, plan))["web"]
    assert parsed.command == "awk '{print $1}' dev"


def test_numprocs_processes_get_their_own_logs(write_site, tmp_path):
    plan = make(write_site, 'command = "work"\nnumprocs = 3', site='runtime_dir = "/tmp/sb 5%-{env}"')
    program = plan.instances["main"].programs[0]
    assert program.process_names() == ["web_00", "web_01", "web_02"]
    parsed = process_configs(parse(tmp_path, plan))
    assert sorted(parsed) == program.process_names()
    for name in program.process_names():
        assert parsed[name].stdout_logfile == str(program.log_path(name, "stdout"))
        assert parsed[name].stderr_logfile == str(program.log_path(name, "stderr"))
    assert len({pc.stdout_logfile for pc in parsed.values()}) == 3


def test_config_shape(write_site, tmp_path):
    plan = make(write_site, '''
        command = "run"
        stopsignal = "INT"
        autostart = false
        priority = 5
        ''')
    inst = plan.instances["main"]
    text = render_instance(plan, inst, PLACEHOLDER_HASH, True, None)
    assert "chmod = 0700" in text
    assert "PREVIEW" in text
    opts = parse(tmp_path, plan)
    sv = opts.configroot.supervisord
    assert sv.identifier == "t-main-dev"
    servers = {c["section"]: c for c in sv.server_configs}
    assert servers["inet_http_server"]["host"] == "127.0.0.1"
    assert servers["inet_http_server"]["port"] == 40001
    assert servers["unix_http_server"]["chmod"] == 0o700
    assert Path(servers["unix_http_server"]["file"]).parent == inst.runtime_dir
    for server in servers.values():
        assert server["username"] == "siteboot"
        assert server["password"] == PLACEHOLDER_HASH
    assert Path(sv.pidfile).parent == Path(sv.logfile).parent == inst.runtime_dir
    assert Path(sv.childlogdir).parent == inst.runtime_dir
    (group,) = opts.process_group_configs
    assert group.name == "t-dev"
    (pc,) = group.process_configs
    assert pc.stopasgroup
    assert pc.killasgroup
    assert not pc.autostart
    assert pc.priority == 5
    assert pc.stopsignal.name == "SIGINT"
    assert pc.stdout_logfile_maxbytes == 10 * 1024 * 1024
    assert pc.stdout_logfile_backups == 5


def test_shipped_sites_render_and_parse(tmp_path, monkeypatch):
    from siteboot.ports import allocate

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # where local's auto ports are recorded
    for name in ("jaws", "local"):
        site = load_site(REPO / "sites" / f"{name}.toml")
        for env in site.envs:
            plan = allocate(make_plan(site, env), probe=lambda ports: [],
                            free=lambda port: True).plan
            assert plan.unallocated() == []
            for inst in plan.instances:
                opts = parse(tmp_path, plan, inst)
                assert opts.configroot.supervisord.identifier == f"{name}-{inst}-{env}"


# --------------------------------------------------------------------------------------------
# Templates


def test_site_root_template_overrides_the_shipped_one(write_site, tmp_path):
    plan = make(write_site, 'command = "run"')
    root = tmp_path / "root"
    (root / "templates").mkdir(parents=True)
    shipped = (REPO / "templates" / "supervisord.conf.j2").read_text()
    (root / "templates" / "supervisord.conf.j2").write_text("; OVERRIDDEN for {{ inst.name }}\n" + shipped)
    inst = plan.instances["main"]
    assert render_instance(plan, inst, PLACEHOLDER_HASH, True, root).startswith("; OVERRIDDEN for main")
    assert "OVERRIDDEN" not in render_instance(plan, inst, PLACEHOLDER_HASH, True, None)
    # a root without templates/ falls back to the shipped template
    assert "OVERRIDDEN" not in render_instance(plan, inst, PLACEHOLDER_HASH, True, tmp_path / "sites")


def test_undefined_template_variable_is_an_error_not_blank(write_site, tmp_path):
    plan = make(write_site, 'command = "run"')
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "supervisord.conf.j2").write_text(
        "[supervisord]\n{% for p in inst.programs %}x = {{ p.no_such_key }}\n{% endfor %}")
    with pytest.raises(RenderError, match="no_such_key") as info:
        render_instance(plan, plan.instances["main"], PLACEHOLDER_HASH, True, tmp_path)
    assert info.value.exit_code == EXIT_USAGE
    (tmp_path / "templates" / "supervisord.conf.j2").write_text("{{ nope }}")
    with pytest.raises(RenderError, match="'nope' is undefined"):
        render_instance(plan, plan.instances["main"], PLACEHOLDER_HASH, True, tmp_path)


def test_previews_go_only_into_out(write_site, tmp_path):
    plan = make(write_site, 'command = "run"',
                site=f'runtime_dir = "{tmp_path}/rt-{{env}}"\nstate_dir = "{tmp_path}/state"')
    out = tmp_path / "out"
    result = ops.render(plan, None, out)
    (item,) = result.rendered
    assert item.preview
    assert item.path == out / "supervisord-t-main-dev.conf"
    assert PLACEHOLDER_HASH in item.path.read_text()
    assert (item.path.stat().st_mode & 0o777) == 0o600
    assert not (tmp_path / "rt-dev").exists()
    assert not (tmp_path / "state").exists()


def test_a_template_is_data_not_code(tmp_path: Path, short_dir: Path):
    """Rendered in Jinja2's sandbox: a site root's template cannot reach Python internals."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "supervisord.conf.j2").write_text(
        "{{ ''.__class__.__mro__[1].__subclasses__() }}\n")
    plan = make_plan(load_site(REPO / "sites" / "local.toml"), "dev")
    inst = next(iter(plan.instances.values()))
    with pytest.raises(RenderError, match="unsafe"):
        render_instance(plan, inst, PLACEHOLDER_HASH, True, tmp_path)


# --------------------------------------------------------------------------------------------
# What changed between two configs, per program (what `up` says after a site edit)


def test_program_changes_name_programs_and_site_keys_not_values(write_site):
    from siteboot.render import program_changes

    def rendered(program: str, extra: str = "") -> str:
        path = write_site(site_text(program) + extra)
        plan = make_plan(load_site(path), "dev")
        return render_instance(plan, plan.instances["main"], PLACEHOLDER_HASH, True, None)

    old = rendered('command = "run a"\nenvironment = { TOKEN = "s3cret" }',
                   '[programs.old]\ninstance = "main"\ncommand = "x"\n')
    new = rendered('command = "run b"\nenvironment = { TOKEN = "n3w" }\nstartsecs = 9\n'
                   'log_maxbytes = "1MB"',
                   '[programs.api]\ninstance = "main"\ncommand = "y"\n')
    assert program_changes(old, new) == [
        "program api: added", "program old: removed",
        "program web: command, environment, log_maxbytes, startsecs changed"]
    assert "s3cret" not in " ".join(program_changes(old, new))
    assert program_changes(new, new) == []
    assert program_changes("not a config [", new)[0] == "program web: added"
