"""Value classes without dataclasses: making a dataclass (or a NamedTuple) runs generated code
at import, about a millisecond each, and ``status`` and stage 0 import only what they use.

A subclass lists its fields in ``__slots__`` and writes its ``__init__``; ``Plain`` gives it the
equality and repr of a dataclass (tests compare values).
"""

from __future__ import annotations

TYPE_CHECKING = False  # no typing at run time: every command pays for its import
if TYPE_CHECKING:
    from typing import Any



class Plain:
    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._values() == self._values()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]  # mutable, as a dataclass is

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"
