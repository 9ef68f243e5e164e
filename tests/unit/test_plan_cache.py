"""The plan cache of ``status``: the same plan as a fresh resolution, rebuilt whenever anything it
was built from changed, and never read from a file the invoker does not own privately."""

from __future__ import annotations

import json
import os
import stat
import textwrap
from pathlib import Path

import pytest

from siteboot import plan_cache
from siteboot.plan import Sealed, make_plan
from siteboot.plan_cache import cache_path, load_or_build
from siteboot.site import load_site
from tests.unit.test_plan_values import SITE as RICH_SITE

AUTO_SITE = """
[site]
name = "a"
envs = ["dev"]
state_dir = "{home}/state/{site}-{env}"
runtime_dir = "/tmp/a-{env}"

[instances.main]
port = "auto"

[programs.web]
instance = "main"
command = "serve {port}"
port = "auto"
"""

FIXED_SITE = AUTO_SITE.replace('port = "auto"', "port = { dev = 45011 }", 1).replace(
    'port = "auto"', "port = { dev = 45012 }")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home of the invoker's own; inputs count as settled at once (the tests edit files
    within the timestamps' granularity only with a change of size)."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.delenv("SITEBOOT_HOST", raising=False)
    monkeypatch.setattr(plan_cache, "SETTLE_NS", 0)
    return folder


@pytest.fixture
def builds(monkeypatch):
    """How often the site file was parsed."""
    import siteboot.site

    count = [0]
    real = siteboot.site.load_site

    def counting(path):
        count[0] += 1
        return real(path)

    monkeypatch.setattr(siteboot.site, "load_site", counting)
    return count


def site_file(folder: Path, text: str = RICH_SITE, name: str = "t") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_the_cached_plan_is_the_fresh_one(home, tmp_path, builds):
    path = site_file(tmp_path)
    first = load_or_build(path, "prod")
    cached = load_or_build(path, "prod")
    assert builds[0] == 1
    fresh = make_plan(load_site(path), "prod")
    assert cached == first == fresh
    worker, fresh_worker = (plan.instances["main"].program("worker") for plan in (cached, fresh))
    assert worker is not None
    assert fresh_worker is not None
    dsn, fresh_dsn = worker.environment["DSN"], fresh_worker.environment["DSN"]
    assert isinstance(dsn, Sealed)
    assert isinstance(fresh_dsn, Sealed)
    assert dsn.parts == fresh_dsn.parts
    assert isinstance(cached.instances["main"].files[0].users, tuple)
    assert isinstance(cached.invoker_state_dir, Path)


def test_each_env_is_cached_apart(home, tmp_path, builds):
    path = site_file(tmp_path)
    assert load_or_build(path, "dev").env == "dev"
    assert load_or_build(path, "prod").env == "prod"
    assert load_or_build(path, "dev").env == "dev"
    assert builds[0] == 2
    assert cache_path(path, "dev") != cache_path(path, "prod")


def test_a_cache_file_is_private(home, tmp_path):
    path = site_file(tmp_path)
    load_or_build(path, "dev")
    cache = cache_path(path, "dev")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
    assert cache.parent == home / ".local" / "state" / "siteboot" / "plans"


def test_an_edited_site_file_is_read_again(home, tmp_path, builds):
    path = site_file(tmp_path)
    load_or_build(path, "dev")
    site_file(tmp_path, RICH_SITE.replace("hello world", "hello there, world"))
    plan = load_or_build(path, "dev")
    assert plan.vars["greeting"] == "hello there, world"
    assert builds[0] == 2


def test_a_broken_edit_is_an_error_not_the_old_plan(home, tmp_path):
    from siteboot.errors import SiteFileError

    path = site_file(tmp_path)
    load_or_build(path, "dev")
    path.write_text(path.read_text() + "\n[programs.web\n")
    with pytest.raises(SiteFileError):
        load_or_build(path, "dev")


def test_another_host_home_or_interpreter_builds_again(home, tmp_path, builds, monkeypatch):
    path = site_file(tmp_path)
    load_or_build(path, "dev")
    monkeypatch.setenv("SITEBOOT_HOST", "elsewhere.example")
    assert load_or_build(path, "dev").host == "elsewhere.example"
    other = tmp_path / "other-home"
    other.mkdir()
    monkeypatch.setenv("HOME", str(other))
    load_or_build(path, "dev")
    monkeypatch.setattr("sys.executable", "/opt/other/python3")
    plan = load_or_build(path, "dev")
    assert "/opt/other/python3" not in str(plan)  # not used by this site, still an input
    assert builds[0] == 4


def test_an_allocated_port_is_read_again(home, tmp_path, builds):
    from siteboot.plan import UNALLOCATED, port_record_path

    path = site_file(tmp_path, AUTO_SITE.replace("{home}", str(home)), "a")
    plan = load_or_build(path, "dev")
    assert plan.instances["main"].port == UNALLOCATED
    record = port_record_path(plan.instances["main"].state_dir, "a", "dev")
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text('{"ports": {"supervisord-main": 45001, "program web": 45002}}')
    record.chmod(0o600)
    plan = load_or_build(path, "dev")
    assert (plan.instances["main"].port, plan.ports["web"]) == (45001, 45002)
    assert builds[0] == 2


def test_a_corrupt_cache_is_rebuilt(home, tmp_path, builds):
    path = site_file(tmp_path)
    load_or_build(path, "dev")
    cache = cache_path(path, "dev")
    head = cache.read_bytes().partition(b"\n")[0]
    for garbage in (b"not json", head + b"\n{\"\\u0000\": \"Nope\", \"fields\": {}}",
                    head + b"\n[1, 2", head + b"\n{\"\\u0000\": \"Plan\", \"fields\": {}}"):
        cache.write_bytes(garbage)
        assert load_or_build(path, "dev") == make_plan(load_site(path), "dev")
    assert builds[0] == 5
    load_or_build(path, "dev")
    assert builds[0] == 5  # written anew


def test_a_cache_others_could_have_written_is_not_read(home, tmp_path, builds):
    path = site_file(tmp_path)
    load_or_build(path, "dev")
    cache = cache_path(path, "dev")
    cache.chmod(0o644)
    load_or_build(path, "dev")
    assert builds[0] == 2
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600  # replaced by a private one
    cache.parent.chmod(0o755)
    load_or_build(path, "dev")
    assert builds[0] == 3
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700


def test_a_planted_symlink_is_not_followed(home, tmp_path, builds):
    path = site_file(tmp_path)
    load_or_build(path, "dev")
    cache = cache_path(path, "dev")
    target = tmp_path / "planted.json"
    target.write_bytes(cache.read_bytes())
    target.chmod(0o600)
    cache.unlink()
    cache.symlink_to(target)
    load_or_build(path, "dev")
    assert builds[0] == 2
    assert not cache.is_symlink()
    assert target.read_bytes() != b""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file away")
def test_a_cache_of_another_account_is_not_read_nor_written(home, tmp_path, builds):
    path = site_file(tmp_path)
    load_or_build(path, "dev")
    cache = cache_path(path, "dev")
    os.chown(cache, 65534, -1)
    load_or_build(path, "dev")
    assert builds[0] == 2
    assert cache.stat().st_uid == 0  # replaced in the invoker's own dir
    os.chown(cache.parent, 65534, -1)
    before = cache.read_bytes()
    assert load_or_build(path, "dev").env == "dev"  # status still works, uncached
    assert load_or_build(path, "dev").env == "dev"
    assert builds[0] == 4
    assert cache.read_bytes() == before


def test_a_young_input_is_not_cached(home, tmp_path, builds, monkeypatch):
    monkeypatch.setattr(plan_cache, "SETTLE_NS", 3_000_000_000)
    path = site_file(tmp_path)
    load_or_build(path, "dev")
    assert not cache_path(path, "dev").exists()


def test_the_model_code_is_an_input(home, tmp_path):
    import siteboot.plan
    import siteboot.site

    path = site_file(tmp_path)
    load_or_build(path, "dev")
    header = cache_path(path, "dev").read_bytes().partition(b"\n")[0].decode()
    for module in (siteboot.plan, siteboot.site, plan_cache):
        assert str(module.__file__) in header


def test_the_cache_holds_the_request_status_sends(home, tmp_path):
    from siteboot import rpc

    path = site_file(tmp_path)
    plan = load_or_build(path, "dev")
    header = json.loads(cache_path(path, "dev").read_bytes().partition(b"\n")[0])
    inst = plan.instances["main"]
    assert header["early"] == [["main", str(inst.socket_path), str(inst.key_path),
                                rpc.status_request(inst).decode()]]
    calls = rpc.status_calls(inst)
    assert rpc.status_request(inst) == rpc.request_body(
        "system.multicall", (rpc.multicall_payload(calls),))


def test_status_requests_go_out_only_from_a_trusted_cache(home, tmp_path, monkeypatch):
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr("siteboot.wire.send_early",
                        lambda socket_path, key, body, timeout: sent.append((socket_path, key)))
    path = site_file(tmp_path, FIXED_SITE.replace("{home}", str(home)), "f")
    plan_cache.send_status_requests(path, "dev")  # no cache yet
    plan = load_or_build(path, "dev")
    inst = plan.instances["main"]
    plan_cache.send_status_requests(path, "dev")  # no key yet: nothing to send
    inst.key_path.parent.mkdir(parents=True)
    inst.key_path.write_text("k3y\n")
    inst.key_path.chmod(0o600)
    plan_cache._TRUSTED.clear()
    plan_cache.send_status_requests(path, "dev", ["other"])
    plan_cache.send_status_requests(path, "dev", ["main"])
    assert sent == [(str(inst.socket_path), "k3y")]
    site_file(tmp_path, FIXED_SITE.replace("{home}", str(home)) + "\n# edited\n", "f")
    plan_cache._TRUSTED.clear()
    plan_cache.send_status_requests(path, "dev")  # the site changed: not sent
    assert len(sent) == 1
