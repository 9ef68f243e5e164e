"""Following logs across rotations (issue 11, defect 2): files with their backups, and RPC."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from siteboot import logtail
from siteboot.logtail import FileFollower, RpcFollower, last_bytes
from siteboot.rpc import Fault


class RotatingLog:
    """Writes like supervisord's RotatingFileHandler: append; past ``maxbytes``, close, shift
    ``.1`` → ``.2`` ... (dropping ``.<backups>``), rename the log to ``.1``, open a new one.
    With no backups the log is truncated in place."""

    def __init__(self, path: Path, maxbytes: int = 64, backups: int = 3) -> None:
        self.path = path
        self.maxbytes = maxbytes
        self.backups = backups
        self.lines = 0
        path.write_bytes(b"")

    def write(self, data: bytes) -> None:
        with open(self.path, "ab") as handle:
            handle.write(data)
            size = handle.tell()
        if size >= self.maxbytes:
            self.rotate()

    def line(self, count: int = 1) -> None:
        for _ in range(count):
            self.write(f"line {self.lines}\n".encode())
            self.lines += 1

    def rotate(self) -> None:
        if self.backups == 0:
            self.path.write_bytes(b"")  # 'wb' on the same inode
            return
        for n in range(self.backups - 1, 0, -1):
            source = self.path.with_name(f"{self.path.name}.{n}")
            if source.exists():
                os.replace(source, self.path.with_name(f"{self.path.name}.{n + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.path.write_bytes(b"")


def numbers(text: str) -> list[int]:
    return [int(line.split()[1]) for line in text.splitlines() if line.startswith("line ")]


NOTICE = "==> "


@pytest.fixture
def log(tmp_path: Path) -> RotatingLog:
    return RotatingLog(tmp_path / "web.out.log")


def follower_of(log: RotatingLog, out: list[str], nbytes: int = 0) -> FileFollower:
    follower = FileFollower(log.path, log.backups, out.append)
    follower.start(nbytes)
    return follower


def drain(follower: Any) -> None:
    while follower.poll():
        pass


# --------------------------------------------------------------------------------------------
# files


def test_every_line_once_across_rotations_within_the_backups(log):
    out: list[str] = []
    log.line(3)
    follower = follower_of(log, out)
    try:
        for burst in (1, 5, 9, 13, 20, 26):  # up to three rotations between two polls
            log.line(burst)
            drain(follower)
        text = "".join(out)
        assert numbers(text) == list(range(3, log.lines))
        assert NOTICE not in text
    finally:
        follower.close()


def test_start_prints_the_end_then_follows(log):
    out: list[str] = []
    log.line(3)  # 7 bytes a line
    follower = follower_of(log, out, nbytes=10)
    log.line(2)
    drain(follower)
    follower.close()
    assert "".join(out) == " 1\nline 2\nline 3\nline 4\n"  # the last 10 bytes, then more


def test_rotated_out_of_the_backups_says_so_and_keeps_order(log):
    out: list[str] = []
    follower = follower_of(log, out)
    log.line(60)  # ~7 rotations of a 64-byte log with 3 backups: some files are gone
    drain(follower)
    log.line(5)
    drain(follower)
    follower.close()
    text = "".join(out)
    assert text.count(NOTICE) == 1
    assert "rotated more than 3 times (log_backups) between two reads: lines may be lost" in text
    seen = numbers(text)
    assert seen == sorted(set(seen))  # in order, nothing twice
    assert seen[-5:] == list(range(log.lines - 5, log.lines))
    before, after = text.split(NOTICE)
    assert numbers(before) == list(range(0, numbers(before)[-1] + 1))  # all of our own file
    gap = numbers(after)[0] - numbers(before)[-1]
    assert gap > 1


def test_between_rename_and_reopen(log):
    out: list[str] = []
    follower = follower_of(log, out)
    log.line(2)
    drain(follower)
    log.line(7)  # rotates at 64 bytes
    log.path.unlink()  # as if supervisord had renamed but not yet reopened
    drain(follower)
    log.path.write_bytes(b"")
    log.line(2)
    drain(follower)
    follower.close()
    assert numbers("".join(out)) == list(range(log.lines))


def test_truncated_in_place_without_backups(tmp_path):
    log = RotatingLog(tmp_path / "web.out.log", maxbytes=64, backups=0)
    out: list[str] = []
    follower = follower_of(log, out)
    log.line(4)
    drain(follower)
    log.line(6)  # passes 64 bytes: truncated
    log.line(1)
    drain(follower)
    follower.close()
    text = "".join(out)
    assert "truncated in place (log_backups = 0 keeps no rotated file): lines may be lost" in text
    assert numbers(text.split(NOTICE)[0]) == [0, 1, 2, 3]
    assert numbers(text.split(NOTICE)[1])[-1] == log.lines - 1


def test_truncated_and_written_past_where_we_were(tmp_path):
    log = RotatingLog(tmp_path / "web.out.log", maxbytes=10**6, backups=0)
    out: list[str] = []
    follower = follower_of(log, out)
    log.line(3)
    drain(follower)
    log.path.write_bytes(b"")  # a copytruncate, then more than we had read
    log.lines = 100
    log.line(5)
    drain(follower)
    follower.close()
    text = "".join(out)
    assert text.count(NOTICE) == 1
    assert numbers(text) == [0, 1, 2, 100, 101, 102, 103, 104]


def test_a_character_split_between_reads_stays_whole(log):
    out: list[str] = []
    follower = follower_of(log, out)
    euro = "€".encode()
    log.write(b"price " + euro[:1])
    drain(follower)
    log.write(euro[1:] + b"\n")
    drain(follower)
    follower.close()
    assert "".join(out) == "price €\n"


def test_a_notice_gets_a_line_of_its_own():
    out: list[str] = []
    output = logtail._Output(out.append, None)
    output.data(b"partial")
    output.notice("lost")
    output.data(b"line\n")
    output.notice("lost again")
    assert "".join(out) == "partial\n==> lost <==\nline\n==> lost again <==\n"
    notices: list[str] = []
    output = logtail._Output(out.append, notices.append)
    output.notice("elsewhere")
    assert notices == ["elsewhere"]


# --------------------------------------------------------------------------------------------
# RPC


class FakeSupervisorLog:
    """readProcessStdoutLog over a RotatingLog's current file, as supervisord answers it:
    exact bytes from an offset, decoded as UTF-8 (a fault when that fails)."""

    def __init__(self, log: RotatingLog) -> None:
        self.log = log
        self.reads: list[tuple[int, int]] = []

    def read(self, offset: int, length: int) -> Any:
        self.reads.append((offset, length))
        data = self.log.path.read_bytes()[offset:offset + length]
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Fault(30, f"FAILED: <class 'UnicodeDecodeError'>:{exc}")


def rpc_follower(log: RotatingLog, out: list[str], chunk: int = 1 << 20) -> tuple[RpcFollower,
                                                                                   FakeSupervisorLog]:
    server = FakeSupervisorLog(log)
    follower = RpcFollower(server.read, out.append, chunk=chunk)
    size = log.path.stat().st_size
    follower.start(size, log.path.read_bytes().decode())
    return follower, server


def test_rpc_reads_from_the_offset_only(tmp_path):
    log = RotatingLog(tmp_path / "w.log", maxbytes=10**6)
    out: list[str] = []
    log.line(18)
    follower, server = rpc_follower(log, out)
    for _ in range(5):
        log.line(3)
        drain(follower)
    assert numbers("".join(out)) == list(range(18, 33))  # nothing twice (was: 91 lines of 18)
    offsets = [offset for offset, _ in server.reads]
    assert offsets == sorted(offsets)


def test_rpc_reads_big_backlogs_in_chunks(tmp_path):
    log = RotatingLog(tmp_path / "w.log", maxbytes=10**6)
    out: list[str] = []
    follower, _server = rpc_follower(log, out, chunk=50)
    log.line(100)
    drain(follower)
    assert numbers("".join(out)) == list(range(100))


def test_rpc_rotation_is_announced(log):
    out: list[str] = []
    log.line(2)
    follower, _server = rpc_follower(log, out)
    log.line(2)
    drain(follower)
    log.line(12)  # rotates: the rest of the old file is out of reach over RPC
    drain(follower)
    log.line(1)
    drain(follower)
    text = "".join(out)
    assert text.count(NOTICE) == 1
    assert "over RPC the rotated file cannot be read: lines were lost here" in text
    seen = numbers(text)
    assert seen == sorted(set(seen))
    assert seen[:2] == [2, 3]
    assert seen[-1] == log.lines - 1


def test_rpc_window_ending_inside_a_character_waits_for_the_rest(tmp_path):
    log = RotatingLog(tmp_path / "w.log", maxbytes=10**6)
    out: list[str] = []
    follower, _server = rpc_follower(log, out)
    euro = "€".encode()
    log.write(b"a" + euro[:2])
    assert follower.poll() is True  # "a": the bytes before the unfinished character
    assert follower.poll() is False  # supervisord cannot decode the rest yet
    log.write(euro[2:] + b"\n")
    drain(follower)
    assert "".join(out) == "a€\n"


def test_rpc_bytes_that_are_not_utf8_are_skipped_with_a_notice(tmp_path):
    log = RotatingLog(tmp_path / "w.log", maxbytes=10**6)
    out: list[str] = []
    follower, _server = rpc_follower(log, out)
    log.write(b"ok\n\xff")
    drain(follower)
    log.write(b"after\n")
    drain(follower)
    assert "".join(out) == ("ok\n==> byte 3 of the log is not UTF-8, which supervisord cannot "
                            "send: skipped <==\nafter\n")


def test_rpc_a_character_never_finished_is_skipped_in_the_end(tmp_path):
    log = RotatingLog(tmp_path / "w.log", maxbytes=10**6)
    out: list[str] = []
    follower, _server = rpc_follower(log, out)
    log.write(b"a\n" + "€".encode()[:2])
    polls = [follower.poll() for _ in range(25)]
    assert polls[0] is True  # "a\n"
    assert polls[1:19] == [False] * 18
    assert "byte 2 of the log is not UTF-8" in "".join(out)


def test_rpc_other_faults_reach_the_caller(tmp_path):
    follower = RpcFollower(lambda offset, length: Fault(10, "BAD_NAME: x"), print)
    with pytest.raises(Fault, match="BAD_NAME"):
        follower.poll()


def test_last_bytes():
    assert last_bytes("abcdef", 3) == "def"
    assert last_bytes("abc", 0) == ""
    assert last_bytes("abc", 10) == "abc"
    assert last_bytes("x€y", 3) == "y"  # never half a character


def test_follow_backs_off_while_quiet_and_stops(monkeypatch):
    pauses: list[float] = []
    stop = threading.Event()
    results = iter([True, False, False, False, False, False, True, False])

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 8:
            stop.set()

    monkeypatch.setattr("siteboot.logtail.time.sleep", sleep)
    logtail.follow(lambda: next(results), 0.04, stop)
    assert pauses == [0.005, 0.01, 0.02, 0.04, 0.04, 0.04, 0.005, 0.01]


def test_a_log_that_is_a_symlink_is_not_read(tmp_path):
    """A runtime dir made again by another account (after a /tmp wipe) could hold a log that
    leads to a file of the reader's: its secrets would be printed (into a CI job's log)."""
    from siteboot.errors import OwnershipError

    secret = tmp_path / "secrets.toml"
    secret.write_text('DB = "hunter2"\n')
    log = tmp_path / "web.out.log"
    log.symlink_to(secret)
    shown: list[str] = []
    with pytest.raises(OwnershipError, match="is a symlink"):
        FileFollower(log, 3, shown.append).start(lines=10)
    assert shown == []
