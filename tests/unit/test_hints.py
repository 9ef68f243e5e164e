"""Commands in hints carry the site options the operator gave (issue 9, item 6)."""

from __future__ import annotations

import pytest

from siteboot.hints import Invocation, command, read_invocation, remember


@pytest.mark.parametrize(("args", "expected"), [
    ([], Invocation()),
    (["status", "--site", "myapp", "-e", "prod", "-i", "jobs"],
     Invocation("myapp", "prod", None, ("jobs",))),
    (["up", "--site=my app.toml", "--env=prod", "--root=/srv", "-ia", "--instance", "b"],
     Invocation("my app.toml", "prod", "/srv", ("a", "b"))),
    (["-smyapp", "-eprod", "down"], Invocation("myapp", "prod")),
    (["ctl", "-i", "alpha", "--", "status", "-i", "x", "--site", "no"],
     Invocation(instances=("alpha",))),
    (["start", "web", "--timeout", "5"], Invocation()),
])
def test_read_invocation(args, expected):
    assert read_invocation(args, {}) == expected


def test_the_environment_counts_as_given_and_the_command_line_wins():
    environ = {"SITEBOOT_SITE": "jaws", "SITEBOOT_ENV": "staging", "SITEBOOT_ROOT": ""}
    assert read_invocation(["status"], environ) == Invocation("jaws", "staging")
    assert read_invocation(["status", "-e", "prod"], environ) == Invocation("jaws", "prod")


def test_nothing_given_gives_the_plain_command():
    assert command("up") == "siteboot up"
    assert command("down", "--orphans") == "siteboot down --orphans"
    assert command("up", instance="alpha") == "siteboot up -i alpha"


def test_the_example_of_the_issue():
    remember(["status", "--site", "myapp", "-e", "prod", "-i", "jobs"], {})
    assert command("up") == "siteboot up --site myapp -e prod -i jobs"
    assert command("up", env="prod") == "siteboot up --site myapp -e prod -i jobs"


def test_instances_only_for_commands_that_take_them():
    remember(["start", "-i", "alpha", "--root", "/srv/my sites"], {})
    assert command("revive") == "siteboot revive --root '/srv/my sites'"
    assert command("start", "alpha:web") == "siteboot start alpha:web --root '/srv/my sites'"
    assert command("down", instance="beta") == "siteboot down --root '/srv/my sites' -i beta"


def test_the_env_a_hint_is_about():
    # revive --all-envs goes through envs nobody named: the hint names the one it is about
    assert command("up", env="staging") == "siteboot up -e staging"
    assert command("up", env="dev") == "siteboot up"
    remember(["revive", "--env", "dev"], {})
    assert command("up", env="dev") == "siteboot up -e dev"


def test_another_program_and_quoting():
    remember(["init", "--site", "sites/a b.toml"], {})
    assert command("init", program="python3 -m siteboot") == \
        "python3 -m siteboot init --site 'sites/a b.toml'"
    assert command("start", "alpha:*") == "siteboot start 'alpha:*' --site 'sites/a b.toml'"
    assert command("down", "--orphans") == "siteboot down --orphans --site 'sites/a b.toml'"
