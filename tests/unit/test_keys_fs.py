"""Keys and the directories siteboot owns: modes, owners, and refusing what is not ours."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from siteboot import ops
from siteboot.errors import EXIT_USAGE, KeyAccessError, OwnershipError, SitebootError
from siteboot.fsutil import atomic_write, ensure_private_dir, owner_name
from siteboot.instances import prepare_runtime_dir
from siteboot.keys import PLACEHOLDER_HASH, ensure_key, password_hash, read_key
from siteboot.plan import Plan, make_plan
from siteboot.site import load_site
from tests.helpers import own_site_text, supervisor_parse

NOBODY = 65534


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def own_plan(write_site, short_dir: Path, runtime: str | None = None) -> Plan:
    path = write_site(own_site_text(short_dir, runtime or ""))
    return make_plan(load_site(path), "dev")


def test_password_hash_is_supervisord_sha():
    assert password_hash("s3cret") == "{SHA}" + hashlib.sha1(b"s3cret").hexdigest()
    assert "s3cret" not in password_hash("s3cret")
    assert password_hash("a") != password_hash("b")
    assert len(PLACEHOLDER_HASH) == len(password_hash("x"))


def test_key_is_created_once_0600_in_a_0700_state_dir(write_site, short_dir):
    inst = own_plan(write_site, short_dir).instances["main"]
    key = ensure_key(inst)
    assert len(key) >= 32
    assert mode(inst.state_dir) == 0o700
    assert mode(inst.key_path.parent) == 0o700
    assert mode(inst.key_path) == 0o600
    assert inst.key_path.stat().st_uid == os.geteuid()
    assert ensure_key(inst) == key  # stable
    os.chmod(inst.key_path, 0o644)
    assert ensure_key(inst) == key
    assert mode(inst.key_path) == 0o600  # tightened
    assert not [p for p in inst.key_path.parent.iterdir() if p.name.endswith(".tmp")]


def test_render_in_place(write_site, short_dir):
    plan = own_plan(write_site, short_dir)
    inst = plan.instances["main"]
    result = ops.render(plan, None)
    (item,) = result.rendered
    assert result.skipped == []
    assert not item.preview
    assert item.path == inst.conf_path
    assert inst.runtime_parent == short_dir / "rt-dev"
    assert mode(inst.runtime_parent) == 0o700  # only this account's instances live there
    assert mode(inst.runtime_dir) == 0o700
    assert inst.runtime_dir.stat().st_uid == os.geteuid()
    assert mode(inst.childlogdir) == 0o700
    assert mode(inst.conf_path) == 0o600
    key = inst.key_path.read_text().strip()
    text = inst.conf_path.read_text()
    assert key not in text
    assert PLACEHOLDER_HASH not in text
    assert "PREVIEW" not in text
    opts = supervisor_parse(inst.conf_path)
    for server in opts.configroot.supervisord.server_configs:
        assert server["password"] == password_hash(key)
    # a second render keeps the key
    ops.render(plan, None)
    assert inst.key_path.read_text().strip() == key


def test_runtime_dir_of_another_user_is_refused(write_site, short_dir):
    plan = own_plan(write_site, short_dir)
    inst = plan.instances["main"]
    assert inst.runtime_parent is not None
    inst.runtime_parent.mkdir(mode=0o700)
    inst.runtime_dir.mkdir()
    os.chown(inst.runtime_dir, NOBODY, NOBODY)
    with pytest.raises(OwnershipError) as info:
        ops.render(plan, None)
    message = str(info.value)
    assert str(inst.runtime_dir) in message
    assert f"belongs to {owner_name(NOBODY)}" in message
    assert "refusing" in message
    assert not inst.conf_path.exists()
    assert inst.runtime_dir.stat().st_uid == NOBODY  # left alone


def test_too_long_socket_path_creates_nothing(write_site, short_dir):
    plan = own_plan(write_site, short_dir, runtime=f"{short_dir}/{'x' * 110}-{{env}}")
    with pytest.raises(SitebootError) as info:
        prepare_runtime_dir(plan.instances["main"])
    assert info.value.exit_code == EXIT_USAGE
    assert "107" in str(info.value)
    with pytest.raises(SitebootError):
        ops.render(plan, None)
    assert list(short_dir.iterdir()) == []


def test_private_dir_is_tightened_and_checked(short_dir):
    path = short_dir / "a" / "b"
    ensure_private_dir(path)
    assert mode(path) == 0o700
    os.chmod(path, 0o755)
    ensure_private_dir(path)
    assert mode(path) == 0o700
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(OwnershipError):
        ensure_private_dir(path)


def test_atomic_write_mode_and_no_leftovers(short_dir):
    path = short_dir / "f"
    old = os.umask(0)
    try:
        atomic_write(path, "one")
        assert mode(path) == 0o600
        atomic_write(path, b"two", mode=0o640)
    finally:
        os.umask(old)
    assert path.read_text() == "two"
    assert mode(path) == 0o640
    assert [p.name for p in short_dir.iterdir()] == ["f"]


def test_owner_name_of_an_unknown_uid():
    assert owner_name(os.geteuid()) != ""
    assert owner_name(2**31 - 7) == str(2**31 - 7)


def test_atomic_write_names_the_file_when_the_disk_is_full(tmp_path, monkeypatch):
    import errno

    from siteboot import fsutil

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("siteboot.fsutil.os.fsync", full)
    target = tmp_path / "supervisord.conf"
    target.write_text("old\n")
    with pytest.raises(OSError, match="No space left") as info:
        fsutil.atomic_write(target, "new\n")
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(target)
    assert target.read_text() == "old\n"  # the previous file stands
    assert [p.name for p in tmp_path.iterdir()] == ["supervisord.conf"]  # no temp file left


# --------------------------------------------------------------------------------------------
# a key path that holds no key is a clear error of its own (issue 11, defect 5)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _bound_socket(path: Path) -> None:
    import socket

    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()


@pytest.mark.parametrize(("make", "kind"), [
    (lambda path: path.mkdir(), "a directory"),
    (os.mkfifo, "a FIFO"),
    (_bound_socket, "a socket"),
])
def test_a_key_path_that_is_no_file(write_site, short_dir, make, kind):
    plan = own_plan(write_site, short_dir)
    inst = plan.instances["main"]
    inst.key_path.parent.mkdir(parents=True)
    make(inst.key_path)
    fds = _open_fds()
    with pytest.raises(KeyAccessError) as info:
        read_key(plan, inst)
    assert str(inst.key_path) in str(info.value)
    assert kind in str(info.value) or "No such device" in str(info.value)  # a socket: ENXIO
    assert _open_fds() == fds  # nothing left open


def test_a_device_is_not_read(write_site, short_dir):
    from siteboot.keys import _read

    with pytest.raises(KeyAccessError, match="is a character device, not a regular file"):
        _read(Path("/dev/zero"))  # would never end


def test_an_unreadable_own_key_names_the_file(write_site, short_dir, monkeypatch):
    plan = own_plan(write_site, short_dir)
    inst = plan.instances["main"]
    ensure_key(inst)
    real_open = os.open

    def refuse(path, *args):
        if Path(path) == inst.key_path:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args)

    monkeypatch.setattr(os, "open", refuse)  # root reads any file: refuse as a user's kernel would
    with pytest.raises(KeyAccessError) as info:
        read_key(plan, inst)
    assert f"cannot read key file {inst.key_path}: permission denied" in str(info.value)
    assert "0600" in str(info.value)


def test_an_oversized_key_file_is_not_read_whole(write_site, short_dir):
    plan = own_plan(write_site, short_dir)
    inst = plan.instances["main"]
    key = ensure_key(inst)
    assert read_key(plan, inst) == key
    inst.key_path.write_text("x" * 10_000)
    assert len(read_key(plan, inst)) == 4096


def test_write_if_changed_leaves_the_same_content_alone(tmp_path):
    from siteboot.fsutil import write_if_changed

    path = tmp_path / "record.json"
    write_if_changed(path, "one\n")
    first = path.stat()
    assert oct(first.st_mode & 0o777) == "0o600"
    write_if_changed(path, "one\n")
    assert path.stat().st_ino == first.st_ino  # not written again
    write_if_changed(path, "two\n")
    assert path.read_text() == "two\n"
    path.chmod(0o644)
    inode = path.stat().st_ino
    write_if_changed(path, "two\n")  # the same text, but a mode to correct
    assert path.stat().st_ino != inode
    assert oct(path.stat().st_mode & 0o777) == "0o600"
