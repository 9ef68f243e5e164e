"""Resolution in one place: per-env values, vars, ports of other programs, file and dir paths
become plain strings per env; secrets stay sealed until written."""

from __future__ import annotations

import json
import shlex

from siteboot.accounts import own_home
from siteboot.plan import DirPlan, Sealed, make_plan, reveal
from siteboot.site import load_site

SITE = """
[site]
name = "t"
envs = ["dev", "prod"]
state_dir = "/srv/state/{site}-{env}"
runtime_dir = "/tmp/t-{env}"

[vars]
log_level = { dev = "DEBUG", prod = "INFO" }
api = "http://127.0.0.1:{port:web}"
api_v1 = "{var:api}/v1"
greeting = "hello world"
dsn = "postgres://app:{secret:DB_PASSWORD}@db-{env}/app"

[instances.main]
port = { dev = 40001, prod = 40002 }

[dirs.scratch]
path = { dev = "/scratch/dev", prod = "/scratch/{site}-prod" }
mode = "2770"
group = { dev = "devs", default = "ops" }
instance = "main"

[dirs.home]
path = "~/t-{env}"
instance = "main"

[files.conf]
template = "templates/app.conf.j2"
path = "{dir:scratch}/app-{var:log_level}.conf"
mode = "0640"
instance = "main"

[programs.web]
instance = "main"
command = { dev = "serve --reload --port {port}", default = "serve --port {port}" }
port = { dev = 41001, prod = 41002 }
files = ["conf"]

[programs.worker]
instance = "main"
command = "work --api {var:api_v1} --say {var:greeting} --conf {file:conf}"
directory = "{dir:scratch}"
[programs.worker.environment]
LOG_LEVEL = "{var:log_level}"
DSN = "{var:dsn}"
PW = "pw={secret:DB_PASSWORD}"
WEB = "{port:web}"
"""


def plans(write_site):
    site = load_site(write_site(SITE))
    return make_plan(site, "dev"), make_plan(site, "prod")


def test_per_env_values_and_vars_become_plain_strings_per_env(write_site):
    dev, prod = plans(write_site)
    assert dev.instances["main"].program("web").command == "serve --reload --port 41001"
    assert prod.instances["main"].program("web").command == "serve --port 41002"
    worker_dev = dev.instances["main"].program("worker")
    worker_prod = prod.instances["main"].program("worker")
    assert worker_dev.environment["LOG_LEVEL"] == "DEBUG"
    assert worker_prod.environment["LOG_LEVEL"] == "INFO"
    assert type(worker_dev.environment["LOG_LEVEL"]) is str
    assert dev.vars["api_v1"] == "http://127.0.0.1:41001/v1"
    assert prod.vars["api_v1"] == "http://127.0.0.1:41002/v1"
    assert dev.ports == {"web": 41001}


def test_port_of_another_program_is_its_port_in_the_same_env(write_site):
    """A worker's API_URL once had the dev port hard-coded, and prod talked to dev."""
    dev, prod = plans(write_site)
    assert dev.instances["main"].program("worker").environment["WEB"] == "41001"
    assert prod.instances["main"].program("worker").environment["WEB"] == "41002"


def test_command_placeholders_are_shell_quoted_and_paths_resolved(write_site):
    dev, prod = plans(write_site)
    worker = dev.instances["main"].program("worker")
    assert shlex.split(worker.command) == [
        "work", "--api", "http://127.0.0.1:41001/v1", "--say", "hello world",
        "--conf", "/scratch/dev/app-DEBUG.conf"]
    assert worker.directory == "/scratch/dev"
    assert prod.instances["main"].program("worker").directory == "/scratch/t-prod"


def test_files_and_dirs_of_an_instance(write_site):
    dev, prod = plans(write_site)
    main = dev.instances["main"]
    assert main.dirs == [DirPlan("scratch", main.dirs[0].path, 0o2770, "devs"),
                         DirPlan("home", own_home() / "t-dev", 0o700, None)]
    assert str(main.dirs[0].path) == "/scratch/dev"
    assert prod.instances["main"].dirs[0].group == "ops"
    (conf,) = main.files
    assert (conf.name, str(conf.path), conf.mode, conf.users) == (
        "conf", "/scratch/dev/app-DEBUG.conf", 0o640, ("web",))
    assert str(prod.instances["main"].files[0].path) == "/scratch/t-prod/app-INFO.conf"
    assert main.secrets_path == main.state_dir / "secrets.toml"
    assert main.files_started_path.parent == main.runtime_dir


def test_secrets_stay_sealed_until_written(write_site):
    dev, _ = plans(write_site)
    environment = dev.instances["main"].program("worker").environment
    dsn, pw = environment["DSN"], environment["PW"]
    assert isinstance(dsn, Sealed)
    assert isinstance(pw, Sealed)
    # printed, formatted, in an error or in JSON: the placeholder, never a value
    assert dsn == "postgres://app:{secret:DB_PASSWORD}@db-dev/app"
    assert f"{pw!r} {pw}" == "'pw={secret:DB_PASSWORD}' pw={secret:DB_PASSWORD}"
    assert json.dumps(environment["PW"]) == '"pw={secret:DB_PASSWORD}"'
    assert dsn.secret_names == ["DB_PASSWORD"]
    asked = []

    def secret(name: str) -> str:
        asked.append(name)
        return "s3cr{e}t"

    assert reveal(dsn, secret) == "postgres://app:s3cr{e}t@db-dev/app"
    assert reveal(pw, secret) == "pw=s3cr{e}t"
    assert reveal("plain", secret) == "plain"
    assert asked == ["DB_PASSWORD", "DB_PASSWORD"]
    assert dev.vars["dsn"] == dsn  # a var keeps its secret sealed too
