"""`siteboot ports`, `check` and `render` through click, as an operator runs them."""

from __future__ import annotations

import json
import os
import socket
import stat
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from siteboot.fsutil import owner_name
from siteboot.keys import PLACEHOLDER_HASH
from tests.helpers import MINIMAL_SITE, REPO, invoke_cli, own_site_text, supervisor_parse

NOBODY = 65534
JAWS_PORTS = {
    "jaws-cromwell": {"dev": 50101, "staging": 50102, "prod": 50103},
    "central-auth": {"dev": 3001, "staging": 3002, "prod": 3003},
    "central-rest": {"dev": 5001, "staging": 5002, "prod": 5003},
    "supervisord-jaws": {"dev": 64101, "staging": 64102, "prod": 64103},
    "supervisord-jtm": {"dev": 64111, "staging": 64112, "prod": 64113},
    "supervisord-central": {"dev": 64121, "staging": 64122, "prod": 64123},
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("SITEBOOT_SITE", "SITEBOOT_ENV", "SITEBOOT_ROOT", "SITEBOOT_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))


def run(*args: Any) -> Result:
    result: Result = invoke_cli(*args)
    return result


def site_file(folder: Path, text: str, name: str = "t") -> Path:
    (folder / "sites").mkdir(parents=True, exist_ok=True)
    path = folder / "sites" / f"{name}.toml"
    path.write_text(textwrap.dedent(text))
    return path


def own_site(folder: Path, short_dir: Path, extra: str = "", runtime: str = "") -> Path:
    """A site whose `main` instance belongs to the invoker, with all paths under short_dir."""
    return site_file(folder, own_site_text(short_dir, runtime, extra))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------------------------
# ports


def test_ports_json_is_exactly_the_matrix():
    result = run("ports", "--site", "jaws", "--json", "--root", REPO)
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"site": "jaws", "envs": ["dev", "staging", "prod"],
                                         "ports": JAWS_PORTS, "auto": {}}


def test_ports_table():
    result = run("ports", "--site", REPO / "sites" / "jaws.toml")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "dev", "staging", "prod"]
    assert lines[1].split() == ["jaws-cromwell", "50101", "50102", "50103"]
    assert lines[-1].split() == ["supervisord-central", "64121", "64122", "64123"]
    assert len(lines) == 7


def test_site_name_is_looked_up_under_root(tmp_path):
    site_file(tmp_path, MINIMAL_SITE, "mine")
    result = run("ports", "--root", tmp_path, "--site", "mine", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["ports"]["web"] == {"dev": 41001, "staging": 41002, "prod": 41003}
    result = run("ports", "--root", tmp_path, "--site", "nope")
    assert result.exit_code == 2
    assert "no site named 'nope'" in result.stderr
    assert "mine" in result.stderr  # known sites are listed


# --------------------------------------------------------------------------------------------
# check


@pytest.mark.parametrize("site", ["jaws", "local"])
def test_shipped_sites_pass(site):
    result = run("check", "--root", REPO, "--site", site)
    assert result.exit_code == 0, result.stderr
    assert "checked 1 site file(s): ok" in result.stdout


def test_check_all_shipped_json():
    result = run("check", "--root", REPO, "--all", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["errors"] == []
    assert [Path(p).name for p in report["sites"]] == ["jaws.toml", "local.toml"]


def test_check_all_finds_clashes_between_sites(tmp_path):
    site_file(tmp_path, MINIMAL_SITE, "a")
    site_file(tmp_path, """
        [site]
        name = "b"

        [instances.main]
        port = { dev = 41001, staging = 42002, prod = 42003 }
        """, "b")
    alone = run("check", "--root", tmp_path, "--site", "a")
    assert alone.exit_code == 0
    result = run("check", "--root", tmp_path, "--all")
    assert result.exit_code == 2
    assert "port 41001 is used by both t: program web (dev) and b: supervisord-main (dev)" in result.stderr
    assert "2 site file(s)" in result.stdout
    as_json = run("check", "--root", tmp_path, "--all", "--json")
    assert as_json.exit_code == 2
    assert json.loads(as_json.stdout)["ok"] is False


def test_port_in_use_warns_and_strict_fails(tmp_path):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        path = site_file(tmp_path, MINIMAL_SITE.replace("41002", str(port)))
        result = run("check", "--site", path)
        assert result.exit_code == 0
        assert "warning(s)" in result.stdout
        assert f"warning: port {port} of program web (staging) is in use" in result.stderr
        assert f"pid {os.getpid()}" in result.stderr
        assert f"user {owner_name(os.geteuid())}" in result.stderr
        strict = run("check", "--site", path, "--strict", "--json")
        assert strict.exit_code == 2
        report = json.loads(strict.stdout)
        assert report["warnings"] == []
        assert any(f"port {port} of program web (staging)" in e for e in report["errors"])
    finally:
        sock.close()


BAD_SITES = {
    # a mistake both tomllib (3.11+) and tomli (3.9, 3.10) place alike
    "syntax": ('[site]\nname = "x"\nenvs = [dev]\n', ["line 3, column 9", "TOML syntax error"]),
    "unknown key": (MINIMAL_SITE.replace('command =', 'comand = "x"\ncommand ='),
                    ["unknown key 'comand' (did you mean 'command'?)"]),
    "missing env": (MINIMAL_SITE.replace(", prod = 41003", ""), ["'port' has no port for env 'prod'"]),
    "not an integer": (MINIMAL_SITE.replace("41002", '"41002"'),
                       ["'port.staging' must be an integer port, not string '41002'"]),
    "out of range": (MINIMAL_SITE.replace("41003", "70000").replace("40001", "80"),
                     ["'port.prod' = 70000 is outside 1024-65535", "'port.dev' = 80 is outside"]),
    "same port twice": (MINIMAL_SITE.replace("41002", "40001"),
                        ["port 40001 is used by both", "supervisord-main (dev)", "program web (staging)"]),
    "undefined placeholder": (MINIMAL_SITE.replace("{port}", "{prot}"),
                              ["[programs.web] command", "undefined placeholder {prot}"]),
    "not a table": ("instances = 3\n", ["'instances' must be a table"]),
}


@pytest.mark.parametrize("case", list(BAD_SITES))
@pytest.mark.parametrize("command", [["check"], ["check", "--json"], ["ports"], ["ports", "--json"],
                                     ["render", "--out", "OUT"]])
def test_bad_site_is_one_screen_and_exit_2(tmp_path, case, command):
    text, expected = BAD_SITES[case]
    path = site_file(tmp_path, text)
    args = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    result = run(*args, "--site", path)
    assert result.exit_code == 2
    output = result.stdout + result.stderr
    for needle in expected:
        assert needle in output
    assert str(path) in output
    assert len(output.splitlines()) <= 24
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# render


def test_render_jaws_previews_every_env_without_secrets(tmp_path, monkeypatch):
    for name in ("JAWS_DB_PW", "JAWS_RMQ_PW", "SITE_RMQ_PW", "JAWS_GLOBUS_CLIENT_SECRET"):
        monkeypatch.setenv(f"SITEBOOT_SECRET_{name}", f"real-{name}")  # what a deploy job has
    out = tmp_path / "d"
    for env in ("dev", "staging", "prod"):
        result = run("render", "--root", REPO, "--site", "jaws", "--env", env, "--out", out)
        assert result.exit_code == 0, result.stderr
        assert result.stdout.count("(preview:") == 3 + 5  # configs, then [files]
    configs = sorted(p for p in out.iterdir() if p.suffix == ".conf")
    assert [p.name for p in configs] == [f"supervisord-jaws-{i}-{e}.conf" for i in ("central", "jaws", "jtm")
                                         for e in ("dev", "prod", "staging")]
    listening = {}
    for path in configs:
        text = path.read_text()
        assert "PREVIEW" in text
        assert mode(path) == 0o600
        sv = supervisor_parse(path).configroot.supervisord
        inet = next(c for c in sv.server_configs if c["section"] == "inet_http_server")
        assert inet["password"] == PLACEHOLDER_HASH
        listening[sv.identifier] = (inet["host"], inet["port"])
    assert listening["jaws-jaws-prod"] == ("127.0.0.1", 64103)
    assert listening["jaws-jtm-prod"] == ("127.0.0.1", 64113)
    assert listening["jaws-central-staging"] == ("127.0.0.1", 64122)
    files = sorted(p.relative_to(out).as_posix() for p in out.glob("files-*/*"))
    assert len(files) == 3 * 5
    previews = [(out / name).read_text() for name in files]
    assert not any("real-" in text for text in [*previews, *(p.read_text() for p in configs)])
    site_conf = (out / "files-jaws-jaws-prod" / "site-conf").read_text()
    assert "password = {secret:JAWS_DB_PW}" in site_conf
    assert "url = http://localhost:50103" in site_conf
    cromwell = (out / "files-jaws-jtm-dev" / "cromwell-conf").read_text()
    assert "port = 50101" in cromwell
    assert 'password = "{secret:JAWS_DB_PW}"' in cromwell
    central = (out / "files-jaws-central-staging" / "central-conf").read_text()
    assert "auth_port = 3002\nrest_port = 5002" in central


def test_render_out_creates_no_runtime_or_state_dirs(tmp_path, short_dir):
    path = site_file(tmp_path, f"""
        [site]
        runtime_dir = "{short_dir}/rt-{{env}}"
        state_dir = "{short_dir}/st-{{user}}"

        [instances.main]
        port = {{ dev = 40001, staging = 40002, prod = 40003 }}

        [instances.theirs]
        user = "nobody"
        port = {{ dev = 40011, staging = 40012, prod = 40013 }}
        """)
    result = run("render", "--site", path, "--out", tmp_path / "out", "--json")
    assert result.exit_code == 0
    rendered = json.loads(result.stdout)["rendered"]
    assert {r["instance"] for r in rendered} == {"main", "theirs"}
    assert all(r["preview"] for r in rendered)
    assert list(short_dir.iterdir()) == []
    one = run("render", "--site", path, "--out", tmp_path / "one", "--instance", "theirs")
    assert one.exit_code == 0
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["supervisord-t-theirs-dev.conf"]


def test_render_own_instance_in_place(tmp_path, short_dir):
    path = own_site(tmp_path, short_dir, runtime=f"{short_dir}/rt-{{env}}")
    with path.open("a") as handle:
        handle.write('\n[instances.theirs]\nuser = "nobody"\n'
                     "port = { dev = 40011, staging = 40012, prod = 40013 }\n")
    result = run("render", "--site", path)
    assert result.exit_code == 0, result.stderr
    parent = short_dir / "rt-dev"
    runtime = parent / "main"
    conf = runtime / "supervisord-main.conf"
    assert f"wrote {conf}" in result.stdout
    assert "skipped theirs: owned by nobody" in result.stdout
    assert not (parent / "theirs").exists()
    assert mode(parent) == 0o1777
    assert mode(runtime) == 0o700
    assert runtime.stat().st_uid == os.geteuid()
    assert mode(conf) == 0o600
    state = short_dir / "st" / "t-dev"
    key_path = state / "keys" / "main.key"
    assert mode(state) == 0o700
    assert mode(key_path) == 0o600
    key = key_path.read_text().strip()
    assert key
    text = conf.read_text()
    assert key not in text
    assert key not in result.stdout + result.stderr
    assert PLACEHOLDER_HASH not in text
    supervisor_parse(conf)


def test_render_state_in_home_by_default(tmp_path, short_dir):
    path = site_file(tmp_path, f"""
        [site]
        name = "t"
        runtime_dir = "{short_dir}/rt-{{env}}"

        [instances.main]
        port = {{ dev = 40001, staging = 40002, prod = 40003 }}
        """)
    result = run("render", "--site", path, "--env", "staging")
    assert result.exit_code == 0, result.stderr
    key_path = tmp_path / "home" / ".local" / "state" / "siteboot" / "t-staging" / "keys" / "main.key"
    assert mode(key_path) == 0o600


def test_render_refuses_a_runtime_dir_owned_by_someone_else(tmp_path, short_dir):
    path = own_site(tmp_path, short_dir)
    parent = short_dir / "rt-dev"
    parent.mkdir(mode=0o755)
    os.chmod(parent, 0o1777)
    (parent / "main").mkdir()
    os.chown(parent / "main", NOBODY, NOBODY)
    result = run("render", "--site", path)
    assert result.exit_code == 1
    assert f"belongs to {owner_name(NOBODY)}" in result.stderr
    assert "refusing" in result.stderr
    assert list((parent / "main").iterdir()) == []


def test_render_refuses_what_supervisord_cannot_carry(tmp_path, short_dir):
    path = own_site(tmp_path, short_dir, extra="environment = { GREETING = \"'hi'\" }")
    result = run("render", "--site", path)
    assert result.exit_code == 2
    assert "[programs.web] environment.GREETING" in result.stderr
    assert list(short_dir.iterdir()) == []
    preview = run("render", "--site", path, "--out", tmp_path / "out")
    assert preview.exit_code == 2
    assert "[programs.web] environment.GREETING" in preview.stderr


def test_render_round_trips_tricky_values(tmp_path, short_dir):
    path = own_site(tmp_path, short_dir, extra=textwrap.dedent("""
        [programs.tricky]
        instance = "main"
        command = \"\"\"sh -c 'echo "100% done, ok"' --run {runtime_dir}\"\"\"
        environment = { MSG = '50% off, "quoted" and spaces, too' }
        """), runtime=f"{short_dir}/r 1%-{{env}}")
    result = run("render", "--site", path, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    opts = supervisor_parse(tmp_path / "out" / "supervisord-t-main-dev.conf")
    (group,) = opts.process_group_configs
    tricky = next(pc for pc in group.process_configs if pc.name == "tricky")
    assert tricky.environment == {"MSG": '50% off, "quoted" and spaces, too'}
    assert tricky.command == f"""sh -c 'echo "100% done, ok"' --run '{short_dir}/r 1%-dev/main'"""
    assert tricky.stdout_logfile == f"{short_dir}/r 1%-dev/main/logs/tricky.out.log"


def test_render_too_long_socket_path(tmp_path, short_dir):
    path = own_site(tmp_path, short_dir, runtime=f"{short_dir}/{'x' * 110}-{{env}}")
    for extra in ([], ["--out", tmp_path / "out"]):
        result = run("render", "--site", path, *extra)
        assert result.exit_code == 2
        assert "107" in result.stderr
        assert "runtime_dir" in result.stderr
    assert list(short_dir.iterdir()) == []


@pytest.mark.parametrize(("args", "message"), [
    (["--env", "qa"], "has no env 'qa'"),
    (["--instance", "nope"], "has no instance 'nope'"),
])
def test_render_usage_errors(tmp_path, args, message):
    path = site_file(tmp_path, MINIMAL_SITE)
    result = run("render", "--site", path, "--out", tmp_path / "out", *args)
    assert result.exit_code == 2
    assert message in result.stderr


# --------------------------------------------------------------------------------------------
# auto ports through the commands that show them (read-only) and the ones that allocate them

AUTO_SITE = """
    [site]
    envs = ["dev", "prod"]
    runtime_dir = "{short}/rt-{{env}}"
    state_dir = "{short}/st-{{env}}"

    [instances.main]
    port = {{ dev = "auto", prod = 40003 }}

    [programs.web]
    instance = "main"
    command = "serve --port {{port}}"
    port = "auto"
    """


def test_auto_ports_are_shown_and_previewed_without_being_allocated(tmp_path, short_dir):
    path = site_file(tmp_path, AUTO_SITE.format(short=short_dir))
    table = run("ports", "--site", path)
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[1].split() == ["web", "auto", "auto"]
    assert lines[2].split() == ["supervisord-main", "auto", "40003"]
    assert "auto: not allocated yet (`siteboot up` allocates it)" in lines[3]
    data = json.loads(run("ports", "--site", path, "--json").stdout)
    assert data["ports"] == {"web": {"dev": None, "prod": None},
                             "supervisord-main": {"dev": None, "prod": 40003}}
    assert data["auto"] == {"supervisord-main": ["dev"], "web": ["dev", "prod"]}
    preview = run("render", "--site", path, "--out", tmp_path / "out")
    assert preview.exit_code == 0
    assert "main: supervisord-main: auto port not allocated yet, shown as 0" in preview.stdout
    assert "port = 127.0.0.1:0" in (tmp_path / "out" / "supervisord-t-main-dev.conf").read_text()
    assert run("check", "--site", path).exit_code == 0
    assert list(short_dir.iterdir()) == []  # none of them allocated anything


def test_render_in_place_allocates_and_ports_then_shows_them(tmp_path, short_dir):
    path = site_file(tmp_path, AUTO_SITE.format(short=short_dir))
    result = run("render", "--site", path)
    assert result.exit_code == 0, result.stderr
    assert "auto port of supervisord-main: " in result.stdout
    record = json.loads((short_dir / "st-dev" / "ports-t-dev.json").read_text())["ports"]
    conf = (short_dir / "rt-dev" / "main" / "supervisord-main.conf").read_text()
    assert f"port = 127.0.0.1:{record['supervisord-main']}" in conf
    assert f"--port {record['program web']}" in conf
    lines = run("ports", "--site", path).stdout.splitlines()
    assert lines[1].split() == ["web", str(record["program web"]), "(auto)", "auto"]
    assert lines[2].split() == ["supervisord-main", str(record["supervisord-main"]), "(auto)",
                                "40003"]


def test_a_planted_port_record_is_one_clear_error(tmp_path, short_dir):
    path = site_file(tmp_path, AUTO_SITE.format(short=short_dir))
    (short_dir / "st-dev").mkdir(mode=0o700)
    planted = short_dir / "st-dev" / "ports-t-dev.json"
    planted.write_text('{"ports": {"supervisord-main": 22}}')
    planted.chmod(0o666)
    for args in (["ports"], ["render"], ["up"], ["status"]):
        result = run(*args, "--site", path)
        assert result.exit_code == (3 if args == ["status"] else 1), (args, result.stderr)
        assert f"refusing port record {planted}: it must be a regular file of " in result.stderr
        assert f"hint: remove {planted}: `siteboot up --site {path}` allocates the auto ports " \
            "again" in result.stderr  # pasted, it works
    check = run("check", "--site", path)
    assert check.exit_code == 2
    assert "env dev: refusing port record" in check.stdout + check.stderr
