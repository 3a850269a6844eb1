"""Planning a site: check its rules, build the model, plan against its catalog.

The one entry point the CLI, the demo and `apply` use, so that a plan is only ever
made from rules that `policyd check` passes: a rule set with errors is refused with
its diagnostics, never half planned.
"""

from __future__ import annotations

from collections.abc import Callable

from policyd.diagnostics import DiagnosticError
from policyd.planner.engine import PlanOptions, make_plan
from policyd.planner.plan import Plan
from policyd.rules.check import check_site
from policyd.rules.model import Rule, build_rules
from policyd.site import Site
from policyd.stations.config import SiteConfig


def site_rules(config: SiteConfig) -> list[Rule]:
    """The site's rules in config order; DiagnosticError when `check` finds errors."""
    if config.path is None:
        return []
    result = check_site([config.path])
    if not result.ok:
        raise DiagnosticError([d for d in result.diagnostics if d.severity == "error"])
    return build_rules(result.rule_files, config)


def plan_site(
    site: Site, options: PlanOptions, progress: Callable[[int], None] | None = None
) -> Plan:
    rules = site_rules(site.config)
    return make_plan(site.config, site.engine, rules, options, progress)
