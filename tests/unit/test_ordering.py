"""The dependency graph: cycles named, depths, and waves by (depth, priority)."""

from __future__ import annotations

from siteboot.ordering import depths, find_cycle, waves


def test_a_cycle_is_named_in_dependency_order():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_no_cycle_and_unknown_names_are_ignored():
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": [], "d": ["nope"]}) is None


def test_depths_count_the_longest_chain_below():
    graph = {"rest": ["auth", "cromwell"], "auth": ["db"], "db": [], "cromwell": [], "x": []}
    assert depths(graph) == {"rest": 2, "auth": 1, "db": 0, "cromwell": 0, "x": 0}


def test_waves_go_by_depth_then_priority():
    rank = {"db": (0, 999), "jtm": (0, 1), "auth": (1, 999), "rest": (2, 5), "web": (2, 5)}
    assert waves(["web", "auth", "db", "jtm", "rest"], rank) == \
        [["jtm"], ["db"], ["auth"], ["web", "rest"]]
    assert waves([], rank) == []
