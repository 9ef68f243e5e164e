"""deploy: releases, pointers, pruning, the lock (no supervisord)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from siteboot import deploy
from siteboot.errors import InstanceError, UsageError
from siteboot.progress import Lines
from tests.helpers import own_site_text, plan_from


@pytest.fixture
def plan(short_dir: Path):
    return plan_from(own_site_text(short_dir), short_dir)


def test_a_release_is_a_site_root_of_its_own(plan, short_dir):
    release = deploy.make_release(plan, None, now=0)
    assert release.id == f"19700101T000000Z-{deploy.NO_COMMIT}"  # short_dir is no git checkout
    assert release.site_file.read_text() == plan.site.path.read_text()
    assert (release.path / "templates" / "supervisord.conf.j2").is_file()
    assert "PREVIEW" in (release.path / "configs" / "supervisord-main.conf").read_text()
    assert os.stat(release.path).st_mode & 0o777 == 0o700
    again = deploy.make_release(plan, None, now=0)  # the same second: a name of its own
    assert again.id == f"{release.id}-2"
    assert [r.id for r in deploy.list_releases(plan)] == [release.id, again.id]
    assert deploy.release_plan(plan, release).instances.keys() == plan.instances.keys()


def test_prune_keeps_the_newest_and_never_the_current_or_previous(plan):
    made = [deploy.make_release(plan, None, now=n * 60).id for n in range(8)]
    pointers = deploy.Pointers(current=made[0], previous=made[1])  # rolled back far
    removed = deploy.prune(plan, pointers)
    assert removed == made[2:3]  # keep_releases = 5: the oldest go, but not those two
    assert [r.id for r in deploy.list_releases(plan)] == made[:2] + made[3:]


def test_an_unknown_release_is_named_with_a_hint(plan):
    made = deploy.make_release(plan, None, now=0)
    with pytest.raises(UsageError, match="did you mean"):
        deploy.find_release(plan, made.id[:-1])


def test_rollback_without_a_previous_release_says_so(plan):
    with pytest.raises(UsageError, match="no previous release"):
        deploy.rollback(plan)


def test_the_lock_names_its_holder(plan):
    told: list[str] = []
    held = f"deploy lock of t dev, held by pid {os.getpid()}"
    with deploy.deploy_lock(plan), pytest.raises(InstanceError, match=held), \
            deploy.deploy_lock(plan, timeout=0.2, progress=Lines(told.append)):
        pass
    assert "waiting for the deploy lock" in told[0]
