"""Per-env values, [vars], {port:NAME}, {secret:NAME}, [files] and [dirs]: what `check` says,
each with file and line."""

from __future__ import annotations

import re

import pytest

from siteboot import ops
from siteboot.site import PerEnv, load_site, parse_site, placeholder_fields

HEAD = """
[site]
name = "t"
envs = ["dev", "prod"]

[instances.main]
port = { dev = 40001, prod = 40002 }

[instances.side]
port = { dev = 40003, prod = 40004 }
"""

WEB = """
[programs.web]
instance = "main"
command = "serve --port {port}"
port = { dev = 41001, prod = 41002 }
"""


def errors_of(write_site, body: str) -> list[str]:
    _, problems = parse_site(write_site(HEAD + body))
    return [str(p) for p in problems if p.level == "error"]


def only_error(write_site, body: str) -> str:
    errors = errors_of(write_site, body)
    assert len(errors) == 1, errors
    return errors[0]


def line_of(path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


# --------------------------------------------------------------------------------------------
# Per-env values


def test_per_env_values_are_read_for_every_string_that_may_have_them(write_site):
    site = load_site(write_site(HEAD + WEB + """
        [programs.worker]
        instance = "main"
        command = { dev = "work --verbose", default = "work" }
        directory = { dev = "/srv/dev", prod = "/srv/prod" }
        environment = { LOG_LEVEL = { dev = "DEBUG", prod = "INFO" }, PLAIN = "x" }
        """.replace("        ", "")))
    worker = site.programs["worker"]
    assert worker.command == PerEnv({"dev": "work --verbose", "prod": "work"})
    assert worker.options["directory"] == PerEnv({"dev": "/srv/dev", "prod": "/srv/prod"})
    assert worker.environment == {"LOG_LEVEL": PerEnv({"dev": "DEBUG", "prod": "INFO"}),
                                  "PLAIN": "x"}


def test_an_unknown_env_is_named_with_a_suggestion_and_its_line(write_site):
    path = write_site(HEAD + WEB.replace('"serve --port {port}"',
                                         '{ dev = "serve", prd = "serve" }'))
    errors = [str(p) for p in parse_site(path)[1]]
    line = line_of(path, "prd =")
    assert f"{path}:{line}: [programs.web] command: 'command.prd': 'prd' is not an env of this " \
           "site (did you mean 'prod'?)" in errors
    assert f"{path}:{line}: [programs.web] command: 'command' has no value for env 'prod' (add " \
           "it, or a 'default' for the envs not named)" in errors


def test_a_default_covers_the_envs_not_named(write_site):
    assert errors_of(write_site, WEB.replace('"serve --port {port}"',
                                             '{ prod = "serve --port {port}", default = "x" }')) == []


def test_a_missing_env_in_an_environment_value(write_site):
    error = only_error(write_site, WEB + 'environment = { LOG_LEVEL = { dev = "DEBUG" } }\n')
    assert "[programs.web] environment.LOG_LEVEL: 'environment.LOG_LEVEL' has no value for env " \
           "'prod'" in error


def test_per_env_values_must_be_strings(write_site):
    error = only_error(write_site, WEB + 'environment = { N = { dev = "1", prod = 2 } }\n')
    assert "'environment.N.prod' must be a string, not integer" in error


def test_keys_that_name_things_take_no_per_env_table(write_site):
    error = only_error(write_site, WEB.replace('instance = "main"',
                                               'instance = { dev = "main", prod = "main" }'))
    assert "'instance' must be a string, not table" in error


def test_default_cannot_be_an_env(write_site):
    path = write_site('[site]\nenvs = ["dev", "default"]\n[instances.main]\n'
                      'port = { dev = 40001, default = 40002 }\n')
    assert any("'default' cannot be an env" in str(p) for p in parse_site(path)[1])


def test_placeholders_are_checked_in_every_env_s_text(write_site):
    error = only_error(write_site, WEB.replace('"serve --port {port}"',
                                               '{ dev = "serve {prot}", prod = "serve" }'))
    assert "'command' uses undefined placeholder {prot} (did you mean '{port}'?)" in error


# --------------------------------------------------------------------------------------------
# [vars] and {port:NAME}


def test_vars_and_named_placeholders_validate(write_site):
    site = load_site(write_site(HEAD + WEB + """
[vars]
log_level = { dev = "DEBUG", prod = "INFO" }
api = "http://127.0.0.1:{port:web}/{env}"
url = "{var:api}/v1"

[programs.worker]
instance = "side"
command = "work --api {var:url}"
environment = { API = "{var:api}", LEVEL = "{var:log_level}", WEB = "{port:web}" }
"""))
    assert site.vars["log_level"] == PerEnv({"dev": "DEBUG", "prod": "INFO"})
    assert site.vars["url"] == "{var:api}/v1"


def test_placeholder_fields_name_their_kind():
    assert placeholder_fields("{port} {port:web} {var:a} {secret:PW}") == {
        "port", "port:web", "var:a", "secret:PW"}
    with pytest.raises(ValueError, match="unsupported placeholder"):
        placeholder_fields("{env:x}")


@pytest.mark.parametrize(("text", "message"), [
    ("{var:lvl}", "'command' uses {var:lvl}, which [vars] does not declare (did you mean 'level'?)"),
    ("{port:wbe}", "'command' uses {port:wbe}, but there is no program 'wbe' (did you mean 'web'?)"),
    ("{port:quiet}", "'command' uses {port:quiet}, but program 'quiet' has no port"),
    ("{var:}", "'command' uses undefined placeholder {var}"),
    ("{file:nope}", "'command' uses {file:nope}, which [files] does not declare"),
    ("{dir:nope}", "'command' uses {dir:nope}, which [dirs] does not declare"),
    ("{secret:PW}", "'command' cannot use {secret:PW}: secrets go only into environment values, "
                    "vars and files"),
    ("{var:password}", "'command' uses {var:password}, which holds a secret: secrets go only"),
    ("{var:dsn}", "'command' uses {var:dsn}, which holds a secret"),  # through another var
])
def test_named_placeholder_problems(write_site, text, message):
    path = write_site(HEAD + WEB + f"""
[vars]
level = "INFO"
password = "{{secret:PW}}"
dsn = "db://u:{{var:password}}@h"

[programs.quiet]
instance = "main"
command = "run {text}"
""")
    errors = [str(p) for p in parse_site(path)[1] if p.level == "error"]
    assert len(errors) == 1, errors
    assert message in errors[0]
    assert errors[0].startswith(f"{path}:{line_of(path, 'run ')}: [programs.quiet] command:")


def test_vars_take_only_site_wide_placeholders_and_no_cycles(write_site):
    errors = errors_of(write_site, """
[vars]
a = "{var:b}"
b = "{var:a}-{env}"
c = "{state_dir}"
""")
    assert any("[vars] a: 'a' refers back to itself: {var:a} -> {var:b} -> {var:a}" in e
               for e in errors)
    assert any("[vars] c: 'c' uses undefined placeholder {state_dir}" in e for e in errors)


def test_a_var_name_must_be_an_identifier(write_site):
    assert "'log-level' is not a valid var name" in only_error(write_site,
                                                               '[vars]\n"log-level" = "x"\n')


def test_secrets_go_into_environment_values(write_site):
    assert errors_of(write_site, WEB + 'environment = { PW = "{secret:DB_PASSWORD}" }\n') == []
    assert "a secret name has letters, digits and '_' only" in only_error(
        write_site, WEB + 'environment = { PW = "{secret:db-pw}" }\n')


# --------------------------------------------------------------------------------------------
# [files] and [dirs]

FILE = """
[files.conf]
template = "templates/app.conf.j2"
path = "{state_dir}/app.conf"
instance = "main"
"""


def test_files_and_dirs_are_read(write_site):
    site = load_site(write_site(HEAD + WEB + FILE + """
[dirs.scratch]
path = { dev = "/scratch/dev", prod = "/scratch/prod" }
mode = "2770"
group = "jaws"
instance = "main"
"""))
    conf = site.files["conf"]
    assert (conf.template, conf.path, conf.mode, conf.instance) == (
        "templates/app.conf.j2", "{state_dir}/app.conf", 0o600, "main")
    scratch = site.dirs["scratch"]
    assert scratch.mode == 0o2770
    assert scratch.group == "jaws"
    assert scratch.path == PerEnv({"dev": "/scratch/dev", "prod": "/scratch/prod"})


def test_a_program_uses_files_of_its_own_instance(write_site):
    site = load_site(write_site(HEAD + WEB + 'files = ["conf"]\n' + FILE))
    assert site.programs["web"].files == ["conf"]
    error = only_error(write_site, WEB + 'files = ["conf"]\n'
                       + FILE.replace('instance = "main"', 'instance = "side"'))
    assert "file 'conf' belongs to instance 'side', the program to 'main'" in error
    assert "file 'cnof' is not declared in [files] (did you mean 'conf'?)" in only_error(
        write_site, WEB + 'files = ["cnof"]\n' + FILE)


@pytest.mark.parametrize(("change", "message"), [
    (('"templates/app.conf.j2"', '"/etc/app.j2"'), "'template' must be a path under the site "
                                                   "root's templates/ folder"),
    (('"templates/app.conf.j2"', '"templates/../x.j2"'), "under the site root's templates/"),
    (('path = "{state_dir}', 'path = "conf'), "'path' must be an absolute path"),
    (('path = "{state_dir}', 'path = "{port}'), "'path' uses undefined placeholder {port}"),
    (('path = "{state_dir}', 'path = "{secret:X}'), "'path' cannot use {secret:X}"),
    (('instance = "main"', 'instance = "mian"'), "instance 'mian' is not declared (did you "
                                                 "mean 'main'?)"),
    (('instance = "main"', 'instance = "main"\nmode = "0646"'), "'mode' 0646 lets everyone write"),
    (('instance = "main"', 'instance = "main"\nmode = "4750"'), "a file takes permission bits only"),
    (('instance = "main"', 'instance = "main"\nmode = "rw-r--r--"'), "'mode' must be an octal "
                                                                       "string"),
])
def test_file_problems(write_site, change, message):
    assert message in only_error(write_site, FILE.replace(*change))


DIR = """
[dirs.scratch]
path = "/scratch/{env}"
mode = "2770"
instance = "main"
"""


@pytest.mark.parametrize(("change", "message"), [
    (('"/scratch/{env}"', '"{runtime_dir}/scratch"'), "'path' uses {runtime_dir} but a managed "
                                                      "dir must survive `down --purge`"),
    (('"2770"', '"0777"'), "lets everyone write to it: add the sticky bit"),
    (('"2770"', '"0570"'), "its owner needs rwx"),
    (('"/scratch/{env}"', '"/scratch/{port:web}"'), "'path' cannot use {port:web}"),
])
def test_dir_problems(write_site, change, message):
    assert message in only_error(write_site, WEB + DIR.replace(*change))


def test_a_sticky_world_writable_dir_is_fine(write_site):
    assert errors_of(write_site, DIR.replace('"2770"', '"1777"')) == []


def check_errors(path) -> list[str]:
    return [str(p) for p in ops.check([path]).errors]


def test_check_flags_one_dir_declared_with_two_modes(write_site):
    """At JAWS two shims set one scratch dir to 2770 and 2775: its mode depended on start order."""
    path = write_site(HEAD + DIR + DIR.replace("dirs.scratch", "dirs.scratch2")
                      .replace('"2770"', '"2775"'))
    errors = check_errors(path)
    assert len(errors) == 2, errors  # once per env
    line = line_of(path, "[dirs.scratch2]") + 1
    assert errors[0] == (f"{path}:{line}: [dirs.scratch2] path: dir scratch2 and dir scratch are "
                         "both /scratch/dev in env dev, with mode 2775 and mode 2770: declare it "
                         "once, with one mode")


def test_check_flags_a_dir_two_accounts_would_make_and_a_file_written_twice(write_site):
    path = write_site(HEAD.replace("[instances.side]", '[instances.side]\nuser = "nobody"')
                      + DIR + DIR.replace("dirs.scratch", "dirs.again")
                      .replace('"main"', '"side"')
                      + FILE + FILE.replace("files.conf", "files.copy")
                      .replace("{state_dir}", "/srv"))
    errors = check_errors(path)
    assert any("dir again and dir scratch are both /scratch/dev in env dev, made by nobody and by"
               in e for e in errors), errors
    assert not any("files.copy" in e for e in errors)
    path = write_site(HEAD + FILE + FILE.replace("files.conf", "files.copy"))
    assert any(re.search(r"\[files.copy\] path: file copy and file conf are both .*/app.conf in "
                         r"env dev", e) for e in check_errors(path))


def test_a_var_that_makes_a_path_relative_in_one_env(write_site):
    path = write_site(HEAD + '[vars]\nbase = { dev = "/srv", prod = "srv" }\n'
                      + DIR.replace('"/scratch/{env}"', '"{var:base}/scratch"'))
    assert check_errors(path) == [f"{path}:{line_of(path, 'path =')}: [dirs.scratch] path: 'path' "
                                  "is 'srv/scratch' in env prod: it must be absolute"]


def test_a_home_of_an_account_this_host_lacks_is_no_problem(write_site):
    path = write_site(HEAD.replace("[instances.side]", '[instances.side]\nuser = "sbt_not_here"')
                      + DIR.replace('"/scratch/{env}"', '"~/scratch"').replace('"main"', '"side"')
                      + FILE.replace('"main"', '"side"'))
    assert check_errors(path) == []
