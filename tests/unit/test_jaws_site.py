"""`sites/jaws.toml` is JAWS as it ran in 2021 (JGI-Bioinformatics/jaws, test/integration/ at
638fa48a): three instances per env under two accounts, the supervisord options of
deploy-supervisord, the commands of generate-shims, the per-env values of the CI variables."""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from siteboot.plan import Plan, make_plan
from siteboot.site import Site, load_site
from tests.helpers import REPO

ENVS = ("dev", "staging", "prod")
LEVEL = {"dev": "DEBUG", "staging": "DEBUG", "prod": "INFO"}
LOCALE = {"LC_ALL": "en_US.UTF-8", "LANG": "en_US.UTF-8", "PYTHONIOENCODING": "utf-8"}
# program -> (instance, what deploy-supervisord set beyond startsecs 3, startretries 10 and
# autorestart unexpected)
PROGRAMS: dict[str, tuple[str, dict[str, Any]]] = {
    "jaws-site-daemon": ("jaws", {}),
    "jaws-site-jtm-rpc": ("jaws", {}),
    "jaws-site-central-rpc": ("jaws", {}),
    "jaws-jtm": ("jtm", {"priority": 1}),
    "jaws-cromwell": ("jtm", {"priority": 9, "startsecs": 10, "stopwaitsecs": 120}),
    "central-auth": ("central", {}),
    "central-rest": ("central", {}),
    "central-rpc": ("central", {}),
}


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site(REPO / "sites" / "jaws.toml")


def plan(site: Site, env: str) -> Plan:
    return make_plan(site, env, invoker="jaws", host="cori20")


def test_three_instances_two_accounts_and_central_on_its_own_host(site):
    assert {name: (i.user, i.host, i.group) for name, i in site.instances.items()} == {
        "jaws": ("jaws", "cori20.nersc.gov", None),
        "jtm": ("jaws_jtm", "cori20.nersc.gov", "jaws_jtm"),  # jaws controls it: the grant
        "central": ("jaws", "jaws.lbl.gov", None),
    }
    assert site.instances["central"].port == {"dev": 64121, "staging": 64122, "prod": 64123}
    assert site.instances["jtm"].grant == "deploy"  # jaws's CI deploys jtm's programs too
    assert [name for name, i in site.instances.items() if i.grants_deploy] == ["jtm"]
    cori = plan(site, "dev")
    assert [name for name, inst in cori.instances.items() if inst.here] == ["jaws", "jtm"]
    assert cori.elsewhere(cori.instances["central"]) == "on jaws.lbl.gov"


def test_programs_have_deploy_supervisords_options(site):
    assert {name: p.instance for name, p in site.programs.items()} == {
        name: instance for name, (instance, _) in PROGRAMS.items()}
    for name, (_, options) in PROGRAMS.items():
        expected = {"startsecs": 3, "startretries": 10, "autorestart": "unexpected",
                    "priority": 999, "stopwaitsecs": 10, "numprocs": 1, "autostart": True}
        expected.update(options)
        actual = site.programs[name].options
        assert {k: actual[k] for k in expected} == expected, name


@pytest.mark.parametrize("env", ENVS)
def test_environment_per_env(site, env):
    cori = plan(site, env)
    for inst in cori.instances.values():
        for program in inst.programs:
            assert program.environment["LOG_LEVEL"] == LEVEL[env], program.name
            assert {k: program.environment[k] for k in LOCALE} == LOCALE, program.name
    jtm = cori.instances["jtm"]
    [manager] = [p for p in jtm.programs if p.name == "jaws-jtm"]
    [jtm_conf] = [f for f in jtm.files if f.name == "jtm-conf"]
    assert manager.environment["JTM_CONFIG_FILE"] == str(jtm_conf.path)


def command_of(program: Any) -> list[str]:
    """The program's own words, after the login preamble it runs behind (the shims' `bash -l`
    with CORI_LOAD_PYTHON)."""
    words = shlex.split(program.command)
    assert words[:2] == ["/bin/bash", "-lc"], words
    assert "module load python/3.8-anaconda-2020.11" in words[2]
    return words[words.index("siteboot-preamble") + 1:]


def options_of(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """``--opt value`` and ``--opt=value`` pairs, then the rest (how click reads them)."""
    found: dict[str, str] = {}
    while words and words[0].startswith("--"):
        name, equals, value = words.pop(0).partition("=")
        found[name] = value if equals else words.pop(0)
    return found, words


@pytest.mark.parametrize("env", ENVS)
def test_commands_have_the_real_shapes(site, env):
    cori = plan(site, env)
    programs = {p.name: p for i in cori.instances.values() for p in i.programs}
    files = {f.name: str(f.path) for i in cori.instances.values() for f in i.files}
    dirs = {d.name: str(d.path) for i in cori.instances.values() for d in i.dirs}
    for name, log_dir, config, command in (
            ("jaws-site-daemon", "logs", "site-conf", "daemon"),
            ("jaws-site-jtm-rpc", "logs", "site-conf", "jtm-rpc"),
            ("jaws-site-central-rpc", "logs", "site-conf", "central-rpc"),
            ("central-auth", "central-logs", "central-conf", "auth"),
            ("central-rest", "central-logs", "central-conf", "rest"),
            ("central-rpc", "central-logs", "central-conf", "rpc")):
        words = command_of(programs[name])
        executable = "jaws-central" if name.startswith("central") else "jaws-site"
        assert words[0] == f"{programs[name].venv}/bin/{executable}"
        options, rest = options_of(words[1:])
        assert options == {"--log": f"{dirs[log_dir]}/{name.replace('jaws-', '')}.log",
                           "--config": files[config], "--log-level": LEVEL[env]}, name
        assert rest == [command]
    assert command_of(programs["jaws-jtm"]) == [
        f"{programs['jaws-jtm'].venv}/bin/jtm", f"--config={files['jtm-conf']}", "--debug",
        "manager", "-ld", dirs["jtm-logs"]]
    cromwell = programs["jaws-cromwell"]
    install_dir = f"/global/cfs/projectdirs/jaws/jaws-install/jaws-{env}"
    assert command_of(cromwell) == [
        "java", "-Xmx5g", f"-Dconfig.file={files['cromwell-conf']}",
        f"-Djava.io.tmpdir={dirs['cromwell-tmp']}", "-jar", f"{install_dir}/cromwell.jar", "server"]
    assert cromwell.directory == dirs["scratch"]  # run from its scratch dir
    assert str(cromwell.port) not in cromwell.command  # its port is in cromwell.conf


def test_dirs_have_one_mode_and_the_shared_group(site):
    assert {name: (d.instance, d.mode, d.group) for name, d in site.dirs.items()} == {
        "logs": ("jaws", 0o2770, "jaws_jtm"),
        "uploads": ("jaws", 0o2770, "jaws_jtm"),
        "scratch": ("jtm", 0o2770, "jaws_jtm"),
        "jtm-logs": ("jtm", 0o2770, "jaws_jtm"),
        "cromwell-tmp": ("jtm", 0o2770, "jaws_jtm"),
        "cromwell-logs": ("jtm", 0o2770, "jaws_jtm"),
        "central-logs": ("central", 0o2770, "jaws"),
    }


def test_app_configs_are_templates_read_by_their_programs(site):
    assert {name: (f.instance, f.template, f.mode) for name, f in site.files.items()} == {
        "site-conf": ("jaws", "templates/jaws/jaws-site.conf.j2", 0o600),
        "jtm-conf": ("jtm", "templates/jaws/jaws-jtm.conf.j2", 0o600),
        "cromwell-conf": ("jtm", "templates/jaws/cromwell.conf.j2", 0o600),
        "shifter-exec": ("jtm", "templates/jaws/shifter_exec.sh.j2", 0o700),
        "central-conf": ("central", "templates/jaws/jaws-central.conf.j2", 0o600),
    }
    for spec in site.files.values():
        assert (REPO / spec.template).is_file()
    readers = {name: p.files for name, p in site.programs.items()}
    assert readers["jaws-cromwell"] == ["cromwell-conf"]
    assert readers["jaws-jtm"] == ["jtm-conf"]
    assert all(readers[p] == ["site-conf"] for p in PROGRAMS if p.startswith("jaws-site"))
    assert all(readers[p] == ["central-conf"] for p in PROGRAMS if p.startswith("central"))


def test_venvs_come_from_the_checkouts_wheels(site):
    for name, part in (("site", "site"), ("jtm", "jtm"), ("central", "central")):
        assert site.venvs[name].requirements == [
            "--find-links ./rpc/dist", f"--find-links ./{part}/dist", "jaws_rpc", f"jaws_{part}"]
