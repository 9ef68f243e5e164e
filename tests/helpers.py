"""Helpers shared by the test layers and the benchmarks (fixtures stay in the conftests)."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import socketserver
import subprocess
import sys
import textwrap
import time
import xmlrpc.client
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Callable

from siteboot.progress import Reporter, Step

REPO = Path(__file__).resolve().parent.parent
# A stand-in for gitlab-runner (a real one cannot be installed here): see its docstring.
STAND_IN_RUNNER = REPO / "tests" / "fixtures" / "gitlab-runner"
# The interpreter the two-account tests build their world-readable siteboot venv with.
SYSTEM_PYTHON = "/usr/bin/python3"
# The CLI in a fresh interpreter of the test venv (no stage 0: the test venv has the dependencies).
SITEBOOT = [sys.executable, "-c", "from siteboot.cli import main; main()"]

MINIMAL_SITE = """
[site]
name = "t"

[instances.main]
port = { dev = 40001, staging = 40002, prod = 40003 }

[programs.web]
instance = "main"
command = "python3 -m http.server {port}"
port = { dev = 41001, staging = 41002, prod = 41003 }
"""


def own_site_text(short_dir: Path, runtime: str = "", extra: str = "") -> str:
    """A site whose `main` instance belongs to the invoker, with every path under short_dir."""
    return f"""
        [site]
        name = "t"
        runtime_dir = "{runtime or f'{short_dir}/rt-{{env}}'}"
        state_dir = "{short_dir}/st/{{site}}-{{env}}"

        [instances.main]
        port = {{ dev = 40001, staging = 40002, prod = 40003 }}

        [programs.web]
        instance = "main"
        command = "python3 -m http.server {{port}}"
        port = {{ dev = 41001, staging = 41002, prod = 41003 }}
        {extra}
        """


def runner_site_text(folder: Path, runner: str, instance: str = "", extra: str = "") -> str:
    """A site with one instance, ``main`` (env dev, every path under ``folder``), and a
    ``[runner]`` table whose keys are ``runner``."""
    return textwrap.dedent(f"""
        [site]
        name = "t"
        envs = ["dev"]
        runtime_dir = "{folder}/run"
        state_dir = "{folder}/state"

        [instances.main]
        port = {{ dev = 40001 }}
        {instance}

        [runner]
        """) + textwrap.dedent(runner) + textwrap.dedent(extra)


def invoke_cli(*args: object) -> Any:
    """The click CLI in this process (a ``click.testing.Result``); never a traceback."""
    from click.testing import CliRunner

    from siteboot.cli.commands import cli

    result = CliRunner(mix_stderr=False).invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.stdout + result.stderr
    # expected failures end in SystemExit with a code; anything else is a bug
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def run_unread(*args: object, env: dict[str, str] | None = None,
               stderr_too: bool = False) -> subprocess.CompletedProcess[str]:
    """The CLI (``SITEBOOT``) writing into a real pipe whose reader is gone (``| head`` once
    head has exited); with ``stderr_too``, stderr as well (``2>&1 | head``)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([*SITEBOOT, *map(str, args)], stdout=write,
                              stderr=write if stderr_too else subprocess.PIPE, text=True, env=env,
                              timeout=120, check=False)
    finally:
        os.close(write)


def plan_from(text: str, folder: Path, env: str = "dev") -> Any:
    """Write ``text`` (dedented) as ``folder/t.toml`` and resolve it for ``env``."""
    from siteboot.plan import make_plan
    from siteboot.site import load_site

    path = folder / "t.toml"
    path.write_text(textwrap.dedent(text))
    return make_plan(load_site(path), env)


def supervisor_parse(path: Path) -> Any:
    """Parse a rendered config with supervisor's own options classes.

    Directory existence checks are switched off: a preview names runtime dirs that do not
    exist on the test machine, and the grammar is what is under test.
    """
    from supervisor import datatypes, options

    saved = (datatypes.existing_dirpath, datatypes.existing_directory,
             options.existing_dirpath, options.existing_directory)
    datatypes.existing_dirpath = options.existing_dirpath = lambda v: v
    datatypes.existing_directory = options.existing_directory = lambda v: v
    try:
        opts = options.ServerOptions()
        opts.configfile = str(path)
        opts.process_config(do_usage=False)
        return opts
    finally:
        (datatypes.existing_dirpath, datatypes.existing_directory,
         options.existing_dirpath, options.existing_directory) = saved


class _RecordedStep(Step):
    def __init__(self, events: list[tuple[str, str]]) -> None:
        self.events = events

    def update(self, what: str) -> None:
        self.events.append(("update", what))


class RecordingReporter(Reporter):
    """A progress reporter that remembers what it was told: ``("note", text)``, ``("step",
    what)``, ``("update", what)``, and ``("end", what)`` or ``("failed", what)``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def note(self, text: str) -> None:
        self.events.append(("note", text))

    @contextmanager
    def step(self, what: str) -> Iterator[Step]:
        self.events.append(("step", what))
        try:
            yield _RecordedStep(self.events)
        except BaseException:
            self.events.append(("failed", what))
            raise
        self.events.append(("end", what))

    def steps(self) -> list[str]:
        return [what for kind, what in self.events if kind == "step"]


def free_ports(count: int) -> list[int]:
    socks, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def processes_under(base: Path) -> list[int]:
    """Pids whose command line mentions ``base``, and their descendants (a supervisord's
    programs, whose command lines need not): what a test may have left running."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(base) in part for part in proc.info["cmdline"] or []):
                found.append(proc.pid)
                found += [child.pid for child in proc.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return [p for p in dict.fromkeys(found) if p != os.getpid()]


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def supervisords(base: Path) -> list[int]:
    """Pids of the supervisords whose command line mentions ``base``."""
    import psutil

    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any("supervisord" in part for part in cmdline[:4]) and any(str(base) in p for p in cmdline):
            pids.append(proc.pid)
    return pids


def children_of(pid: int, count: int = 1, timeout: float = 5.0) -> list[Any]:
    """At least ``count`` descendants of ``pid`` (psutil processes), waiting up to ``timeout``."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        try:
            found = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            found = []
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) >= count, f"{pid} has children {found}"
            return found
        time.sleep(0.01)


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    """The first true value of ``predicate()``, polled until ``timeout`` (then an AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            assert value, f"timed out after {timeout:g} s"
            return value
        time.sleep(0.05)


def dead_pid() -> int:
    """A pid that was just used and is free again."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid

class Interactive:
    """A command fed line by line on its stdin, its output (stderr too) read as it comes:
    `siteboot ctl` without arguments, kept open across what a test does meanwhile."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env, cwd=cwd)
        self.output = b""
        self._seen = 0

    def expect(self, token: str, timeout: float = 30.0) -> str:
        """The output up to and including ``token`` since the last ``expect``; fails when it
        does not come (or the command ends first)."""
        import select

        assert self.proc.stdout is not None
        wanted = token.encode()
        deadline = time.monotonic() + timeout
        while wanted not in self.output[self._seen:]:
            left = deadline - time.monotonic()
            assert left > 0, f"no {token!r} in {self.output[self._seen:]!r}"
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                data = os.read(self.proc.stdout.fileno(), 65536)
                assert data, f"ended before {token!r}: {self.output[self._seen:]!r}"
                self.output += data
        end = self.output.index(wanted, self._seen) + len(wanted)
        seen, self._seen = self._seen, end
        return self.output[seen:end].decode(errors="replace")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 30.0) -> tuple[int, str]:
        """Close its stdin (EOF ends supervisorctl) and wait; (exit code, the rest of its output)."""
        rest, _ = self.proc.communicate(timeout=timeout)  # closes stdin first
        self.output += rest
        return self.proc.returncode, self.output[self._seen:].decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


# ------------------------------------------------------------------------------------------
# A fake supervisord: real HTTP on a unix socket or 127.0.0.1, XML-RPC answered by ``answer``


def auth_header(key: str) -> str:
    from siteboot.accounts import RPC_USERNAME

    return "Basic " + base64.b64encode(f"{RPC_USERNAME}:{key}".encode()).decode()


class FakeSupervisord(BaseHTTPRequestHandler):
    """One XML-RPC answer per connection, after checking the Basic auth header; GET /logtail/
    streams ``server.log_chunks`` chunked, then ends (or, with ``server.keep_open``, waits
    for the client to go away, as supervisord's `tail -f` does)."""

    server: Any

    def _refused(self) -> bool:
        if self.headers.get("Authorization") == auth_header(self.server.key):
            return False
        self.send_response(401, "Unauthorized")
        self.send_header("Content-Length", "0")
        self.end_headers()
        return True

    def do_GET(self) -> None:
        self.server.requests.append((self.path, dict(self.headers), b""))
        if self._refused():
            return
        if not self.path.startswith("/logtail/"):
            self.send_error(404)
            return
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
        for chunk in self.server.log_chunks:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.flush()
        if self.server.keep_open:
            while self.connection.recv(1024):
                pass
        else:
            self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((self.path, dict(self.headers), body))
        if self._refused():
            return
        raw = self.server.raw
        if raw is not None:
            status, payload = raw
        else:
            params, method = xmlrpc.client.loads(body)
            try:
                result = self.server.answer(method, params)
                payload = xmlrpc.client.dumps((result,), methodresponse=True, allow_none=True).encode()
            except xmlrpc.client.Fault as fault:
                payload = xmlrpc.client.dumps(fault).encode()
            status = 200
        self.send_response(status)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def answer(method: str, params: tuple[Any, ...]) -> Any:
    """supervisord's behaviour for the few methods the tests use."""
    if method == "system.multicall":
        results = []
        for call in params[0]:
            try:
                results.append(answer(call["methodName"], tuple(call["params"])))
            except xmlrpc.client.Fault as fault:
                results.append({"faultCode": fault.faultCode, "faultString": fault.faultString})
        return results
    if method == "supervisor.getState":
        return {"statecode": 1, "statename": "RUNNING"}
    if method == "supervisor.getPID":
        return 4242
    if method == "supervisor.getAPIVersion":
        return "3.0"
    if method == "supervisor.startProcess":
        if params[0] == "t-dev:web":
            raise xmlrpc.client.Fault(60, "ALREADY_STARTED: t-dev:web")
        raise xmlrpc.client.Fault(10, f"BAD_NAME: {params[0]}")
    if method == "echo":
        return list(params)
    raise xmlrpc.client.Fault(1, f"UNKNOWN_METHOD: {method}")


class UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


class TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def start_fake_supervisord(where: Path | None, key: str = "s3cret",
                           raw: tuple[int, bytes] | None = None) -> tuple[Any, str]:
    """A fake supervisord on the unix socket ``where`` or on 127.0.0.1:0, serving in a thread
    (``server.shutdown()`` and ``server.server_close()`` end it); returns (server, url)."""
    import threading

    server: Any
    if where is None:
        server = TcpServer(("127.0.0.1", 0), FakeSupervisord)
        url = f"http://127.0.0.1:{server.server_address[1]}"
    else:
        server = UnixServer(str(where), FakeSupervisord)
        url = f"unix://{where}"
    server.key, server.raw, server.requests, server.answer = key, raw, [], answer
    server.log_chunks, server.keep_open = [b"line one\n", b"line two\n"], False
    server.thread = threading.Thread(target=server.serve_forever,
                                     kwargs={"poll_interval": 0.01}, daemon=True)
    server.thread.start()
    return server, url


def install_for_all(base: Path) -> Path:
    """siteboot in a venv every account can run (the two-account tests): the system python, a
    world-readable copy of the source under ``base``; its interpreter."""
    import configparser
    import shutil

    src = base / "src"
    src.mkdir()
    for folder in ("siteboot", "templates", "sites"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    venv = base / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True, capture_output=True)
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    requirements = [r.strip() for r in config["options"]["install_requires"].splitlines() if r.strip()]
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet",
                    "--disable-pip-version-check", *requirements], check=True, capture_output=True)
    site_packages = next((venv / "lib").glob("python3*/site-packages"))
    (site_packages / "siteboot-src.pth").write_text(f"{src}\n")
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True, capture_output=True)
    return venv / "bin/python"


@contextlib.contextmanager
def squatter(port: int, user: str = "nobody") -> Iterator[subprocess.Popen[str]]:
    """Another account (``user``; as root) listening on 127.0.0.1:``port`` while inside, as
    someone else's service would; as any other user, a process of our own."""
    code = ("import socket, sys\n"
            "s = socket.socket()\n"
            # the port's last user may have left connections in TIME_WAIT
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('127.0.0.1', {port}))\n"
            "s.listen()\n"
            "print('ready', flush=True)\n"
            "sys.stdin.read()\n")
    import pwd

    account = pwd.getpwnam(user)
    as_user = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
               "--clear-groups"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([*as_user, SYSTEM_PYTHON, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.communicate()


# ------------------------------------------------------------------------------------------
# A deploy grant with real accounts (tests/integration/test_deploy_grant.py, test_gitlab_ci.py)


_DEPLOY_GRANT_SITE = """
[site]
name = "{name}"
envs = ["dev"]
runtime_dir = "{runtime_dir}"
shared_dir = "{base}/shared/{{user}}"

[instances.svc]
user = "{member}"
port = {{ dev = {svc} }}

[instances.app]
user = "{owner}"
port = {{ dev = {app} }}
group = "{group}"
grant = "deploy"

[programs.web]
instance = "svc"
command = "{{python}} -m siteboot.demo work --interval 1"
startsecs = 1

[programs.steady]
instance = "app"
command = "{{python}} -m siteboot.demo work --interval 1"
startsecs = 1

[programs.changing]
instance = "app"
command = "{{python}} -m siteboot.demo work --interval 1"
startsecs = 1
"""


def deploy_grant_site(name: str, base: Path, runtime_dir: str, owner: str, member: str,
                      group: str, ports: list[int]) -> str:
    """Instance `svc` of ``member``; `app` of ``owner``, granting deploy to ``group``, with
    programs `steady` and `changing`; shared_dir under ``base/shared`` (made 1777 first)."""
    svc, app = ports
    return _DEPLOY_GRANT_SITE.format(name=name, base=base, runtime_dir=runtime_dir, owner=owner,
                                     member=member, group=group, svc=svc, app=app)


# the start of program `changing` of that site, up to its interval
CHANGING_COMMAND = ('[programs.changing]\ninstance = "app"\n'
                    'command = "{python} -m siteboot.demo work --interval ')


def drop_accounts(users: Sequence[str], groups: Sequence[str]) -> None:
    for user in users:
        subprocess.run(["userdel", "-r", "-f", user], capture_output=True, check=False)
        subprocess.run(["groupdel", user], capture_output=True, check=False)
    for group in groups:
        subprocess.run(["groupdel", group], capture_output=True, check=False)


def make_accounts(group: str, members: Sequence[str], others: Sequence[str] = ()) -> None:
    """``group``, accounts (each with a group of its own) that are its members, and others."""
    subprocess.run(["groupadd", group], check=True, capture_output=True)
    for user in [*members, *others]:
        extra = ["-G", group] if user in members else []
        subprocess.run(["useradd", "-m", "-U", "-s", "/bin/sh", *extra, user], check=True,
                       capture_output=True)


# The site file was written a moment ago: cache its plan anyway. ``full`` turns the quick status
# off, to compare with.
_CACHE_AT_ONCE = "import siteboot.plan_cache\nsiteboot.plan_cache.SETTLE_NS = 0\n"
_FULL = "import siteboot.quickstatus\nsiteboot.quickstatus.report = lambda *args: None\n"


def status_code(args: Sequence[str], full: bool = False, environ: dict[str, str] | None = None
                ) -> str:
    """Python code that runs ``siteboot status ARGS`` (with ``environ`` set first) and says on
    its last stderr line whether it loaded the site model (the quick status loads neither the
    model nor dataclasses nor typing): read it with ``status_verdict``."""
    return (f"import os\nos.environ.update({dict(environ or {})!r})\n"
            + _CACHE_AT_ONCE + (_FULL if full else "")
            + f"import sys\nsys.argv = ['siteboot', 'status', *{list(args)!r}]\n"
            "from siteboot.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
            "heavy = ('siteboot.plan', 'dataclasses', 'typing')\n"
            "print('model loaded:', any(m in sys.modules for m in heavy), file=sys.stderr)\n"
            "sys.exit(code)\n")


def status_verdict(result: subprocess.CompletedProcess[str]) -> tuple[int, str, bool]:
    """(exit code, output, whether the site model was loaded) of a run of ``status_code``."""
    loaded = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    assert loaded in ("model loaded: True", "model loaded: False"), result.stderr
    return result.returncode, result.stdout, loaded.endswith("True")
