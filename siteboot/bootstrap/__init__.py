"""Stage 0: siteboot's own virtualenv (the *tool venv*) from a bare ``python3``.

``locate`` finds the checkout and the tool venv and re-executes into it; ``stamp`` tells whether
that venv is current, ``requirements`` what siteboot needs and whether this Python has it;
``pipsource`` finds pip where ``ensurepip`` cannot give one, and ``build`` makes the venv
(``python3 -m siteboot init``). ``siteboot/__main__.py`` imports ``locate`` only, the others
when it needs them, so a command that just runs in the tool venv pays for none of the rest.

Standard library only, every module: this runs before any of siteboot's dependencies exist.
"""
