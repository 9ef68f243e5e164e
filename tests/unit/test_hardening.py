"""What another local user could plant in shared places is refused, never followed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from siteboot.errors import KeyAccessError, OwnershipError
from siteboot.fsutil import ensure_private_dir, verify_shared_parent, verify_unswappable
from siteboot.keys import _read, publish_key, read_key
from siteboot.resources import find_root
from tests.helpers import plan_from

NOBODY = 65534
STRANGER = 54321  # a uid no account has: neither root, nor us, nor a namespace's overflow


def _one_instance_plan(short_dir: Path, runtime: str = "run", instance: str = "a",
                       extra: str = "") -> Any:
    return plan_from(f"""
        [site]
        name = "t"
        envs = ["dev"]
        runtime_dir = "{short_dir}/{runtime}"
        state_dir = "{short_dir}/state"
        shared_dir = "{short_dir}/shared"

        [instances.{instance}]
        port = {{ dev = 40001 }}
        {extra}
        """, short_dir)


def test_a_symlink_at_the_instance_dir_is_refused(short_dir: Path):
    target = short_dir / "victim"
    target.mkdir(mode=0o755)
    link = short_dir / "inst"
    link.symlink_to(target)
    with pytest.raises(OwnershipError, match="not a directory"):
        ensure_private_dir(link)
    assert target.stat().st_mode & 0o777 == 0o755  # untouched


def test_a_parent_shared_by_accounts_must_be_roots_and_sticky(short_dir: Path):
    shared = short_dir / "run"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    verify_shared_parent(shared)  # root's and sticky, like /tmp
    os.chmod(shared, 0o777)
    with pytest.raises(OwnershipError, match="must be root's and sticky") as info:
        verify_shared_parent(shared)
    assert "install -d -m 1777" in (info.value.hint or "")
    os.chmod(shared, 0o1777)
    os.chown(shared, STRANGER, STRANGER)  # a site user made it first: it could move the others'
    with pytest.raises(OwnershipError, match=f"it is {STRANGER}'s"):
        verify_shared_parent(shared)
    link = short_dir / "link"
    link.symlink_to(shared)
    with pytest.raises(OwnershipError, match="symlink"):
        verify_shared_parent(link)


def test_a_parent_of_one_account_is_private(short_dir: Path):
    two = plan_from(f"""
        [site]
        name = "t"
        envs = ["dev"]
        runtime_dir = "{short_dir}/run"
        [instances.a]
        port = {{ dev = 40001 }}
        [instances.b]
        user = "nobody"
        port = {{ dev = 40002 }}
        """, short_dir)
    assert not two.instances["a"].runtime_parent_private  # shared with nobody's instance
    one = _one_instance_plan(short_dir)
    assert one.instances["a"].runtime_parent_private


def test_private_parent_when_the_path_names_the_user(short_dir: Path):
    plan = _one_instance_plan(short_dir, runtime="run-{user}")
    inst = plan.instances["a"]
    assert inst.runtime_parent_private
    from siteboot.instances import prepare_runtime_dir

    prepare_runtime_dir(inst)
    assert inst.runtime_parent is not None
    assert inst.runtime_parent.stat().st_mode & 0o7777 == 0o700


def _granted_plan(short_dir: Path) -> Any:
    return _one_instance_plan(short_dir, instance="other", extra='user = "nobody"\ngroup = "root"')


def test_a_planted_shared_key_is_not_used(short_dir: Path):
    plan = _granted_plan(short_dir)
    inst = plan.instances["other"]
    assert inst.shared_key_path is not None
    inst.shared_key_path.parent.mkdir()
    secret = short_dir / "my-own-secret"
    secret.write_text("do-not-send\n")
    inst.shared_key_path.symlink_to(secret)
    with pytest.raises(KeyAccessError, match="cannot read key file"):
        read_key(plan, inst)
    inst.shared_key_path.unlink()
    inst.shared_key_path.write_text("planted\n")  # a regular file, but root's, not nobody's
    os.chmod(inst.shared_key_path, 0o640)
    with pytest.raises(KeyAccessError, match="refusing key file"):
        read_key(plan, inst)
    os.chown(inst.shared_key_path, NOBODY, 0)
    assert read_key(plan, inst) == "planted"
    os.chmod(inst.shared_key_path, 0o644)  # readable by everyone: no longer a grant
    with pytest.raises(KeyAccessError, match="unreadable by others"):
        read_key(plan, inst)


def test_publishing_replaces_a_planted_symlink_without_following_it(short_dir: Path):
    plan = _one_instance_plan(short_dir, instance="mine", extra='group = "root"')
    inst = plan.instances["mine"]
    assert inst.shared_key_path is not None
    inst.shared_key_path.parent.mkdir()
    decoy = short_dir / "decoy"
    decoy.write_text("untouched\n")
    inst.shared_key_path.symlink_to(decoy)
    publish_key(inst, "the-key")
    assert decoy.read_text() == "untouched\n"
    assert not inst.shared_key_path.is_symlink()
    assert _read(inst.shared_key_path, os.geteuid(), 0) == "the-key"


def test_a_sites_folder_anyone_could_write_is_not_a_site_root(short_dir: Path):
    shared = short_dir / "tmp"
    shared.mkdir()
    os.chmod(shared, 0o755)
    planted = shared / "sites"
    planted.mkdir()
    os.chmod(planted, 0o777)
    (shared / "work").mkdir()
    notes: list[str] = []
    assert find_root(cwd=shared / "work", notice=notes.append) != shared
    assert notes == [f"note: ignoring the site root {shared}: sites is writable by everyone; to "
                     f"use it anyway, pass --root {shared}"]
    os.chmod(planted, 0o775)
    assert find_root(cwd=shared / "work", notice=notes.append) != shared
    assert "sites is writable by its group" in notes[-1]
    os.chmod(planted, 0o755)
    assert find_root(cwd=shared / "work") == shared
    # a sticky shared folder (like /tmp) is no root either: templates/ could appear in it later
    os.chmod(shared, 0o1777)
    assert find_root(cwd=shared / "work", notice=notes.append) != shared
    assert f"{shared} is writable by everyone" in notes[-1]
    os.chmod(shared, 0o755)
    os.chown(planted, NOBODY, NOBODY)
    notes.clear()
    assert find_root(cwd=shared / "work", notice=notes.append) != shared
    assert "sites belongs to nobody" in notes[0]
    assert find_root(str(shared)) == shared  # named explicitly: trusted


def test_a_planted_root_with_a_symlink_to_trusted_sites_and_its_own_templates(short_dir: Path):
    """The attack: `sites -> <a trusted checkout's sites/>` beside the attacker's templates/."""
    trusted = short_dir / "checkout"
    (trusted / "sites").mkdir(parents=True)
    (trusted / "sites" / "t.toml").write_text("")
    planted = short_dir / "tmp"
    planted.mkdir()
    (planted / "sites").symlink_to(trusted / "sites")
    (planted / "templates").mkdir()
    evil = planted / "templates" / "supervisord.conf.j2"
    evil.write_text("{{ ''.__class__ }}\n[program:evil]\ncommand = touch /tmp/pwned\n")
    (planted / "work").mkdir()
    notes: list[str] = []
    assert find_root(cwd=planted / "work", notice=notes.append) == planted  # all ours, so far
    os.chown(evil, NOBODY, NOBODY)
    assert find_root(cwd=planted / "work", notice=notes.append) != planted
    assert "templates/supervisord.conf.j2 belongs to nobody" in notes[-1]
    os.chown(evil, 0, 0)
    os.lchown(planted / "sites", NOBODY, NOBODY)  # the link is a stranger's, its target is not
    assert find_root(cwd=planted / "work", notice=notes.append) != planted
    assert "sites is a symlink of nobody" in notes[-1]
    os.lchown(planted / "sites", 0, 0)
    os.chown(trusted / "sites" / "t.toml", NOBODY, NOBODY)  # what the link points into counts
    assert find_root(cwd=planted / "work", notice=notes.append) != planted
    assert "t.toml belongs to nobody" in notes[-1]


def test_down_purge_never_deletes_through_a_planted_path(short_dir: Path):
    from siteboot.instances import down

    victim = short_dir / "victim"
    (victim / "a").mkdir(parents=True)
    (victim / "a" / "precious").write_text("data\n")
    plan = _one_instance_plan(short_dir)
    (short_dir / "run").symlink_to(victim)  # what someone could leave after a /tmp wipe
    (outcome,) = down(plan, purge=True).outcomes
    assert outcome.action == "not running"
    assert any("left the runtime files alone" in note for note in outcome.notes)
    assert (victim / "a" / "precious").read_text() == "data\n"


def test_a_fifo_at_the_shared_key_does_not_hang(short_dir: Path):
    plan = _granted_plan(short_dir)
    inst = plan.instances["other"]
    assert inst.shared_key_path is not None
    inst.shared_key_path.parent.mkdir()
    os.mkfifo(inst.shared_key_path)
    os.chown(inst.shared_key_path, NOBODY, 0)
    os.chmod(inst.shared_key_path, 0o640)
    with pytest.raises(KeyAccessError, match="refusing key file"):
        read_key(plan, inst)


def test_no_stranger_can_swap_a_directory_on_the_way(short_dir: Path):
    """Whoever may write a directory's parent can rename it: every step must be root's or the
    owner's, and a step others may write must be sticky."""
    me = os.geteuid()
    tmp = short_dir / "tmp"
    tmp.mkdir()
    os.chmod(tmp, 0o1777)
    verify_unswappable(tmp / "run" / "a", me)  # /tmp-like: fine
    project = short_dir / "project"  # a PI's project area
    project.mkdir()
    os.chown(project, STRANGER, 0)
    with pytest.raises(OwnershipError, match=f"which belongs to {STRANGER}"):
        verify_unswappable(project / "run", me)
    team = short_dir / "team"
    team.mkdir()
    os.chmod(team, 0o2775)  # group-writable, setgid, not sticky: any member can rename entries
    with pytest.raises(OwnershipError, match="its group may write without the sticky bit"):
        verify_unswappable(team / "run", me)
    os.chmod(team, 0o3775)
    verify_unswappable(team / "run", me)
    mine = short_dir / "scratchlink"  # ~/scratch -> /scratch/..., common on HPC
    mine.symlink_to(tmp)
    verify_unswappable(mine / "run2", me)
    theirs = short_dir / "theirs"
    theirs.symlink_to(tmp)
    os.lchown(theirs, STRANGER, STRANGER)
    with pytest.raises(OwnershipError, match=f"a symlink of {STRANGER}"):
        verify_unswappable(theirs / "run3", me)
    into = short_dir / "into"
    into.symlink_to(project)  # our link, into a stranger's directory
    with pytest.raises(OwnershipError, match=f"belongs to {STRANGER}"):
        verify_unswappable(into / "run4", me)
