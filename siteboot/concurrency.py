"""Doing the same thing to several instances at once (threads: the work is waiting on sockets
and processes, not computing)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

TYPE_CHECKING = False  # no typing at run time: every command pays for its import
if TYPE_CHECKING:
    from typing import Callable, TypeVar

    T = TypeVar("T")
    R = TypeVar("R")


def concurrently(func: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[func(item) for item in items]``, run in parallel; the first exception is re-raised here."""
    results: list[object] = [None] * len(items)

    def work(index: int, item: T) -> None:
        try:
            results[index] = func(item)
        except BaseException as exc:  # re-raised in the caller's thread
            results[index] = exc

    threads = [threading.Thread(target=work, args=(i, item), daemon=True)
               for i, item in enumerate(items)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]
