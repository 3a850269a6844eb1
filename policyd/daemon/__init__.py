"""Scheduling rules, signals, and the health and metrics endpoint."""
