"""The typed rule model: both front ends give the same model, with locations resolved
and defaults filled in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from policyd.grammar import ast
from policyd.grammar.dsl import parse_policy
from policyd.grammar.printers import to_yaml
from policyd.grammar.yaml_rules import parse_yaml_rules
from policyd.rules import model
from policyd.rules.passes import RuleFile
from policyd.rules.typecheck import expression_text
from policyd.stations.config import load_site_config

EXAMPLES = Path(__file__).parents[2] / "examples" / "aps"


def _plain(value: Any) -> Any:
    """The model without source positions: expressions as their text."""
    if isinstance(value, model.Rule):
        fields = value.model_dump(exclude={"file", "span", "statements"})
        return fields | {"statements": [_plain(s) for s in value.statements]}
    if isinstance(value, model._Model):
        return {k: _plain(getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if type(value).__module__ == ast.__name__:
        return expression_text(value)
    return value


def _rules(text: str, name: str) -> list[model.Rule]:
    config = load_site_config(EXAMPLES / "policyd.yaml")
    parse = parse_policy if name.endswith(".policy") else parse_yaml_rules
    tree, problems = parse(text, name)
    assert tree is not None and not problems, problems
    return model.build_rules([RuleFile(name, text, tree)], config)


def test_dsl_and_yaml_give_the_same_model() -> None:
    text = (EXAMPLES / "rules" / "8idi.policy").read_text()
    dsl_rules = _rules(text, "8idi.policy")
    tree, _ = parse_policy(text, "8idi.policy")
    assert tree is not None
    yaml_rules = _rules(to_yaml(tree), "8idi.yaml")
    assert [_plain(r) for r in dsl_rules] == [_plain(r) for r in yaml_rules]
    assert {r.verb for r in dsl_rules} >= {"place", "replicate", "archive", "release"}


def test_locations_defaults_and_names() -> None:
    rules = _rules(
        """\
station 8IDI
rule two priority 5
  replicate files where true copies 2 on tier "disk"
rule room
  release files where true from voyager when usage("voyager") > 90% until 80%
rule q
  alarm when usage("voyager") > 80% notify ops
rule any
  replicate files where true copies 1 on locations where location.site == "aps"
""",
        "x.policy",
    )
    two, room, q, anywhere = rules
    assert (two.name, two.short_name, two.station, two.priority, two.order) == (
        "8IDI/two",
        "two",
        "8IDI",
        5,
        0,
    )
    assert two.statements[0].on == ("voyager",)
    release = room.statements[0]
    assert isinstance(release, model.Release)
    assert release.until == 0.8 and release.descending is False
    assert expression_text(release.order_by) == "file.modified"
    alarm = q.statements[0]
    assert isinstance(alarm, model.Alarm) and alarm.severity == "warning" and alarm.for_ == 0
    assert anywhere.statements[0].on == ("voyager", "tape")
