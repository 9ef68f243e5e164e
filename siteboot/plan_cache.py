"""The resolved ``Plan`` of a site file and env, kept in the invoker's private state.

``siteboot status`` runs every minute on every node: parsing and validating the site file and
resolving the env is most of its own work on a large site. ``load_or_build`` returns exactly
what ``make_plan(load_site(path), env)`` returns, from a cache file when nothing it was built
from changed:

- the site file, and every other file the plan reads (the port records of the accounts with
  ``"auto"`` ports, the siteboot modules that build it), each compared by device, inode, size,
  mtime and ctime (``ctime`` cannot be set back);
- what it takes from elsewhere: the invoker, ``$HOME`` as ``own_home`` takes it, the home of
  each other account of the site (``~``), this host (``$SITEBOOT_HOST``), the interpreter
  (``{python}``), a runner's executable as ``$PATH`` finds it.

Anything else (a change, a missing or unreadable file, a cache that is not a regular 0600 file
of the invoker in a 0700 dir of the invoker, a symlink, a shape that is not a plan) builds the
plan from the site file again and writes the cache anew; a failure to write it is no error.
A file changed within the last seconds is not cached: its timestamps may not show the next
change (and a record written while the plan was built must not be taken for the one read).

The cache is JSON of plain values; the model's classes, paths, tuples and sealed texts are
tagged objects, and only the classes of the plan and the site model are made from it.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import Sequence
from pathlib import Path, PurePath

TYPE_CHECKING = False  # no typing at run time: every command pays for its import
if TYPE_CHECKING:
    from typing import Any

    from siteboot.plan import Plan

CACHE_DIR = "~/.local/state/siteboot/plans"
FORMAT = 2
_TAG = "\u0000"  # no key of a site file or of the model is this
SETTLE_NS = 3_000_000_000  # younger inputs are not cached (coarse or racing timestamps)
_MODEL_MODULES = ("siteboot.site", "siteboot.plan", "siteboot.login", "siteboot.rpc",
                  "siteboot.history", "siteboot.control", "siteboot.records", __name__)


def load_or_build(site_path: Path, env: str) -> Plan:
    """The plan of ``site_path`` in ``env``: cached, or built (and cached) when anything it
    depends on changed. Errors are those of ``load_site`` and ``make_plan``."""
    cache = cache_path(site_path, env)
    plan = load(cache, site_path, env)
    if plan is not None:
        return plan
    from siteboot.plan import make_plan
    from siteboot.site import load_site

    started = time.time_ns()
    inputs = {str(site_path): signature(site_path)}
    plan = make_plan(load_site(site_path), env)
    store(cache, plan, inputs, started)
    return plan


def cache_path(site_path: Path, env: str) -> Path:
    import zlib  # a name, not a secret: cheaper than hashlib on the status path

    from siteboot.accounts import current_user, expand_home

    digest = zlib.crc32(os.fsencode(f"{site_path}\n{env}"))
    return expand_home(CACHE_DIR, current_user()) / f"{site_path.stem}-{env}-{digest:08x}.json"


def signature(path: Path | str) -> list[int] | str | None:
    """What tells a change of ``path``: None when it is missing."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:  # unreadable now: stays so, or the signature changes
        return f"error {exc.errno}"
    return [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]


def context(site_path: Path, env: str, users: list[str],
            runner_executable: str | None) -> dict[str, Any]:
    """What the plan takes from this process and the account database rather than from files;
    ``users``: the site's accounts, ``runner_executable`` as the site declares it."""
    from siteboot import __version__
    from siteboot.accounts import current_user, own_home, this_host

    invoker = current_user()
    found: dict[str, Any] = {
        "format": FORMAT, "version": __version__, "site": str(site_path), "env": env,
        "invoker": invoker, "euid": os.geteuid(), "home": str(own_home()),
        "host": this_host(), "python": sys.executable,
        "homes": {user: os.path.expanduser(f"~{user}") for user in users if user != invoker},
    }
    if runner_executable is not None and "/" not in runner_executable:
        import shutil

        found["runner"] = shutil.which(runner_executable)
    return found


def _context_of(plan: Plan) -> dict[str, Any]:
    users = sorted({inst.user for inst in plan.instances.values()})
    runner = plan.site.runner.executable if plan.site.runner is not None else None
    return {"users": users, "runner_executable": runner,
            "context": context(plan.site.path, plan.env, users, runner)}


def _file_inputs(plan: Plan) -> list[str]:
    """The files besides the site file whose content the plan holds."""
    paths = [str(Path(sys.modules[name].__file__ or "")) for name in _MODEL_MODULES
             if name in sys.modules]
    if _names_other_homes(plan.site.path):  # ``~name/...``: the account database says where
        paths.append("/etc/passwd")
    with_auto = {instance for instance, _key, auto_env in plan.site.auto_ports()
                 if auto_env == plan.env}
    paths += [str(plan.port_record(plan.instances[name])) for name in sorted(with_auto)]
    return paths


def _names_other_homes(site_path: Path) -> bool:
    import re

    try:
        return re.search(rb"~[A-Za-z_]", site_path.read_bytes()) is not None
    except OSError:
        return True


def send_status_requests(site_path: Path, env: str, instances: Sequence[str] = ()) -> None:
    """Send the request ``status`` makes to each of the invoker's supervisords (of
    ``instances``; none: all) as the cache recorded them, before the plan is even decoded:
    they answer while the rest of ``status`` loads (``wire.send_early``)."""
    cache = cache_path(site_path, env)
    header = _trusted(cache, site_path, env)
    if header is None:
        return
    from siteboot.errors import SitebootError
    from siteboot.keys import read_key_file
    from siteboot.wire import ANSWER_TIMEOUT, send_early

    for instance, socket_path, key_path, body in header[0]["early"]:
        if instances and instance not in instances:
            continue
        try:
            key = read_key_file(Path(key_path))
        except (OSError, SitebootError):  # the status says why
            continue
        send_early(socket_path, key, body.encode(), ANSWER_TIMEOUT)


def trusted_digest(site_path: Path, env: str) -> dict[str, Any] | None:
    """What ``quickstatus`` makes the report from (``control.status_digest``), while the cache
    of ``site_path`` and ``env`` is trusted; None otherwise."""
    header = _trusted(cache_path(site_path, env), site_path, env)
    digest = header[0].get("status") if header is not None else None
    return digest if isinstance(digest, dict) else None


def _early_requests(plan: Plan) -> list[list[str]]:
    """(instance, socket, key file, request) of each supervisord of the invoker here."""
    from siteboot.rpc import status_request

    return [[inst.name, str(inst.socket_path), str(inst.key_path),
             status_request(inst).decode()]
            for inst in plan.instances.values() if plan.owns(inst) and inst.here]


# What a cache file said, once read and checked: (header, the encoded plan)
_TRUSTED: dict[Path, tuple[dict[str, Any], bytes] | None] = {}


def _trusted(cache: Path, site_path: Path, env: str) -> tuple[dict[str, Any], bytes] | None:
    """The header and the encoded plan of ``cache`` when it is the invoker's own and nothing
    it was built from changed; read once per process."""
    if cache not in _TRUSTED:
        _TRUSTED[cache] = _check(_read_private(cache), site_path, env)
    return _TRUSTED[cache]


def _check(data: bytes | None, site_path: Path, env: str) -> tuple[dict[str, Any], bytes] | None:
    if data is None:
        return None
    head, _, body = data.partition(b"\n")
    try:
        header = json.loads(head)
        if header["context"] != context(site_path, env, header["users"],
                                        header["runner_executable"]):
            return None
        if any(signature(path) != sig for path, sig in header["inputs"]):
            return None
        if not all(isinstance(entry, list) and len(entry) == 4
                   and all(isinstance(part, str) for part in entry) for entry in header["early"]):
            return None
    except (ValueError, TypeError, KeyError, AttributeError):  # corrupt: build again
        return None
    return header, body


def load(cache: Path, site_path: Path, env: str) -> Plan | None:
    """The cached plan, or None when there is none to trust."""
    found = _TRUSTED.pop(cache, None) or _check(_read_private(cache), site_path, env)
    if found is None:
        return None
    try:
        plan = json.loads(found[1], object_hook=_decoder())
    except (ValueError, TypeError, KeyError, AttributeError):  # corrupt: build again
        return None
    from siteboot.plan import Plan

    if not isinstance(plan, Plan) or plan.env != env or plan.site.path != site_path:
        return None
    return plan


def _read_private(cache: Path) -> bytes | None:
    """The content of ``cache`` if it and its dir are the invoker's own, private, and real."""
    try:
        folder = os.lstat(cache.parent)
        if (not stat.S_ISDIR(folder.st_mode) or folder.st_uid != os.geteuid()
                or folder.st_mode & 0o077):
            return None
    except OSError:
        return None
    from siteboot.fsutil import read_owned

    return read_owned(cache, forbidden_mode=0o077)


def store(cache: Path, plan: Plan, inputs: dict[str, Any], started_ns: int) -> bool:
    """Write the cache of ``plan``; False (and nothing written) when it cannot be trusted."""
    from siteboot.control import status_digest
    from siteboot.errors import SitebootError
    from siteboot.fsutil import atomic_write, ensure_private_dir

    early = _early_requests(plan)  # first: its modules are inputs too
    digest = status_digest(plan)
    inputs = {**inputs, **{path: signature(path) for path in _file_inputs(plan)}}
    for sig in inputs.values():
        if isinstance(sig, list) and max(sig[3], sig[4]) > started_ns - SETTLE_NS:
            return False
    header = {**_context_of(plan), "inputs": list(inputs.items()),
              "early": early, "status": digest}
    try:
        body = json.dumps(encode(plan), separators=(",", ":"))
    except TypeError:  # a value the codec does not know: not cached
        return False
    try:
        ensure_private_dir(cache.parent)
        atomic_write(cache, json.dumps(header, separators=(",", ":")) + "\n" + body, 0o600)
    except (OSError, SitebootError):  # a read-only or foreign home: status works without
        return False
    return True


# ------------------------------------------------------------------------------------------
# the codec: the model as plain JSON values


def _classes() -> dict[str, type]:
    from siteboot import plan, site

    return {cls.__name__: cls for cls in (
        plan.Plan, plan.InstancePlan, plan.ProgramPlan, plan.FilePlan, plan.DirPlan,
        plan.RunnerPlan, site.Site, site.Instance, site.Program, site.PerEnv, site.FileSpec,
        site.DirSpec, site.VenvSpec, site.RunnerSpec)}


def encode(value: Any) -> Any:
    """``value`` as JSON values; TypeError for what the codec does not know."""
    import dataclasses

    from siteboot.plan import Sealed

    kind = type(value)
    if value is None or kind in (str, int, float, bool):
        return value
    if kind is list:
        return [encode(v) for v in value]
    if kind is dict:
        if _TAG not in value and all(type(k) is str for k in value):
            return {k: encode(v) for k, v in value.items()}
        return {_TAG: "dict", "items": [[encode(k), encode(v)] for k, v in value.items()]}
    if kind is tuple:
        return {_TAG: "tuple", "items": [encode(v) for v in value]}
    if kind is Sealed:
        return {_TAG: "Sealed", "parts": [[text, secret] for text, secret in value.parts]}
    if isinstance(value, PurePath):
        return {_TAG: "Path", "path": str(value)}
    if dataclasses.is_dataclass(value) and _classes().get(kind.__name__) is kind:
        return {_TAG: kind.__name__, "fields": {f.name: encode(getattr(value, f.name))
                                                for f in dataclasses.fields(value)}}
    raise TypeError(f"cannot cache a {kind.__name__}")


def _decoder() -> Any:
    from siteboot.plan import Sealed

    classes = _classes()
    paths: dict[str, Path] = {}  # one object per path: every program of an instance logs there

    def decode(obj: dict[str, Any]) -> Any:
        tag = obj.get(_TAG)
        if tag is None:
            return obj
        if tag == "Path":
            text = obj["path"]
            return paths.get(text) or paths.setdefault(text, Path(text))
        if tag == "tuple":
            return tuple(obj["items"])
        if tag == "dict":
            return {key: item for key, item in obj["items"]}
        if tag == "Sealed":
            return Sealed([(str(text), bool(secret)) for text, secret in obj["parts"]])
        return classes[tag](**obj["fields"])

    return decode

