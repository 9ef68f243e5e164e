"""The house rules, read from the source: no import cycles, one process seam, floors kept.

Imports inside functions count: a lazy import is still a dependency, and a cycle through one
is still a module that cannot be understood (or tested) without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from siteboot import ordering
from tests.helpers import REPO

PACKAGE = REPO / "siteboot"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def parsed(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))


def imported_names(name: str) -> set[str]:
    """Every module ``name`` imports, at the top or inside functions, TYPE_CHECKING excluded."""
    found: set[str] = set()
    tree = parsed(name)
    type_only = {id(node) for stmt in ast.walk(tree) if isinstance(stmt, ast.If)
                 and ast.unparse(stmt.test) == "TYPE_CHECKING" for node in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from siteboot import ops`: the submodule is what is used
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if f"{node.module}.{alias.name}" in MODULES)
    return found


def siteboot_edges(name: str) -> set[str]:
    return {m for m in imported_names(name) if m in MODULES and m != name
            and not name.startswith(m + ".")}  # a package's own parent is implicit


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """The one cycle finder (``siteboot.ordering``), over names in sorted order: the same
    cycle is named on every run."""
    return ordering.find_cycle({name: sorted(graph[name]) for name in sorted(graph)})


def test_no_import_cycles():
    cycle = find_cycle({name: siteboot_edges(name) for name in MODULES})
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


SEAM = "siteboot.proc"
PROCESS_CALLS = {"os.execv", "os.execve", "os.execvp", "os.execvpe", "os.execl", "os.execlp",
                 "os.execle", "os.execlpe", "os.spawnv", "os.spawnve", "os.system", "os.popen",
                 "os.kill", "os.killpg", "os.fork"}


@pytest.mark.parametrize("name", sorted(set(MODULES) - {SEAM}))
def test_only_proc_starts_execs_or_signals_processes(name):
    assert "subprocess" not in imported_names(name), f"{name} imports subprocess"
    calls = {ast.unparse(node.func) for node in ast.walk(parsed(name))
             if isinstance(node, ast.Call)}
    assert not calls & PROCESS_CALLS, f"{name} calls {sorted(calls & PROCESS_CALLS)}"
    assert not any(c.endswith((".send_signal", ".terminate", ".kill")) for c in calls), name


CORE = sorted(m for m in MODULES if not m.startswith("siteboot.cli"))


@pytest.mark.parametrize("name", CORE)
def test_the_core_never_imports_click_or_the_cli(name):
    imports = imported_names(name)
    assert not any(m == "click" or m.startswith("click.") for m in imports), name
    if name != "siteboot.__main__":  # stage 0 hands over to the CLI once it is done
        assert not any(m.startswith("siteboot.cli") for m in imports), name


@pytest.mark.parametrize("name", sorted(set(MODULES) - {"siteboot.ops"}))
def test_only_the_cli_calls_operations(name):
    if not name.startswith("siteboot.cli"):
        assert "siteboot.ops" not in siteboot_edges(name), name


def test_commands_only_parse_and_print():
    """cli/commands.py calls operations: it builds no JSON and orchestrates nothing itself."""
    edges = siteboot_edges("siteboot.cli.commands")
    allowed = {"siteboot", "siteboot.ops", "siteboot.errors", "siteboot.resources",
               "siteboot.cli.context", "siteboot.cli.fast", "siteboot.cli.output",
               "siteboot.cli.progress", "siteboot.usage"}
    assert edges <= allowed, sorted(edges - allowed)
    for node in ast.walk(parsed("siteboot.cli.commands")):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "print_json":
            assert not isinstance(node.args[0], (ast.Dict, ast.List, ast.ListComp)), \
                f"hand-built JSON at line {node.lineno}: use the result's as_json()"


def test_render_is_pure():
    edges = siteboot_edges("siteboot.render")
    assert not edges & {"siteboot.instances", "siteboot.fsutil", "siteboot.proc"}, edges
