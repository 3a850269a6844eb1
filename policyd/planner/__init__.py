"""Reconciliation of desired and actual replicas into a plan; the plan and its views."""
