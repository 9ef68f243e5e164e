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


def concurrently(func: Callable[[T], R], items: Sequence[T],
                 give_up_on: type[BaseException] | tuple[type[BaseException], ...] = ()
                 ) -> list[R]:
    """``[func(item) for item in items]``, run in parallel; the first exception (in the order of
    ``items``) is re-raised here. One of ``give_up_on`` is re-raised as soon as it happens,
    without waiting for the others (left to finish in their daemon threads): its caller does
    something else, and a hung one must not hold it up."""
    results: list[object] = [None] * len(items)
    finished = threading.Semaphore(0)

    def work(index: int, item: T) -> None:
        try:
            results[index] = func(item)
        except BaseException as exc:  # re-raised in the caller's thread
            results[index] = exc
        finally:
            finished.release()

    threads = [threading.Thread(target=work, args=(i, item), daemon=True)
               for i, item in enumerate(items)]
    for thread in threads:
        thread.start()
    for _ in threads:
        finished.acquire()
        if give_up_on:
            for result in results:
                if isinstance(result, BaseException) and isinstance(result, give_up_on):
                    raise result
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]
