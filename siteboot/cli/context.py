"""What every command is given: the chosen site, env and root, resolved on first use."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

TYPE_CHECKING = False  # no typing at run time: every command pays for its import
if TYPE_CHECKING:
    from siteboot.plan import Plan
    from siteboot.site import Site
    from siteboot.statusreport import StatusResult

_UNSET = object()


def remember_invocation(args: Sequence[str]) -> None:
    """What the command line gave (site, env, root, instances), for the commands in hints."""
    from siteboot.hints import remember

    remember(args)


def debug_enabled(args: Sequence[str] = ()) -> bool:
    return "--debug" in args or os.environ.get("SITEBOOT_DEBUG", "") not in ("", "0")


class Ctx:
    """What every command gets: the chosen site, env and root, resolved lazily."""

    def __init__(self, site: str | None, env: str, root: str | None,
                 cached_plans: bool = False) -> None:
        self.site_arg = site  # None: the site root's own default (resources.default_site_path)
        self.env = env
        self.root_arg = root
        self._root: object = _UNSET
        self._site: Site | None = None
        self._site_path: Path | None = None
        # status only: the plan from the invoker's cache while the site file is unchanged
        self.cached_plans = cached_plans
        self._noted = False

    @property
    def root(self) -> Path | None:
        """The site root, found once (its notices, e.g. an untrusted sites/, print once)."""
        if self._root is _UNSET:
            from siteboot.cli.output import echo
            from siteboot.resources import find_root

            self._root = find_root(self.root_arg, notice=lambda text: echo(text, err=True))
        assert self._root is None or isinstance(self._root, Path)
        return self._root

    def site_path(self) -> Path:
        """The site file, resolved once (status asks for it thrice: its early requests, the
        quick status, the plan)."""
        if self._site_path is None:
            from siteboot.resources import resolve_site_path

            self._site_path = resolve_site_path(self.site_arg, self.root)
        return self._site_path

    def site(self) -> Site:
        from siteboot.site import load_site

        return load_site(self.site_path())

    def plan(self) -> Plan:
        return self.plan_for(self.env)

    def plan_for(self, env: str) -> Plan:
        from siteboot.plan import make_plan

        if self.cached_plans:
            from siteboot.plan_cache import load_or_build

            plan = load_or_build(self.site_path(), env)
            self._note_home()
            return plan
        if self._site is None:
            self._site = self.site()
            self._note_home()
        return make_plan(self._site, env)

    def send_status_requests(self, instances: Sequence[str]) -> None:
        """With cached plans: ask the site's supervisords for ``status`` now, before the plan
        is decoded (``plan_cache.send_status_requests``); any problem is ``plan``'s to say."""
        if not self.cached_plans:
            return
        from siteboot.errors import SitebootError
        from siteboot.plan_cache import send_status_requests

        try:
            send_status_requests(self.site_path(), self.env, instances)
        except (SitebootError, OSError):
            pass

    def quick_status(self, instances: Sequence[str]) -> StatusResult | None:
        """With cached plans: ``status`` made from the cache's digest, without the model
        (``quickstatus``), when it is a plain case; None: the full status must run."""
        if not self.cached_plans:
            return None
        from siteboot.errors import SitebootError
        from siteboot.quickstatus import report

        try:
            result = report(self.site_path(), self.env, instances)
        except (SitebootError, OSError):
            return None
        if result is not None:
            self._note_home()
        return result

    def _note_home(self) -> None:
        """Once: the operator's $HOME is not theirs (keys and state come from elsewhere)."""
        from siteboot.accounts import home_note

        if self._noted:
            return
        self._noted = True
        note = home_note()
        if note:
            from siteboot.cli.output import echo

            echo(note, err=True)
