"""A config is rendered again whenever anything it is rendered from changed, and only then."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from siteboot import renderstamp
from siteboot.instances import provision
from siteboot.plan import InstancePlan, Plan
from siteboot.records import mark_stopped
from tests.helpers import plan_from

SITE = """
[site]
name = "t"
envs = ["dev"]
runtime_dir = "{base}/run"
state_dir = "{base}/state"

[instances.alpha]
port = {{ dev = 40101 }}

[programs.web]
instance = "alpha"
command = "sleep 100"
environment = {{ TOKEN = "{{secret:TOKEN}}" }}
"""


@pytest.fixture
def base(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(short_dir / "home"))
    monkeypatch.setenv("SITEBOOT_SECRET_TOKEN", "one")
    return short_dir


def plan_of(base: Path, text: str = SITE) -> Plan:
    plan: Plan = plan_from(text.format(base=base), base)
    return plan


class Renders:
    """Counts the renders (previews too) that `provision` does."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from siteboot import render

        self.count = 0
        real = render.render_instance

        def counting(*args: object, **kwargs: object) -> str:
            self.count += 1
            return real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(render, "render_instance", counting)

    def of(self, plan: Plan, root: Path | None = None) -> tuple[int, str]:
        before = self.count
        conf = provision(plan, plan.instances["alpha"], root)
        return self.count - before, conf.read_text()


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> Renders:
    return Renders(monkeypatch)


def alpha(plan: Plan) -> InstancePlan:
    return plan.instances["alpha"]


def test_an_unchanged_config_is_not_rendered_again(base, renders):
    plan = plan_of(base)
    done, first = renders.of(plan)
    assert done == 2  # the preview that validates, then the config
    assert oct(alpha(plan).render_stamp_path.stat().st_mode & 0o777) == "0o600"
    assert renders.of(plan_of(base)) == (0, first)
    assert "TOKEN=\"one\"" in first


def test_each_input_change_renders_again(base, renders, monkeypatch, tmp_path):
    renders.of(plan_of(base))
    done, text = renders.of(plan_of(base, SITE.replace("sleep 100", "sleep 200")))
    assert done == 2  # the site file
    assert "sleep 200" in text
    monkeypatch.setenv("SITEBOOT_SECRET_TOKEN", "two")
    done, text = renders.of(plan_of(base, SITE.replace("sleep 100", "sleep 200")))
    assert done == 2  # a secret
    assert 'TOKEN="two"' in text
    plan = plan_of(base, SITE.replace("sleep 100", "sleep 200"))
    assert renders.of(plan)[0] == 0
    mark_stopped(alpha(plan), ["web"], stopped=True)
    done, text = renders.of(plan)
    assert done == 2  # an operator's stop
    assert "autostart=false" in text.replace(" ", "")
    assert renders.of(plan)[0] == 0
    from siteboot.keys import new_key

    new_key(alpha(plan))
    assert renders.of(plan)[0] == 2  # the key
    root = tmp_path / "root"
    (root / "templates").mkdir(parents=True)
    shipped = Path(__file__).resolve().parents[2] / "templates" / "supervisord.conf.j2"
    (root / "templates" / "supervisord.conf.j2").write_text(shipped.read_text() + "; mine\n")
    done, text = renders.of(plan, root)
    assert done == 2  # the template
    assert text.endswith("; mine\n")
    assert renders.of(plan, root)[0] == 0
    (root / "templates" / "supervisord.conf.j2").write_text(shipped.read_text() + "; edit\n")
    assert renders.of(plan, root)[1].endswith("; edit\n")


def test_a_config_edited_behind_siteboots_back_is_rendered_again(base, renders):
    plan = plan_of(base)
    _, text = renders.of(plan)
    alpha(plan).conf_path.write_text(text + "; by hand\n")
    assert renders.of(plan) == (2, text)


@pytest.mark.parametrize("stamp", ["", "{not json", "[]", '{"inputs": "x", "output": "y"}'])
def test_a_corrupt_or_foreign_stamp_means_a_render(base, renders, stamp):
    plan = plan_of(base)
    _, text = renders.of(plan)
    alpha(plan).render_stamp_path.write_text(stamp)
    assert renders.of(plan) == (2, text)
    assert renders.of(plan)[0] == 0  # stamped afresh


def test_siteboots_own_code_is_an_input(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "render.py").write_text("a")
    before = renderstamp.inputs_digest(("x",), [], code_dir=code)
    assert renderstamp.inputs_digest(("x",), [], code_dir=code) == before
    (code / "render.py").write_text("ab")
    assert renderstamp.inputs_digest(("x",), [], code_dir=code) != before
    os.utime(code / "render.py", ns=(1, 1))
    changed = renderstamp.inputs_digest(("x",), [], code_dir=code)
    assert changed != before
    assert renderstamp.inputs_digest(("y",), [], code_dir=code) != changed


def test_canonical_forms_are_the_same_in_every_process():
    import subprocess
    import sys

    code = ("from siteboot.renderstamp import canonical; from pathlib import Path\n"
            "print(repr(canonical(({'b': 1, 'a': {'x', 'y', 'z'}}, frozenset({'p', 'q'}), "
            "Path('/x'), [1.5, None, b'k']))))")
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
               for seed in ("1", "2", "3")}
    assert len(outputs) == 1
    assert "0x" not in outputs.pop()
