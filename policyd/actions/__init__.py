"""Executors behind one interface, and the runner that carries out a plan."""

from policyd.actions import workflow  # noqa: F401  (registers the `workflow` executor)
