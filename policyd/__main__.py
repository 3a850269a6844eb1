"""`python -m policyd`, the same as the `policyd` command."""

from policyd.cli import run

run()
