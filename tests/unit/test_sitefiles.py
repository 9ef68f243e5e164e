"""[files] rendered from templates and written by their instance's owner, [dirs] made or
corrected with one mode and group, secrets filled in only where written."""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

import pytest

from siteboot import ops
from siteboot.errors import EXIT_USAGE, OwnershipError, RenderError, SecretError
from siteboot.fsutil import ensure_managed_dir
from siteboot.instances import provision_all
from siteboot.plan import Plan, make_plan
from siteboot.render import render_files
from siteboot.secretstore import SecretStore
from siteboot.site import load_site
from siteboot.sitefiles import SiteFiles, held_by_runtime_dir, prepare, record_started, restarts

NOBODY = 65534
TEMPLATE = """\
env={{ env }} site={{ site }} instance={{ instance }} user={{ user }}
level={{ vars.log_level }}
dsn={{ vars.dsn }}
password={{ secret("DB_PASSWORD") }}
web={{ port("web") }} ports={{ ports.web }}
scratch={{ dirs.scratch }} self={{ files.conf }} state={{ state_dir }}
venv={{ venvs.app }}
"""


def site_text(base: Path) -> str:
    return f"""
[site]
name = "t"
envs = ["dev", "prod"]
runtime_dir = "{base}/rt-{{env}}"
state_dir = "{base}/st/{{site}}-{{env}}"

[vars]
log_level = {{ dev = "DEBUG", prod = "INFO" }}
dsn = "db://app:{{secret:DB_PASSWORD}}@db/{{env}}"

[venvs.app]
requirements = []

[instances.main]
port = {{ dev = 40001, prod = 40002 }}

[dirs.scratch]
path = "{base}/scratch-{{env}}"
mode = "2770"
group = "{grp.getgrgid(os.getgid()).gr_name}"
instance = "main"

[files.conf]
template = "templates/app.conf.j2"
path = "{{dir:scratch}}/app.conf"
mode = "0640"
instance = "main"

[files.other]
template = "templates/other.j2"
path = "{{state_dir}}/conf.d/other.conf"
instance = "main"

[programs.web]
instance = "main"
command = "serve --port {{port}} --conf {{file:conf}}"
port = {{ dev = 41001, prod = 41002 }}
files = ["conf"]
environment = {{ PW = "{{secret:DB_PASSWORD}}", LEVEL = "{{var:log_level}}" }}

[programs.worker]
instance = "main"
command = "work"
files = ["other"]
"""


@pytest.fixture
def site(tmp_path, short_dir, monkeypatch):
    """A site root (tmp_path: sites/, templates/) whose paths live under short_dir."""
    (tmp_path / "sites").mkdir()
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "app.conf.j2").write_text(TEMPLATE)
    (tmp_path / "templates" / "other.j2").write_text("other {{ env }}\n")
    path = tmp_path / "sites" / "t.toml"
    path.write_text(site_text(short_dir))
    monkeypatch.setenv("SITEBOOT_SECRET_DB_PASSWORD", "hunter2")
    return path


def plan_of(site: Path, env: str = "dev") -> Plan:
    return make_plan(load_site(site), env)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_file_template_sees_the_env_s_values(site, short_dir):
    plan = plan_of(site)
    inst = plan.instances["main"]
    conf, other = render_files(plan, inst, site.parent.parent, SecretStore(inst.secrets_path))
    assert conf.text == TEMPLATE.replace("{{ env }}", "dev").replace("{{ site }}", "t") \
        .replace("{{ instance }}", "main").replace("{{ user }}", inst.user) \
        .replace("{{ vars.log_level }}", "DEBUG") \
        .replace("{{ vars.dsn }}", "db://app:hunter2@db/dev") \
        .replace('{{ secret("DB_PASSWORD") }}', "hunter2") \
        .replace('{{ port("web") }}', "41001").replace("{{ ports.web }}", "41001") \
        .replace("{{ dirs.scratch }}", f"{short_dir}/scratch-dev") \
        .replace("{{ files.conf }}", f"{short_dir}/scratch-dev/app.conf") \
        .replace("{{ state_dir }}", str(inst.state_dir)) \
        .replace("{{ venvs.app }}", str(plan.venv_path("app", inst.user)))
    assert (conf.mode, conf.users, conf.preview) == (0o640, ("web",), False)
    assert other.text == "other dev\n"
    assert len(conf.sha256) == 64


def test_a_preview_shows_placeholders_never_a_secret(site, monkeypatch):
    plan = plan_of(site, "prod")
    conf, _ = render_files(plan, plan.instances["main"], site.parent.parent, None)
    assert conf.preview
    assert "password={secret:DB_PASSWORD}" in conf.text
    assert "dsn=db://app:{secret:DB_PASSWORD}@db/prod" in conf.text
    assert "level=INFO" in conf.text
    assert "hunter2" not in conf.text


@pytest.mark.parametrize(("template", "message"), [
    ("{{ nope }}", "file conf: template templates/app.conf.j2: 'nope' is undefined"),
    ("{{ vars.nope }}", "has no attribute 'nope'"),
    ('{{ port("wbe") }}', "port('wbe'): no program 'wbe' with a port in site t (did you mean 'web'?)"),
    ("{% if %}", "file conf: template templates/app.conf.j2, line 1:"),
    ("{{ ''.__class__.__mro__ }}", "unsafe"),
    ('{{ secret("DB_PASSWORD") + 1 }}', "TypeError"),
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
])
def test_template_mistakes_are_clear_errors(site, template, message):
    (site.parent.parent / "templates" / "app.conf.j2").write_text(template)
    plan = plan_of(site)
    inst = plan.instances["main"]
    with pytest.raises(RenderError) as info:
        render_files(plan, inst, site.parent.parent, SecretStore(inst.secrets_path))
    assert message in str(info.value)
    assert "hunter2" not in str(info.value)
    assert info.value.exit_code == EXIT_USAGE


def test_an_error_message_holding_a_secret_shows_its_name(site):
    (site.parent.parent / "templates" / "app.conf.j2").write_text(
        '{{ {}[secret("DB_PASSWORD")] }}')  # a KeyError names the key
    plan = plan_of(site)
    inst = plan.instances["main"]
    with pytest.raises(RenderError) as info:
        render_files(plan, inst, site.parent.parent, SecretStore(inst.secrets_path))
    assert "hunter2" not in str(info.value)
    assert "{secret:DB_PASSWORD}" in str(info.value)


def test_a_missing_template_names_where_it_was_looked_for(site):
    (site.parent.parent / "templates" / "other.j2").unlink()
    plan = plan_of(site)
    with pytest.raises(RenderError, match=r"file other: template templates/other\.j2 not found"):
        render_files(plan, plan.instances["main"], site.parent.parent, None)


def test_prepare_makes_dirs_and_writes_files_once(site, short_dir):
    plan = plan_of(site)
    inst = plan.instances["main"]
    done = prepare(plan, inst, site.parent.parent)
    scratch = short_dir / "scratch-dev"
    assert mode(scratch) == 0o2770
    conf = scratch / "app.conf"
    assert mode(conf) == 0o640
    assert "password=hunter2" in conf.read_text()
    other = inst.state_dir / "conf.d" / "other.conf"
    assert mode(other) == 0o600
    assert mode(other.parent) == 0o700  # a folder siteboot had to make is private
    assert done.rewritten == ["conf", "other"]
    assert done.notes[0].startswith(f"dir scratch: created {scratch} (mode 2770, group ")
    assert done.notes[1:] == [f"file conf: wrote {conf}", f"file other: wrote {other}"]
    assert set(done.hashes) == {"conf", "other"}
    again = prepare(plan, inst, site.parent.parent)
    assert (again.rewritten, again.notes, again.hashes) == ([], [], done.hashes)
    os.chmod(conf, 0o644)
    assert prepare(plan, inst, site.parent.parent).rewritten == []
    assert mode(conf) == 0o640  # corrected, content unchanged
    assert not [p for p in scratch.iterdir() if p.name.endswith(".tmp")]


def test_a_missing_secret_touches_nothing(site, short_dir, monkeypatch):
    monkeypatch.delenv("SITEBOOT_SECRET_DB_PASSWORD")
    plan = plan_of(site)
    with pytest.raises(SecretError, match="secret DB_PASSWORD is not set"):
        provision_all(plan, plan.instances["main"], site.parent.parent)
    assert sorted(p.name for p in short_dir.iterdir()) == []


def test_the_secrets_file_is_used_when_the_environment_has_none(site, monkeypatch):
    monkeypatch.delenv("SITEBOOT_SECRET_DB_PASSWORD")
    plan = plan_of(site)
    inst = plan.instances["main"]
    inst.state_dir.mkdir(parents=True)
    inst.secrets_path.write_text('DB_PASSWORD = "from-file"\n')
    inst.secrets_path.chmod(0o600)
    prepare(plan, inst, site.parent.parent)
    assert "password=from-file" in inst.files[0].path.read_text()


def test_the_config_holding_an_environment_secret_is_0600(site):
    plan = plan_of(site)
    inst = plan.instances["main"]
    _, conf = provision_all(plan, inst, site.parent.parent)
    assert mode(conf) == 0o600
    assert mode(inst.runtime_dir) == 0o700
    assert 'PW="hunter2"' in conf.read_text()
    assert 'LEVEL="DEBUG"' in conf.read_text()


def test_render_in_place_and_previews(site, short_dir, tmp_path):
    plan = plan_of(site)
    root = site.parent.parent
    out = tmp_path / "out"
    preview = ops.render(plan, root, out)
    assert [(r.file, r.path.relative_to(out).as_posix(), r.preview) for r in preview.rendered] == [
        (None, "supervisord-t-main-dev.conf", True), ("conf", "files-t-main-dev/conf", True),
        ("other", "files-t-main-dev/other", True)]
    text = "".join(r.path.read_text() for r in preview.rendered)
    assert "hunter2" not in text
    assert "{secret:DB_PASSWORD}" in text
    assert not (short_dir / "scratch-dev").exists()
    result = ops.render(plan, root)
    assert [r.file for r in result.rendered] == [None, "conf", "other"]
    assert result.notes[0].startswith("main: dir scratch: created")
    assert "hunter2" in (short_dir / "scratch-dev" / "app.conf").read_text()
    assert "hunter2" not in str(result.as_json())


def test_a_secret_supervisord_cannot_carry_is_named_not_shown(site, monkeypatch):
    monkeypatch.setenv("SITEBOOT_SECRET_DB_PASSWORD", "it's \"quoted\"")
    plan = plan_of(site)
    with pytest.raises(RenderError) as info:
        provision_all(plan, plan.instances["main"], site.parent.parent)
    assert "[programs.web] environment.PW = '{secret:DB_PASSWORD}' (secret DB_PASSWORD filled " \
           "in): holds both quote kinds" in str(info.value)
    assert "quoted" not in str(info.value)


def test_restarts_follow_what_the_programs_started_with(site):
    plan = plan_of(site)
    inst = plan.instances["main"]
    inst.runtime_dir.mkdir(parents=True)
    written = SiteFiles(hashes={"conf": "a", "other": "b"}, rewritten=["other"])
    assert restarts(inst, written) == {"worker": ["other"]}  # no record: what was rewritten now
    record_started(inst, written)
    assert mode(inst.files_started_path) == 0o600
    assert restarts(inst, SiteFiles(hashes={"conf": "a", "other": "b"})) == {}
    # `render` rewrote a file since the last start: the next `up` still restarts its users
    assert restarts(inst, SiteFiles(hashes={"conf": "c", "other": "b"})) == {"web": ["conf"]}


def test_managed_dir_is_corrected_never_followed_never_taken(short_dir):
    gid = os.getgid()
    target = short_dir / "d"
    assert ensure_managed_dir(target, 0o2770, gid)[0].startswith(f"created {target} (mode 2770")
    os.chmod(target, 0o2775)
    assert ensure_managed_dir(target, 0o2770, gid) == ["mode 2775 -> 2770"]
    assert ensure_managed_dir(target, 0o2770, gid) == []
    nested = short_dir / "a" / "b" / "c"
    ensure_managed_dir(nested, 0o750)
    assert mode(nested) == 0o750
    link = short_dir / "link"
    link.symlink_to(target)
    with pytest.raises(OwnershipError, match="is not a directory"):
        ensure_managed_dir(link, 0o700)
    assert mode(target) == 0o2770  # not followed
    theirs = short_dir / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(OwnershipError, match=r"belongs to .*only its owner may set its mode"):
        ensure_managed_dir(theirs, 0o700)
    assert mode(theirs) == 0o755


def test_a_managed_dir_on_a_way_another_account_controls_is_refused_untouched(short_dir):
    # another account's folder on the way: it could swap the dir for its own, or put a symlink
    # there that points the chmod and chgrp at a dir of ours elsewhere (~/.ssh)
    mine = short_dir / "home" / ".ssh"
    mine.mkdir(parents=True, mode=0o700)
    theirs = short_dir / "theirs"
    theirs.mkdir(mode=0o755)
    (theirs / "x").symlink_to(short_dir / "home")
    os.lchown(theirs / "x", NOBODY, NOBODY)
    os.chown(theirs, NOBODY, NOBODY)
    for path in (theirs / "x" / ".ssh", theirs / "new"):
        with pytest.raises(OwnershipError, match="refusing to use it"):
            ensure_managed_dir(path, 0o2775, os.getgid())
    assert mode(mine) == 0o700
    assert not (theirs / "new").exists()
    # a parent anyone may write without the sticky bit: anyone could rename the dir away
    open_parent = short_dir / "open"
    open_parent.mkdir()
    os.chmod(open_parent, 0o777)
    (open_parent / "d").mkdir(mode=0o700)
    with pytest.raises(OwnershipError, match="may write without the sticky bit"):
        ensure_managed_dir(open_parent / "d", 0o2775, os.getgid())
    assert mode(open_parent / "d") == 0o700
    os.chmod(open_parent, 0o1777)  # sticky, like /tmp: fine
    ensure_managed_dir(open_parent / "d", 0o750)
    assert mode(open_parent / "d") == 0o750


def test_a_managed_dir_inside_the_runtime_dir_survives_a_purge(site, short_dir):
    site.write_text(site.read_text().replace(f'path = "{short_dir}/scratch-{{env}}"',
                                             f'path = "{short_dir}/rt-{{env}}/main/keep"'))
    inst = plan_of(site).instances["main"]
    assert held_by_runtime_dir(inst) == ["scratch"]
