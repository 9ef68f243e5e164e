"""changes: per-program differences between two rendered configs."""

from __future__ import annotations

import textwrap
from pathlib import Path

from siteboot.changes import UNKNOWN, compare, compare_programs, compare_server, sections
from siteboot.content import content_digests
from siteboot.render import held_programs, render_instance
from tests.helpers import own_site_text, plan_from

SERVER = """
; Rendered by siteboot 1.0
[inet_http_server]
port = 127.0.0.1:4001
password = {SHA}abc

[supervisord]
identifier = t-main-dev
"""


def config(*programs: str, server: str = SERVER) -> str:
    return textwrap.dedent(server) + "".join(textwrap.dedent(p) for p in programs)


WEB = """
[program:web]
command = python3 -m http.server 8000
autostart = true
"""
WORKER = """
[program:worker]
; content venv.app = .app-111111111111
command = work
environment = A="1"
"""


def test_sections_reads_keys_content_comments_and_continuations():
    found = sections(config(WORKER) + "[program:x]\ncommand = a\n  b\n")
    assert found["program:worker"] == {"content venv.app": ".app-111111111111",
                                       "command": "work", "environment": 'A="1"'}
    assert found["program:x"]["command"] == "a\nb"
    assert found["supervisord"] == {"identifier": "t-main-dev"}


def test_nothing_changed():
    assert compare(config(WEB), config(WEB), config(WEB)).empty


def test_programs_added_removed_and_changed_with_their_keys():
    new_worker = WORKER.replace("= work", "= work --fast").replace(".app-1", ".app-2")
    changes = compare_programs(config(WEB, WORKER), config(new_worker, """
        [program:api]
        command = api
        """))
    assert [(c.program, c.change, c.keys) for c in changes] == [
        ("web", "removed", ()),
        ("worker", "changed", ("content venv.app", "command")),
        ("api", "added", ())]
    assert all(c.restarts for c in changes)


def test_autostart_alone_restarts_nothing():
    (change,) = compare_programs(config(WEB), config(WEB.replace("true", "false")))
    assert change.keys == ("autostart",)
    assert not change.restarts
    assert compare(config(WEB), config(WEB), config(WEB.replace("true", "false"))).to_restart() == []


def test_supervisords_view_decides_what_is_loaded():
    # supervisord runs `web` (and an old group), the copy of what was applied knows neither
    changes = compare_programs(config(), config(WEB), running={"web", "t-dev"})
    assert [(c.program, c.change, c.keys) for c in changes] == [
        ("t-dev", "removed", ()), ("web", "changed", (UNKNOWN,))]


def test_server_settings_name_section_and_key_and_ignore_comments():
    moved = SERVER.replace("4001", "4002").replace("1.0", "2.0")
    assert compare_server(config(WEB), config(WEB, server=moved)) == ["[inet_http_server] port"]
    # a group an older siteboot rendered is not a server setting
    assert compare_server(config(WEB) + "[group:t-dev]\nprograms = web\n", config(WEB)) == []


def test_held_programs_render_autostart_false_and_digests_as_comments(tmp_path: Path):
    plan = plan_from(own_site_text(tmp_path, extra="""
        [programs.worker]
        instance = "main"
        command = "{python} -m siteboot.demo work"
        numprocs = 2
        """), tmp_path)
    inst = plan.instances["main"]
    assert held_programs(inst, {"web", "worker_00"}) == {"web"}  # all of a program's processes
    text = render_instance(plan, inst, "{SHA}x", preview=False, root=None, held=frozenset({"web"}),
                           content={"worker": {"venv.app": ".app-abc"}})
    programs = {name: opts for name, opts in sections(text).items() if name.startswith("program")}
    assert programs["program:web"]["autostart"] == "false"
    assert programs["program:worker"]["autostart"] == "true"
    assert programs["program:worker"]["content venv.app"] == ".app-abc"
    assert "[group:" not in text


def test_content_digests_name_the_venv_build(tmp_path: Path):
    plan = plan_from(f"""
        [site]
        name = "t"
        runtime_dir = "{tmp_path}/rt-{{env}}"
        state_dir = "{tmp_path}/st"
        venv_dir = "{tmp_path}/v"

        [instances.main]
        port = {{ dev = 40001, staging = 40002, prod = 40003 }}

        [venvs.app]
        requirements = []

        [programs.api]
        instance = "main"
        venv = "app"
        command = "{{venv}}/bin/python -m api"
        """, tmp_path)
    inst = plan.instances["main"]
    assert content_digests(plan, inst) == {"api": {"venv.app": "(not built)"}}
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / ".app-0123456789ab").mkdir()
    (tmp_path / "v" / "app").symlink_to(".app-0123456789ab")
    assert content_digests(plan, inst) == {"api": {"venv.app": ".app-0123456789ab"}}
