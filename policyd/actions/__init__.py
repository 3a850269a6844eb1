"""Executors behind one interface, and the runner that carries out a plan."""
