"""Following a process log (``tail -f``): from its files when readable, else over RPC.

supervisord rotates a log (``RotatingFileHandler``) by closing it, renaming ``<log>.1`` to
``<log>.2`` and so on (dropping ``<log>.<backups>``), renaming the log to ``<log>.1`` and opening
a new one; with no backups it truncates the log in place. Every byte is printed once, in
order, or a notice line says where bytes were lost:

- files: the follower keeps the file it reads open, so after a rotation it drains it, finds its
  inode among the backups and reads the newer backups before the new log. Only when the file
  was rotated out of the backups (more rotations between two reads than ``log_backups``), or
  truncated in place, can bytes be gone.
- RPC (a granted member cannot read the owner's files): ``readProcessStdoutLog`` gives the
  bytes from an offset, ``tailProcessStdoutLog`` the end of the log and its size (never bytes
  from the offset asked for: it always answers the *last* ``length`` bytes). Each read starts a
  little before the offset and must repeat the bytes last seen there; if not, the log was
  rotated and what it held past that point cannot be had over RPC (supervisord serves only the
  current file): a notice says so and reading goes on from the new file's start.

The followers take functions, not endpoints or paths alone, so tests can drive them directly.
"""

from __future__ import annotations

import codecs
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

from siteboot.errors import OwnershipError
from siteboot.rpc import Fault

Write = Callable[[str], None]

# Bytes asked for in one RPC read; more waiting means the next read follows at once.
RPC_CHUNK = 256 * 1024
# Bytes of what was read last that the next read must repeat, to tell the same file from a new one.
FINGERPRINT = 256
# Seconds between reads while the log grows; doubled per quiet read, up to the poll interval.
_BUSY_PAUSE = 0.005
# A character still unfinished at the log's end after this many polls is skipped.
_UNDECODABLE_POLLS = 20
# "... can't decode byte 0xff in position 3: invalid start byte" (UnicodeDecodeError's text)
_DECODE_POSITION = re.compile(r"in position (\d+)")


class _Output:
    """Decodes bytes as they come (a character split across two reads stays whole) and puts
    notices on lines of their own."""

    def __init__(self, write: Write, notice: Write | None) -> None:
        self.write = write
        self.notice_write = notice
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.at_line_start = True

    def text(self, text: str) -> None:
        if text:
            self.write(text)
            self.at_line_start = text.endswith("\n")

    def data(self, data: bytes) -> None:
        self.text(self.decoder.decode(data))

    def notice(self, message: str) -> None:
        if self.notice_write is not None:
            self.notice_write(message)
            return
        self.text(("" if self.at_line_start else "\n") + f"==> {message} <==\n")


def _char_start(data: bytes, start: int) -> int:
    """The first index at or after ``start`` that does not continue a UTF-8 character."""
    while start < len(data) and data[start] & 0xC0 == 0x80:
        start += 1
    return start


def last_bytes(text: str, nbytes: int) -> str:
    """The end of ``text`` that is at most ``nbytes`` long in UTF-8, from a character's start."""
    if nbytes <= 0:
        return ""
    data = text.encode("utf-8")[-nbytes:]
    return data[_char_start(data, 0):].decode("utf-8")


def lines_start(data: bytes, lines: int) -> int | None:
    """The index in ``data`` (the end of a log) where its last ``lines`` lines begin (a last
    line without its newline counts); None when ``data`` holds fewer: it may not reach back far
    enough."""
    if lines <= 0:
        return len(data)
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    for _ in range(lines):
        end = data.rfind(b"\n", 0, end)
        if end < 0:
            return None
    return end + 1


def _backup(path: Path, number: int) -> Path:
    return path.with_name(f"{path.name}.{number}")


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


class FileFollower:
    """Follows ``path`` across rotations, reading ``<path>.1``... to close the gaps."""

    def __init__(self, path: Path, backups: int, write: Write, notice: Write | None = None) -> None:
        self.path = path
        self.backups = backups
        self.out = _Output(write, notice)
        self.handle: BinaryIO | None = None
        self.inode = 0
        self.seen = b""  # the last bytes read, to notice a truncation that was written over

    def start(self, nbytes: int = 0, lines: int | None = None) -> None:
        """Open the log and print its last ``lines`` lines, or else its last ``nbytes``."""
        self._open(_open_log(self.path))
        assert self.handle is not None
        fd = self.handle.fileno()
        size = os.fstat(fd).st_size
        want = nbytes if lines is None else 4096
        while True:
            start = max(0, size - want)
            data = os.pread(fd, size - start, start)
            if lines is None:
                begin = _char_start(data, 0) if start else 0
                break
            found = lines_start(data, lines)
            if found is not None or start == 0:
                begin = found or 0
                break
            want *= 4
        self.handle.seek(start + len(data))
        self.seen = data[-FINGERPRINT:]
        self.out.data(data[begin:])

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def _open(self, handle: BinaryIO) -> None:
        self.close()
        self.handle = handle
        self.inode = os.fstat(handle.fileno()).st_ino
        self.seen = b""

    def _read_current(self) -> bool:
        assert self.handle is not None
        data = self.handle.read()
        if data:
            self.out.data(data)
            self.seen = (self.seen + data)[-FINGERPRINT:]
        return bool(data)

    def poll(self) -> bool:
        """Print what is new; True if anything was."""
        if self._truncated():  # before reading: what is past our place now is other bytes
            self.out.notice(f"{self.path} was truncated in place (log_backups = 0 keeps no "
                            "rotated file): lines may be lost here")
            assert self.handle is not None
            self.handle.seek(0)
            self.seen = b""
        got = self._read_current()
        current = _inode(self.path)
        if current is None or current == self.inode:  # None: between rename and reopen
            return got
        self._read_current()  # the rest of the file we had, now a backup or unlinked
        self._catch_up()
        return True

    def _truncated(self) -> bool:
        assert self.handle is not None
        position = self.handle.tell()
        if os.fstat(self.handle.fileno()).st_size < position:
            return True
        # truncated, then written past where we were: the bytes before it changed
        seen = self.seen
        return bool(seen) and os.pread(self.handle.fileno(), len(seen), position - len(seen)) != seen

    def _catch_up(self) -> None:
        """After a rotation: the backups newer than our file, oldest first, then the new log.

        Each file read becomes the one we hold, so a poll that comes back finds its place
        among the backups again and reads nothing twice."""
        for _attempt in range(10):
            opened = self._open_newer()
            if opened is not None:
                break
            time.sleep(0.01)  # rotated again while we looked: look again
        else:
            return  # keeps rotating under us: the next poll tries again
        handles, lost = opened
        if lost:
            self.out.notice(f"{self.path} rotated more than {self.backups} times (log_backups) "
                            "between two reads: lines may be lost here")
        for handle in handles:
            self._open(handle)
            self._read_current()

    def _open_newer(self) -> tuple[list[BinaryIO], bool] | None:
        """The files written after ours, oldest first, each opened and checked to be the inode
        seen at its name (the log itself last, unless it is between rename and reopen); None
        when a name moved meanwhile. True as well when ours was rotated out of the backups."""
        names = [_backup(self.path, n) for n in range(1, self.backups + 1)]
        inodes = [_inode(name) for name in names]
        if self.inode in inodes:
            newer = list(zip(names, inodes))[:inodes.index(self.inode)]
            lost = False
        else:  # ours was dropped: every backup is newer, and some may have been dropped too
            newer = [(n, i) for n, i in zip(names, inodes) if i is not None]
            lost = True
        wanted = [*reversed(newer), (self.path, _inode(self.path))]
        handles: list[BinaryIO] = []
        for name, inode in wanted:
            if inode is None and name == self.path:
                break  # between rename and reopen: the next poll opens it
            try:
                handle = _open_log(name)
            except FileNotFoundError:
                handle = None
            if handle is None or os.fstat(handle.fileno()).st_ino != inode:
                for opened in handles + ([handle] if handle else []):
                    opened.close()
                return None
            handles.append(handle)
        return handles, lost


class RpcFollower:
    """Follows a log over RPC with ``read(offset, length) -> str | Fault``.

    The reads are ``supervisor.readProcessStdoutLog`` calls (exact bytes from an offset), asked
    through a multicall so that a window supervisord cannot decode comes back as a fault.
    """

    def __init__(self, read: Callable[[int, int], Any], write: Write,
                 notice: Write | None = None, chunk: int = RPC_CHUNK) -> None:
        self.read = read
        self.out = _Output(write, notice)
        self.chunk = chunk
        self.offset = 0
        self.seen = b""  # the last bytes before offset, starting at a character
        self.undecodable = 0

    def start(self, offset: int, last: str) -> None:
        """Go on from ``offset``, where the already printed ``last`` text ends."""
        self.offset = offset
        self._remember(last.encode("utf-8"))

    def _remember(self, data: bytes) -> None:
        seen = (self.seen + data)[-FINGERPRINT:]
        self.seen = seen[_char_start(seen, 0):]

    def poll(self) -> bool:
        """Print what is new; True if anything was."""
        seen = self.seen
        start = self.offset - len(seen)
        answer = self.read(start, len(seen) + self.chunk)
        if isinstance(answer, Fault):
            length = self._decodable_length(answer)
            if length is None:
                return self._stuck(answer)
            answer = self.read(start, length)  # the part before the undecodable bytes
            if isinstance(answer, Fault):
                return False
        self.undecodable = 0
        data = str(answer).encode("utf-8")
        if data[:len(seen)] != seen:
            self.out.notice("the log was rotated before all of it was read; over RPC the "
                            "rotated file cannot be read: lines were lost here")
            self.offset, self.seen = 0, b""
            return True
        new = data[len(seen):]
        self.out.data(new)
        self.offset += len(new)
        self._remember(new)
        return bool(new)

    def _decodable_length(self, fault: Fault) -> int | None:
        """supervisord decodes what it sends as UTF-8 and names where that failed: the bytes
        before it can be sent. None when they are all bytes we have seen already."""
        if "UnicodeDecodeError" not in fault.faultString:
            raise fault
        where = _DECODE_POSITION.search(fault.faultString)
        position = int(where.group(1)) if where else 0
        return position if position > len(self.seen) else None

    def _stuck(self, fault: Fault) -> bool:
        """Undecodable bytes at our offset: a character still being written (wait for its
        end), or bytes that are not UTF-8 and can never be sent over RPC (skipped, one byte at
        a time, with a notice)."""
        self.undecodable += 1
        unfinished = "unexpected end of data" in fault.faultString
        if unfinished and self.undecodable < _UNDECODABLE_POLLS:
            return False
        self.out.notice(f"byte {self.offset} of the log is not UTF-8, which supervisord cannot "
                        "send: skipped")
        self.offset += 1
        self.seen = b""
        self.undecodable = 0
        return True


def follow(poll: Callable[[], bool], interval: float, stop: threading.Event | None) -> None:
    """Poll until ``stop`` is set: soon again while the log grows (a small log rotates many
    times a second), backing off to ``interval`` while it is quiet."""
    pause = _BUSY_PAUSE
    while not (stop is not None and stop.is_set()):
        pause = _BUSY_PAUSE if poll() else min(interval, pause * 2)
        time.sleep(pause)


def _open_log(path: Path) -> BinaryIO:
    """A log file, never through a symlink: a runtime dir made again after a /tmp wipe by another
    account could hold one pointing at a file of the reader's (its secrets.toml, into a CI log)."""
    import errno

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OwnershipError(f"{path} is a symlink: refusing to read a log through it",
                                 "remove it; supervisord writes its logs as files") from None
        raise
    return os.fdopen(fd, "rb")
