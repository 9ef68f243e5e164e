"""The site model: every kind of bad input gives every problem, with file and line."""

from __future__ import annotations

import pytest

from siteboot.errors import EXIT_USAGE, SiteFileError
from siteboot.site import load_site, parse_site, reference_markdown
from tests.helpers import REPO


def errors_of(path):
    _, problems = parse_site(path)
    return [str(p) for p in problems if p.level == "error"]


def test_jaws_matrix_is_faithful():
    site = load_site(REPO / "sites" / "jaws.toml")
    assert site.programs["central-auth"].port == {"dev": 3001, "staging": 3002, "prod": 3003}
    assert site.programs["central-rest"].port == {"dev": 5001, "staging": 5002, "prod": 5003}
    assert site.programs["jaws-cromwell"].port == {"dev": 50101, "staging": 50102, "prod": 50103}
    assert site.instances["jaws"].port == {"dev": 64101, "staging": 64102, "prod": 64103}
    assert site.instances["jtm"].port == {"dev": 64111, "staging": 64112, "prod": 64113}
    assert site.instances["central"].port == {"dev": 64121, "staging": 64122, "prod": 64123}
    assert site.instances["jaws"].user == "jaws"
    assert site.instances["jtm"].user == "jaws_jtm"
    assert site.runtime_dir == "/tmp/jaws-supervisord-{env}"


def test_local_site_is_valid_and_runs_as_invoker():
    site = load_site(REPO / "sites" / "local.toml")
    assert set(site.instances) == {"services", "workers"}
    assert all(inst.user is None for inst in site.instances.values())


def test_local_site_has_only_auto_ports_so_any_account_can_run_it():
    site = load_site(REPO / "sites" / "local.toml")
    assert site.port_users() == []
    assert sorted(key for _inst, key, env in site.auto_ports() if env == "dev") == [
        "program web", "supervisord-services", "supervisord-workers"]


def test_auto_is_the_only_word_a_port_may_be(write_site):
    path = write_site("""
        [instances.a]
        port = "automatic"

        [instances.b]
        port = { dev = "auto", staging = "any", prod = 40003 }
        """)
    errors = "\n".join(errors_of(path))
    assert "'port' must be a table of env = port, e.g. { dev = 1024, staging = 1025, prod = 1026 }, " \
           "or \"auto\", not string 'automatic'" in errors
    assert "'port.staging' must be an integer port, not string 'any' (or \"auto\": siteboot picks " \
           "one)" in errors
    assert "port.dev" not in errors


def test_a_granted_instance_needs_a_fixed_port(write_site):
    path = write_site("""
        [site]
        shared_dir = "/srv/shared"

        [instances.a]
        group = "team"
        port = { dev = "auto", staging = 40002, prod = "auto" }
        """)
    (error,) = errors_of(path)
    assert error.endswith("[instances.a] port: a granted instance needs a fixed port (members of "
                          "team reach it on 127.0.0.1:<port>, and only its owner knows an auto "
                          "one): 'port' is \"auto\" in dev, prod")


def test_defaults_are_filled(write_site):
    site = load_site(write_site())
    assert site.envs == ["dev", "staging", "prod"]
    assert site.programs["web"].options["startsecs"] == 3
    assert site.programs["web"].options["autorestart"] == "unexpected"


def test_toml_syntax_error_names_file_line_and_column(write_site):
    path = write_site('[site]\nname = "x"\nenvs = ["dev",\n[instances.a]\n')
    with pytest.raises(SiteFileError) as info:
        load_site(path)
    text = str(info.value)
    assert str(path) in text
    assert "line 4" in text
    assert "column" in text
    assert info.value.exit_code == EXIT_USAGE


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(SiteFileError, match="file not found"):
        load_site(tmp_path / "nope.toml")


def test_every_problem_is_reported_at_once(write_site):
    path = write_site("""
        [site]
        nmae = "x"

        [instances.main]
        port = { dev = 40001, staging = "40002", prod = 99999 }
        usr = "bob"

        [programs.web]
        instance = "mian"
        command = "run --port {prot}"
        port = { dev = 40001, staging = 500 }

        [programs.db]
        instance = "main"
        command = "db"
        startsecs = "3"
        autorestart = "sometimes"
        """)
    errors = errors_of(path)
    text = "\n".join(errors)
    assert "unknown key 'nmae' (did you mean 'name'?)" in text
    assert "unknown key 'usr' (did you mean 'user'?)" in text
    assert "'port.staging' must be an integer port, not string '40002'" in text
    assert "'port.prod' = 99999 is outside 1024-65535" in text
    assert "instance 'mian' is not declared (did you mean 'main'?)" in text
    assert "undefined placeholder {prot} (did you mean '{port}'?)" in text
    assert "'port' has no port for env 'prod'" in text
    assert "'port.staging' = 500 is outside 1024-65535" in text
    assert "port 40001 is used by both program web (dev) and supervisord-main (dev)" in text
    assert "'startsecs' must be an integer, not string" in text
    assert "'autorestart' must be one of true, false, unexpected" in text
    assert len(errors) >= 11


def test_problems_carry_file_and_line(write_site):
    path = write_site("""
        [instances.main]
        port = { dev = 40001, staging = 40002, prod = 40003 }

        [programs.web]
        instance = "main"
        command = "x"
        colour = "blue"
        """)
    (error,) = errors_of(path)
    assert error.startswith(f"{path}:8: [programs.web] colour")


def test_port_clash_names_both_users_across_envs(write_site):
    path = write_site("""
        [instances.a]
        port = { dev = 40001, staging = 40002, prod = 40003 }

        [instances.b]
        port = { dev = 40011, staging = 40012, prod = 40013 }

        [programs.web]
        instance = "a"
        command = "x"
        port = { dev = 41001, staging = 41002, prod = 41003 }

        [programs.api]
        instance = "b"
        command = "y"
        port = { dev = 41005, staging = 41006, prod = 41001 }
        """)
    (error,) = errors_of(path)
    assert "port 41001 is used by both program web (dev) and program api (prod)" in error


def test_unknown_env_in_port_table(write_site):
    path = write_site("""
        [instances.a]
        port = { dev = 40001, staging = 40002, prod = 40003, prd = 40004 }
        """)
    assert any("'prd' is not an env of this site (did you mean 'prod'?)" in e
               for e in errors_of(path))


def test_port_must_be_a_table(write_site):
    path = write_site("""
        [instances.a]
        port = 40001
        """)
    assert any("must be a table of env = port" in e for e in errors_of(path))


def test_boolean_is_not_a_port(write_site):
    path = write_site("""
        [instances.a]
        port = { dev = true, staging = 40002, prod = 40003 }
        """)
    assert any("must be an integer port, not boolean" in e for e in errors_of(path))


def test_unknown_table_and_no_instances(write_site):
    errors = errors_of(write_site('[sites]\nname = "x"\n'))
    assert any("unknown table 'sites' (did you mean '[site]'?)" in e for e in errors)
    assert any("declares no [instances.NAME]" in e for e in errors)


def test_port_placeholder_needs_a_port(write_site):
    path = write_site("""
        [instances.a]
        port = { dev = 40001, staging = 40002, prod = 40003 }

        [programs.w]
        instance = "a"
        command = "work --port {port} {venv}"
        environment = { X = "{nope}" }
        """)
    text = "\n".join(errors_of(path))
    assert "'command' uses {port} but the program has no 'port' table" in text
    assert "'command' uses {venv} but the program names no 'venv'" in text
    assert "'environment.X' uses undefined placeholder {nope}" in text


def test_unbalanced_brace(write_site):
    path = write_site("""
        [instances.a]
        port = { dev = 40001, staging = 40002, prod = 40003 }

        [programs.w]
        instance = "a"
        command = "awk '{print $1}'"
        """)
    assert any("write a literal brace as '{{'" in e for e in errors_of(path))


def test_group_grant_needs_shared_dir(write_site):
    path = write_site("""
        [instances.a]
        port = { dev = 40001, staging = 40002, prod = 40003 }
        group = "staff"
        """)
    assert any("needs [site] shared_dir" in e for e in errors_of(path))


def test_numprocs_with_port_is_refused(write_site):
    path = write_site("""
        [instances.a]
        port = { dev = 40001, staging = 40002, prod = 40003 }

        [programs.w]
        instance = "a"
        command = "w {port}"
        port = { dev = 41001, staging = 41002, prod = 41003 }
        numprocs = 2
        """)
    assert any("cannot have numprocs > 1" in e for e in errors_of(path))


def test_relative_runtime_dir_and_bad_placeholder(write_site):
    path = write_site("""
        [site]
        runtime_dir = "tmp/{site}-{program}"

        [instances.a]
        port = { dev = 40001, staging = 40002, prod = 40003 }
        """)
    text = "\n".join(errors_of(path))
    assert "must be an absolute path" in text
    assert "undefined placeholder {program}" in text


def test_bad_env_var_name_and_non_string_value(write_site):
    path = write_site("""
        [instances.a]
        port = { dev = 40001, staging = 40002, prod = 40003 }

        [programs.w]
        instance = "a"
        command = "w"
        environment = { "1X" = "a", N = 3 }
        """)
    text = "\n".join(errors_of(path))
    assert "'environment.1X' is not a valid variable name" in text
    assert "'environment.N' must be a string, not integer" in text


def test_reference_lists_every_key():
    text = reference_markdown()
    for key in ("runtime_dir", "state_dir", "shared_dir", "user", "group", "command", "numprocs",
                "stopwaitsecs", "requirements"):
        assert f"`{key}`" in text


def test_readme_reference_is_current():
    readme = (REPO / "README.md").read_text()
    assert reference_markdown() in readme, "README's site-file reference is stale: regenerate it " \
        "with python -c 'from siteboot.site import reference_markdown; print(reference_markdown())'"
