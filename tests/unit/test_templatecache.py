"""The compiled-template cache: used while nothing changed, refused when not the invoker's own,
rebuilt when corrupt or stale."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import jinja2
import pytest
from jinja2.sandbox import SandboxedEnvironment

from siteboot import templatecache
from siteboot.templatecache import PrivateBytecodeCache, template_cache

TEMPLATE = "{% for name in names %}[program:{{ name }}]\n{% endfor %}"


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "conf.j2").write_text(TEMPLATE)
    return folder


@pytest.fixture
def cache(tmp_path: Path) -> PrivateBytecodeCache:
    made = template_cache(tmp_path / "cache" / "templates")
    assert isinstance(made, PrivateBytecodeCache)
    return made


def environment(templates: Path, cache: Any, **options: Any) -> jinja2.Environment:
    settings = {"trim_blocks": True, "keep_trailing_newline": True, **options}
    return SandboxedEnvironment(loader=jinja2.FileSystemLoader(str(templates)),
                                bytecode_cache=cache, **settings)


def cached_code(templates: Path, cache: Any, **options: Any) -> object:
    """What a fresh environment finds in the cache for conf.j2 (None: it must compile)."""
    env = environment(templates, cache, **options)
    source = (templates / "conf.j2").read_text()
    return cache.get_bucket(env, "conf.j2", str(templates / "conf.j2"), source).code


def render(templates: Path, cache: Any) -> str:
    return str(environment(templates, cache).get_template("conf.j2").render(names=["a", "b"]))


def only_file(cache: PrivateBytecodeCache) -> Path:
    (found,) = cache.directory.iterdir()
    return found


def test_a_compiled_template_is_kept_privately_and_used_again(templates, cache):
    assert cached_code(templates, cache) is None
    assert render(templates, cache) == "[program:a]\n[program:b]\n"
    kept = only_file(cache)
    assert oct(kept.stat().st_mode & 0o777) == "0o600"
    assert oct(cache.directory.stat().st_mode & 0o777) == "0o700"
    assert oct(cache.directory.parent.stat().st_mode & 0o777) == "0o700"
    assert cached_code(templates, cache) is not None
    assert render(templates, cache) == "[program:a]\n[program:b]\n"


def test_each_input_change_misses(templates, cache, monkeypatch):
    render(templates, cache)
    assert cached_code(templates, cache) is not None
    assert cached_code(templates, cache, trim_blocks=False) is None  # another environment
    assert cached_code(templates, cache, lstrip_blocks=True) is None
    monkeypatch.setattr(templatecache, "__version__", "0.0.0-other")
    assert cached_code(templates, cache) is None  # another siteboot
    monkeypatch.undo()
    monkeypatch.setattr(jinja2, "__version__", "0.0.0-other")
    assert cached_code(templates, cache) is None  # another Jinja2
    monkeypatch.undo()
    (templates / "conf.j2").write_text(TEMPLATE + "# edited\n")
    assert cached_code(templates, cache) is None  # another source
    assert render(templates, cache).endswith("# edited\n")


@pytest.mark.parametrize("spoil", ["open mode", "symlink", "corrupt", "truncated", "not code"])
def test_a_planted_or_broken_file_is_never_loaded_and_gets_rebuilt(templates, cache, spoil):
    render(templates, cache)
    kept = only_file(cache)
    good = kept.read_bytes()
    if spoil == "open mode":
        kept.chmod(0o666)
    elif spoil == "symlink":
        elsewhere = cache.directory.parent / "elsewhere"
        elsewhere.write_bytes(good)
        elsewhere.chmod(0o600)
        kept.unlink()
        kept.symlink_to(elsewhere)
    elif spoil == "corrupt":
        kept.write_bytes(good[:12] + b"\x80\x04garbage that is no pickle" + good[40:])
    elif spoil == "truncated":
        kept.write_bytes(good[:len(good) // 2])
    else:
        import marshal
        import pickle

        from jinja2.bccache import bc_magic

        bucket = cache.get_bucket(environment(templates, cache), "conf.j2",
                                  str(templates / "conf.j2"), TEMPLATE)
        kept.write_bytes(bc_magic + pickle.dumps(bucket.checksum, 2) + marshal.dumps(42))
    assert cached_code(templates, cache) is None
    assert render(templates, cache) == "[program:a]\n[program:b]\n"  # compiled, no traceback
    rebuilt = only_file(cache)
    assert not rebuilt.is_symlink()
    assert oct(rebuilt.stat().st_mode & 0o777) == "0o600"
    assert cached_code(templates, cache) is not None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_a_file_of_another_user_is_not_loaded(templates, cache):
    render(templates, cache)
    os.chown(only_file(cache), 65534, -1)
    assert cached_code(templates, cache) is None


def test_a_cache_dir_that_is_not_ours_is_not_used(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    parent = tmp_path / "cache"
    parent.mkdir(mode=0o700)
    (parent / "templates").symlink_to(real)
    assert template_cache(parent / "templates") is None
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, -1)
        assert template_cache(theirs / "templates") is None


def test_only_the_newest_compiled_templates_stay(templates, cache, tmp_path):
    for n in range(5):
        folder = tmp_path / f"release-{n}"
        shutil.copytree(templates, folder)
        render(folder, cache)
    assert len(list(cache.directory.iterdir())) == 5
    newest = max(cache.directory.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    cache.prune(keep=2)
    left = list(cache.directory.iterdir())
    assert len(left) == 2
    assert newest in left


def test_the_default_dir_is_in_the_invokers_home(monkeypatch, tmp_path):
    monkeypatch.setattr(templatecache, "TEMPLATE_CACHE_DIR", "~/.cache/siteboot/templates")
    monkeypatch.setenv("HOME", str(tmp_path))
    made = template_cache()
    assert made is not None
    assert made.directory == tmp_path / ".cache" / "siteboot" / "templates"
