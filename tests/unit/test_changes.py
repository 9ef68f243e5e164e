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


def test_content_providers_feed_the_rendered_digests(tmp_path: Path, monkeypatch):
    from siteboot import content

    plan = plan_from(own_site_text(tmp_path), tmp_path)
    inst = plan.instances["main"]
    assert content_digests(plan, inst) == {}
    monkeypatch.setattr(content, "PROVIDERS", [lambda plan, inst, program: {"data.x": "abc"}])
    assert content_digests(plan, inst) == {"web": {"data.x": "abc"}}


def test_an_event_listener_is_a_group_of_its_own_not_a_server_setting():
    listener = "\n[eventlistener:siteboot-healer]\ncommand = heal\n"
    (change,) = compare_programs(config(WEB) + listener, config(WEB) + listener.replace("= heal", "= h2"))
    assert (change.program, change.keys) == ("siteboot-healer", ("command",))
    assert compare_server(config(WEB) + listener, config(WEB)) == []
