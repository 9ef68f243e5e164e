"""What siteboot requires (``setup.cfg``'s ``install_requires``), and the small subset of version
specifiers and markers that stage 0 evaluates itself, before ``packaging`` can be installed:
which distributions this Python needs, whether they are importable, which pip wheel fits.
"""

from __future__ import annotations

import configparser
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from siteboot.bootstrap.locate import read_setup_cfg
from siteboot.errors import BootstrapError


def read_requirements(setup_cfg: Path) -> list[str]:
    """``[options] install_requires``, one requirement string per line, markers kept as written."""
    try:
        raw = read_setup_cfg(setup_cfg).get("options", "install_requires", fallback="")
    except (OSError, configparser.Error) as exc:
        raise BootstrapError(f"cannot read install_requires from {setup_cfg}: {exc}") from None
    lines = (line.strip() for line in raw.splitlines())
    return [line for line in lines if line and not line.startswith(("#", ";"))]


def version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.strip().split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def _pad(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)), b + (0,) * (width - len(b))


def python_satisfies(specifier: str | None, python: str) -> bool:
    """Whether ``python`` (``3.9.18``) meets a Requires-Python specifier such as ``>=3.9,!=3.0.*``.

    Clauses that cannot be read are ignored (pip will have the last word anyway).
    """
    if not specifier:
        return True
    have = version_tuple(python)
    for clause in specifier.split(","):
        match = re.match(r"^\s*(~=|===|==|!=|<=|>=|<|>)\s*([0-9][0-9.]*)(\.\*)?\s*$", clause)
        if not match:
            continue
        op, text, wildcard = match.group(1), match.group(2).rstrip("."), match.group(3)
        want = version_tuple(text)
        if wildcard and op in ("==", "!="):
            equal = have[:len(want)] == want
            if equal != (op == "=="):
                return False
            continue
        left, right = _pad(have, want)
        ok = {"==": left == right, "===": left == right, "!=": left != right,
              "<=": left <= right, ">=": left >= right, "<": left < right, ">": left > right,
              "~=": left >= right and have[:max(len(want) - 1, 1)] == want[:max(len(want) - 1, 1)],
              }[op]
        if not ok:
            return False
    return True


def marker_applies(marker: str, python: str) -> bool | None:
    """Evaluate a ``python_version``/``python_full_version`` marker; None for anything else."""
    match = re.match(r"""^\s*python_(full_)?version\s*(~=|==|!=|<=|>=|<|>)\s*["']([^"']+)["']\s*$""",
                     marker)
    if not match:
        return None
    have = python if match.group(1) else ".".join(python.split(".")[:2])
    return python_satisfies(f"{match.group(2)}{match.group(3)}", have)


def required_distributions(requires: Sequence[str], python: str | None = None) -> list[str]:
    """Distribution names this Python needs (markers other than python_version: assumed yes)."""
    python = python or ".".join(str(n) for n in sys.version_info[:3])
    names = []
    for requirement in requires:
        spec, _, marker = requirement.partition(";")
        if marker.strip() and marker_applies(marker, python) is False:
            continue
        match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
        if match:
            names.append(match.group(1))
    return names


def distributions_installed(names: Sequence[str]) -> bool:
    """Whether every named distribution is importable by this interpreter (metadata lookup only)."""
    from importlib import metadata

    for name in names:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            return False
    return True
