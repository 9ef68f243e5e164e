"""Local paths and wheel folders in requirements: resolved in the site root, hashed by content,
copied for the build, refused when a stranger could change them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from siteboot.errors import BootstrapError
from siteboot.sources import digests, parse, parse_all, requirement_problem, snapshot


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A site root with a package folder, a wheel folder and some build litter."""
    base = tmp_path / "root"
    package = base / "jaws-site"
    (package / "jaws_site").mkdir(parents=True)
    (package / "pyproject.toml").write_text("[project]\nname = 'jaws-site'\nversion = '1'\n")
    (package / "jaws_site" / "__init__.py").write_text("VERSION = 1\n")
    (package / "bin").mkdir()
    (package / "bin" / "run").write_text("#!/bin/sh\n")
    wheels = base / "dist"
    wheels.mkdir()
    (wheels / "dep-1.0-py3-none-any.whl").write_bytes(b"PK wheel")
    os.chmod(base, 0o755)
    return base


def digest_of(root: Path, item: str) -> str:
    requirement = parse(item, root)
    return digests([requirement], root)[item]


def test_items_are_names_options_paths_or_wheel_folders(root):
    assert parse("six==1.17.0", root).words == ("six==1.17.0",)
    assert parse("six==1.17.0", root).path is None
    assert parse("--pre", root).words == ("--pre",)
    package = parse("./jaws-site[server,db]", root)
    assert (package.path, package.extras) == (root / "jaws-site", "[server,db]")
    assert package.arguments(Path("/copy/jaws-site")) == ["/copy/jaws-site[server,db]"]
    assert package.arguments() == ["./jaws-site[server,db]"]
    links = parse("--find-links ./dist", root)
    assert (links.path, links.links) == (root / "dist", True)
    assert links.arguments(Path("/copy/dist")) == ["--find-links", "/copy/dist"]
    assert parse("--find-links=dist", root).path == root / "dist"
    assert parse("-f ./dist", root).path == root / "dist"
    assert parse("--find-links https://example.org/wheels/", root).path is None
    assert parse(f"{root}/jaws-site", root).path == root / "jaws-site"  # absolute, inside


@pytest.mark.parametrize("item", ["../elsewhere", "/etc", "~/pkg", "./link-out"])
def test_a_path_outside_the_site_root_is_refused(root, item):
    (root.parent / "elsewhere").mkdir()
    os.symlink(root.parent / "elsewhere", root / "link-out")
    with pytest.raises(BootstrapError, match="outside the site root"):
        parse(item, root)


def test_a_missing_path_is_named(root):
    with pytest.raises(BootstrapError, match=r"'./jaws-central': .*/jaws-central does not exist"):
        parse("./jaws-central", root)


@pytest.mark.parametrize(("item", "problem"), [
    ("-e ./jaws-site", "an editable install"),
    ("--editable=./jaws-site", "an editable install"),
    ("--find-links", "--find-links takes one folder or URL"),
    ("--find-links 'a b", "cannot be split"),
])
def test_unusable_options_are_refused_in_the_site_file(item, problem):
    assert problem in (requirement_problem(item) or "")


def test_options_that_are_fine(root):
    assert requirement_problem("--find-links ./dist") is None
    assert requirement_problem("--pre") is None
    assert requirement_problem("./jaws-site") is None


def test_the_digest_follows_the_code(root):
    item = "./jaws-site"
    first = digest_of(root, item)
    assert digest_of(root, item) == first
    source = root / "jaws-site" / "jaws_site" / "__init__.py"
    source.write_text("VERSION = 2\n")
    second = digest_of(root, item)
    assert second != first
    os.utime(source, (0, 0))  # only the time changed: the same code
    assert digest_of(root, item) == second
    (root / "jaws-site" / "bin" / "run").chmod(0o755)
    assert digest_of(root, item) != second  # an executable bit is part of the code
    (root / "jaws-site" / "jaws_site" / "__init__.py").rename(root / "jaws-site" / "jaws_site" / "a.py")
    assert digest_of(root, item) not in (first, second)


def test_build_litter_does_not_count(root):
    item = "./jaws-site"
    before = digest_of(root, item)
    package = root / "jaws-site"
    for litter in (".git/HEAD", "__pycache__/x.cpython-311.pyc", "jaws_site/__pycache__/y.pyc",
                   "build/lib/jaws_site/__init__.py", "dist/jaws_site-1-py3-none-any.whl",
                   "jaws_site.egg-info/PKG-INFO", ".tox/log", ".venv/bin/python",
                   "jaws_site/stale.pyc"):
        (package / litter).parent.mkdir(parents=True, exist_ok=True)
        (package / litter).write_text("x")
    assert digest_of(root, item) == before
    (package / "jaws_site" / "build").mkdir()  # a subpackage named build is code
    (package / "jaws_site" / "build" / "__init__.py").write_text("")
    assert digest_of(root, item) != before


def test_a_wheel_folder_counts_its_files_not_its_subfolders(root):
    item = "--find-links ./dist"
    before = digest_of(root, item)
    (root / "dist" / "old").mkdir()
    (root / "dist" / "old" / "dep-0.9-py3-none-any.whl").write_bytes(b"old")
    assert digest_of(root, item) == before
    (root / "dist" / "dep-1.0-py3-none-any.whl").write_bytes(b"PK rebuilt")
    assert digest_of(root, item) != before


def test_a_snapshot_is_what_was_hashed(root, tmp_path):
    requirements = parse_all(["six", "./jaws-site", "--find-links ./dist",
                              "./dist/dep-1.0-py3-none-any.whl"], root)
    (root / "jaws-site" / "__pycache__").mkdir()
    (root / "jaws-site" / "__pycache__" / "x.pyc").write_text("x")
    copied = snapshot(requirements, root, tmp_path / "snap")
    assert copied.digests == digests(requirements, root)
    assert set(copied.copies) == {"./jaws-site", "--find-links ./dist",
                                  "./dist/dep-1.0-py3-none-any.whl"}
    package = copied.copies["./jaws-site"]
    assert (package / "jaws_site" / "__init__.py").read_text() == "VERSION = 1\n"
    assert not (package / "__pycache__").exists()
    wheel = copied.copies["./dist/dep-1.0-py3-none-any.whl"]
    assert wheel.name == "dep-1.0-py3-none-any.whl"  # pip reads a wheel's name
    assert wheel.read_bytes() == b"PK wheel"
    assert stat.S_IMODE((tmp_path / "snap").stat().st_mode) == 0o700


def test_symlinks_are_followed_once(root):
    package = root / "jaws-site"
    os.symlink("jaws_site", package / "alias")  # the same folder twice
    os.symlink(".", package / "jaws_site" / "loop")  # a loop
    digest_of(root, "./jaws-site")  # terminates
    os.symlink("nowhere", package / "dangling")
    with pytest.raises(BootstrapError, match="is a symlink to nothing"):
        digest_of(root, "./jaws-site")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_code_a_stranger_could_change_is_refused(root):
    source = root / "jaws-site" / "jaws_site" / "__init__.py"
    source.chmod(0o664)
    with pytest.raises(BootstrapError, match=r"__init__.py is writable by its group: pip would run"):
        digest_of(root, "./jaws-site")
    source.chmod(0o644)
    os.chown(source, 65534, 65534)
    with pytest.raises(BootstrapError, match="belongs to nobody"):
        digest_of(root, "./jaws-site")
    os.chown(source, 0, 0)
    (root / "jaws-site").chmod(0o777)
    with pytest.raises(BootstrapError, match="jaws-site is writable by everyone"):
        digest_of(root, "./jaws-site")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_folder_linked_from_the_package_counts_as_its_own(root, tmp_path):
    """A symlinked folder's files may pass one by one while the folder is another account's:
    it could swap a file of its own in between the check and the read (or the copy)."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "helpers.py").write_text("SAFE = 1\n")
    os.chmod(theirs / "helpers.py", 0o644)
    os.chown(theirs, 65534, 65534)
    os.chmod(theirs, 0o755)
    os.symlink(theirs, root / "jaws-site" / "jaws_site" / "vendored")
    with pytest.raises(BootstrapError, match=r"jaws_site/vendored \(-> .*theirs\) belongs to nobody"):
        digest_of(root, "./jaws-site")
    with pytest.raises(BootstrapError, match="belongs to nobody"):
        snapshot(parse_all(["./jaws-site"], root), root, tmp_path / "snap")
    os.chown(theirs, 0, 0)
    digest_of(root, "./jaws-site")
