"""``python -m siteboot``: stage 0. Only the standard library at module level."""

from __future__ import annotations


def run() -> None:
    from siteboot.cli import main

    main()


if __name__ == "__main__":
    run()
