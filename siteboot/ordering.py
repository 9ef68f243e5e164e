"""Start and stop order: ``depends_on`` as a graph, and programs grouped into waves.

Pure functions over names (standard library only): ``site`` uses ``find_cycle`` to refuse a
cycle, ``readiness`` and ``healer`` use ``depths`` and ``waves`` to act in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def find_cycle(edges: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A dependency cycle as ``[a, b, ..., a]`` (names in the order they depend on each other),
    or None. Edges to names that are not keys are ignored (``check`` reports those apart)."""
    state: dict[str, int] = {}  # 1: on the path being followed, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in edges[node]:
            if nxt not in edges:
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for name in edges:
        if name not in state:
            cycle = visit(name)
            if cycle:
                return cycle
    return None


def depths(edges: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """How many steps of dependencies lie below each name: 0 for none, else one more than the
    deepest of its dependencies. The graph must have no cycle (``site`` refuses one)."""
    found: dict[str, int] = {}

    def depth(node: str, seen: frozenset[str]) -> int:
        if node in found:
            return found[node]
        below = [depth(dep, seen | {node}) for dep in edges.get(node, ())
                 if dep in edges and dep not in seen]
        found[node] = 1 + max(below) if below else 0
        return found[node]

    for name in edges:
        depth(name, frozenset())
    return found


def waves(names: Sequence[str], rank: Mapping[str, tuple[int, int]]) -> list[list[str]]:
    """``names`` grouped by ``rank`` (dependency depth, priority), lowest first: everything in
    one wave may act at once; a wave starts once the one before it is done (stop: reversed)."""
    groups: dict[tuple[int, int], list[str]] = {}
    for name in names:
        groups.setdefault(rank[name], []).append(name)
    return [groups[key] for key in sorted(groups)]

