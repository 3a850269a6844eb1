"""The JSON Schema of YAML rule files agrees with the YAML front end and the spec."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from ruamel.yaml import YAML

from policyd.grammar.yaml_rules import CLAUSE_KEYS, RULE_KEYS, TOP_KEYS
from policyd.rules.yaml_schema import VERBS, RuleFile, clause_keys, rules_json_schema
from tests.grammar.test_yaml_rules import SECTION_6


def load(text: str) -> object:
    yaml = YAML(typ="safe")
    yaml.version = (1, 2)
    return yaml.load(text)


def test_the_spec_example_is_valid() -> None:
    RuleFile.model_validate(load(SECTION_6))


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_takes_the_keys_the_yaml_front_end_takes(verb: str) -> None:
    required, optional = CLAUSE_KEYS[verb]
    assert clause_keys(verb) == {*required, *optional}


def test_rule_and_file_keys_agree() -> None:
    schema = rules_json_schema()
    assert set(schema["properties"]) == set(TOP_KEYS)
    assert set(schema["$defs"]["Rule"]["properties"]) == {*RULE_KEYS, *VERBS}
    assert schema["$defs"]["Rule"]["oneOf"] == [{"required": [v]} for v in VERBS]


@pytest.mark.parametrize(
    ("snippet", "where"),
    [
        ("version: 1\nrules: [{name: a, place: {where: x, on: v, at: t, onn: w}}]", "onn"),
        ("version: 2\nrules: []", "version"),
        (
            "version: 1\nrules: [{name: a, alarm: {when: x, notify: ops, severity: urgent}}]",
            "severity",
        ),
        ("version: 1\nrules: [{name: a, replicate: {where: x, copies: 0, on: v}}]", "copies"),
    ],
)
def test_mistakes_are_refused(snippet: str, where: str) -> None:
    with pytest.raises(ValidationError) as raised:
        RuleFile.model_validate(load(snippet))
    assert where in str(raised.value)
