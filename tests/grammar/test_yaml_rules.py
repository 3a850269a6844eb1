"""The YAML front end (spec/rules.md section 6) gives the DSL's AST, and DSL-quality errors.

`policyd convert` and the checker rely on both front ends producing the same nodes
with the same values, so the equivalence tests compare whole trees with spans left
out; the error table pins the exact text and the line and column of each message.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyd.diagnostics import Span
from policyd.grammar import ast
from policyd.grammar.dsl import parse_policy
from policyd.grammar.yaml_rules import parse_yaml_rules
from tests.grammar.test_examples import EXAMPLE
from tests.grammar.test_fuzz import FUZZ, ODD, assert_answer, mutated

# spec/rules.md section 6, verbatim.
SECTION_6 = """\
version: 1
station: 8IDI
rules:
  - name: layout
    place:
      where: 'file.path like "*.h5" or file.path like "*.imm"'
      on: voyager
      at: "{station}/{experiment.start:%Y-%m}/{experiment.name}/{file.path}"
  - name: two-copies
    replicate: {where: "experiment.end is null or experiment.end > now - 180 days", copies: 2, on: [voyager, hpc]}
  - name: archive-raw
    schedule: 1 day
    archive: {where: "age(experiment.end) > 90 days", to: tape, release_from: [daq-8idi],
              notify_before: {channel: staff-8idi, before: 7 days}}
  - name: make-room
    priority: 10
    release: {where: 'file.path like "scratch/**"', from: [voyager],
              when: 'usage("voyager") > 90%', until: 80%, order_by: {expr: file.modified}}
  - name: quota
    alarm:
      - {when: 'usage("voyager", station = "8IDI") > 80%', notify: [ops, staff-8idi], severity: warning}
  - name: access
    grant:
      - {perms: [read, write], principals: [experiment.users], at: voyager,
         while: "experiment.active or experiment.end > now - 30 days"}
"""

# The rules of section 1 that section 6 restates (quota and access keep their first
# statement only), every line taken from section 1.
SECTION_6_AS_DSL = """\
station 8IDI

rule layout
  place files where file.path like "*.h5" or file.path like "*.imm"
  on voyager
  at "{station}/{experiment.start:%Y-%m}/{experiment.name}/{file.path}"

rule two-copies
  replicate files where experiment.end is null or experiment.end > now - 180 days
  copies 2 on voyager, hpc

rule archive-raw
  archive files where age(experiment.end) > 90 days
  to tape
  then release from daq-8idi
  notify staff-8idi before 7 days
  schedule every 1 day

rule make-room priority 10
  release files where file.path like "scratch/**" from voyager
  when usage("voyager") > 90% until 80%
  order by file.modified

rule quota
  alarm when usage("voyager", station = "8IDI") > 80% notify ops, staff-8idi severity warning

rule access
  grant read, write to experiment.users on experiment directory at voyager
  while experiment.active or experiment.end > now - 30 days
"""

# All of section 1 in YAML, so that every verb and clause is compared.
SECTION_1_AS_YAML = (
    SECTION_6.replace(
        "severity: warning}\n",
        "severity: warning}\n"
        "      - {when: 'time_to_full(\"voyager\") < 120 days', notify: [ops], severity: critical}\n",
    )
    .replace(
        "  - name: make-room\n",
        "  - name: keep-published\n"
        "    protect:\n"
        "      where: experiment.meta.doi is not null\n"
        "  - name: make-room\n",
    )
    .replace(
        '30 days"}\n',
        '30 days"}\n'
        "      - perms: read\n"
        "        principals: [group:8idi-staff]\n"
        "        at: voyager\n"
        "  - name: xpcs\n"
        "    run:\n"
        "      workflow: xpcs-8idi\n"
        '      where: file.path like "*.imm"\n'
        "      with:\n"
        "        qmap: experiment.meta.qmap\n"
        "        outputRootDir: '\"/gdata/analysis/8idi\"'\n"
        "  - name: fixity\n"
        "    verify: {on: tape, every: 365 days, sample: 2%}\n",
    )
)


def shape(node: Any) -> Any:
    """A node as nested tuples without its spans: what both front ends must agree on."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        values = tuple(
            (f.name, shape(getattr(node, f.name)))
            for f in dataclasses.fields(node)
            if f.name != "span"
        )
        return (type(node).__name__, values)
    if isinstance(node, tuple | list):
        return tuple(shape(item) for item in node)
    return node


def spans(node: Any) -> list[Span]:
    """Every span in a tree, to check that they all point into the YAML file."""
    if isinstance(node, Span):
        return [node]
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return [s for f in dataclasses.fields(node) for s in spans(getattr(node, f.name))]
    if isinstance(node, tuple):
        return [s for item in node for s in spans(item)]
    return []


def dsl(text: str) -> ast.File:
    tree, diagnostics = parse_policy(text, "rules.policy")
    assert diagnostics == []
    assert tree is not None
    return tree


def yaml(text: str, file: str = "rules.yaml") -> ast.File:
    tree, diagnostics = parse_yaml_rules(text, file)
    assert [d.render() for d in diagnostics] == []
    assert tree is not None
    return tree


def test_section_6_dsl_is_taken_from_section_1() -> None:
    assert all(line in EXAMPLE.splitlines() for line in SECTION_6_AS_DSL.splitlines())


def test_section_6_gives_the_ast_of_section_1() -> None:
    from_yaml = yaml(SECTION_6)
    from_dsl = dsl(SECTION_6_AS_DSL)
    assert [r.name.value for r in from_yaml.rules] == [
        "layout", "two-copies", "archive-raw", "make-room", "quota", "access",
    ]  # fmt: skip
    for ours, theirs in zip(from_yaml.rules, from_dsl.rules, strict=True):
        assert shape(ours) == shape(theirs), ours.name.value
    assert shape(from_yaml) == shape(from_dsl)


def test_all_of_section_1_in_yaml() -> None:
    assert shape(yaml(SECTION_1_AS_YAML)) == shape(dsl(EXAMPLE))


def test_spans_point_into_the_yaml_file() -> None:
    tree = yaml(SECTION_6, "rules/8idi.yaml")
    lines = SECTION_6.splitlines()
    for span in spans(tree):
        assert span.file == "rules/8idi.yaml"
        assert 1 <= span.line <= len(lines) and span.col >= 1
    layout, two_copies, _, make_room, *_ = tree.rules
    assert layout.name.span == Span("rules/8idi.yaml", 4, 11, 4, 17)
    (replicate,) = two_copies.statements
    assert isinstance(replicate, ast.Replicate) and isinstance(replicate.where, ast.Or)
    # `experiment.end > now - 180 days` inside the double-quoted flow value of line 10
    right = replicate.where.right.span
    assert (right.line, right.col, right.end_line, right.end_col) == (10, 51, 10, 82)
    assert lines[9][right.col - 1 : right.end_col - 1] == "experiment.end > now - 180 days"
    (release,) = make_room.statements
    assert isinstance(release, ast.Release) and release.until is not None
    assert release.until.span == Span("rules/8idi.yaml", 18, 54, 18, 57)


RULE_PAIRS = [
    # reserved words need no quotes in YAML; the DSL must quote them
    ("{name: on, place: {where: 'true', on: tier}}", 'rule "on" place files where true on "tier"'),
    # location sets: a tier, a query, a single name
    (
        "{name: r, replicate: {where: 'true', copies: 2, on: {tier: disk}}}",
        'rule r replicate files where true copies 2 on tier "disk"',
    ),
    (
        "{name: r, replicate: {where: 'true', on: {where: 'location.site == \"aps\"'}}}",
        'rule r replicate files where true on locations where location.site == "aps"',
    ),
    ("{name: r, replicate: {where: 'true', on: hpc}}", "rule r replicate files where true on hpc"),
    # rule options: cron schedule, disabled, negative priority
    (
        "{name: r, priority: -5, schedule: '0 3 * * *', disabled: true, protect: {where: 'true'}}",
        'rule r priority -5 protect files where true schedule "0 3 * * *" disabled',
    ),
    ("{name: r, disabled: false, protect: {where: 'true'}}", "rule r protect files where true"),
    # order by descending, notify before, a bare percentage
    (
        "{name: r, release: {where: 'true', from: [a, b], order_by: {expr: file.size, desc: true}}}",
        "rule r release files where true from a, b order by file.size desc",
    ),
    (
        "{name: r, expire: {where: 'true', notify_before: {channel: ops, before: 2 weeks}}}",
        "rule r expire files where true notify ops before 2 weeks",
    ),
    # alarms with every clause, principals of every kind
    (
        "{name: r, alarm: [{when: 'x > 1', clear_when: 'x < 1', notify: [ops], severity: info,"
        " for: 10 min}]}",
        "rule r alarm when x > 1 clear when x < 1 notify ops severity info for 10 min",
    ),
    (
        "{name: r, grant: [{perms: [write], principals: ['user:d64944', {group: staff}],"
        " at: voyager}]}",
        'rule r grant write to user "d64944", group "staff" on experiment directory at voyager',
    ),
    # verify with a where, a run without one
    (
        "{name: r, verify: {where: 'file.size > 1 GB', on: tape, every: 1 y, sample: 0.5%}}",
        "rule r verify files where file.size > 1 GB on tape every 1 y sample 0.5%",
    ),
    ("{name: r, run: {workflow: wf}}", "rule r run workflow wf"),
]


@pytest.mark.parametrize(("rule", "policy"), RULE_PAIRS, ids=[p for _, p in RULE_PAIRS])
def test_rule_pairs(rule: str, policy: str) -> None:
    assert shape(yaml(f"version: 1\nrules:\n  - {rule}\n")) == shape(dsl(policy))


def test_on_is_text_in_yaml_1_2() -> None:
    tree = yaml("version: 1\nrules:\n  - name: a\n    place: {where: 'true', on: voyager}\n")
    (place,) = tree.rules[0].statements
    assert isinstance(place, ast.Place) and place.on is not None
    assert place.on.value == "voyager"


def test_no_rules() -> None:
    assert shape(yaml("version: 1\nstation: 2BM\n")) == shape(dsl("station 2BM"))


# (name, YAML text, the exact first line of each diagnostic); the file is NAME.yaml.
BAD = [
    (
        "unknown-key",
        "version: 1\nrules:\n  - name: a\n    place: {wher: 'true', on: voyager}\n",
        ["unknown-key.yaml:4:13: error: unknown key 'wher' in 'place'; did you mean 'where'?"],
    ),
    (
        "unknown-rule-key",
        "version: 1\nrules:\n  - name: a\n    shedule: 1 day\n    protect: {where: 'true'}\n",
        [
            "unknown-rule-key.yaml:4:5: error: unknown key 'shedule' in rule 'a'; "
            "did you mean 'schedule'?"
        ],
    ),
    (
        "misspelt-verb",
        "version: 1\nrules:\n  - name: a\n    protec: {where: 'true'}\n",
        [
            "misspelt-verb.yaml:4:5: error: unknown key 'protec' in rule 'a'; did you mean 'protect'?"
        ],
    ),
    (
        "missing-where",
        "version: 1\nrules:\n  - name: a\n    replicate:\n      copies: 2\n",
        ["missing-where.yaml:4:5: error: missing required key 'where' in 'replicate'"],
    ),
    (
        "missing-when",
        "version: 1\nrules:\n  - name: q\n    alarm:\n      - {notify: [ops]}\n",
        ["missing-when.yaml:5:9: error: missing required key 'when' in 'alarm'"],
    ),
    (
        "missing-before",
        "version: 1\nrules:\n  - name: a\n    expire: {where: 'true', notify_before: {channel: ops}}\n",
        ["missing-before.yaml:4:29: error: missing required key 'before' in 'notify_before'"],
    ),
    (
        "no-verb",
        "version: 1\nrules:\n  - name: a\n    priority: 3\n",
        [
            "no-verb.yaml:3:5: error: rule 'a' has no verb; expected one of: alarm, archive, "
            "expire, grant, place, protect, release, replicate, run, verify"
        ],
    ),
    (
        "wrong-type-copies",
        "version: 1\nrules:\n  - name: a\n    replicate: {where: 'true', copies: two}\n",
        ["wrong-type-copies.yaml:4:40: error: 'copies' expects a whole number, got 'two'"],
    ),
    (
        "wrong-type-notify",
        "version: 1\nrules:\n  - name: a\n    alarm: [{when: 'true', notify: {ops: 1}}]\n",
        ["wrong-type-notify.yaml:4:36: error: 'notify' expects a name, got a mapping"],
    ),
    (
        "empty-where",
        "version: 1\nrules:\n  - name: a\n    protect: {where: }\n",
        ["empty-where.yaml:4:21: error: 'where' expects an expression (text), got nothing"],
    ),
    (
        "fractional-copies",
        "version: 1\nrules:\n  - name: a\n    replicate: {where: 'true', copies: 1.5}\n",
        ["fractional-copies.yaml:4:40: error: a number of copies is a whole number, not 1.5"],
    ),
    # errors inside expressions, at their column, for every scalar style
    (
        "plain-scalar",
        "version: 1\nrules:\n  - name: a\n    protect:\n      where: file.size >> 1\n",
        ["plain-scalar.yaml:5:25: error: unexpected '>'; expected an expression"],
    ),
    (
        "single-quoted",
        "version: 1\nrules:\n  - name: a\n    protect:\n      where: 'file.size > 90 dayz'\n",
        ["single-quoted.yaml:5:30: error: unknown unit 'dayz'; did you mean 'day'?"],
    ),
    (
        "single-quoted-escape",
        "version: 1\nrules:\n  - name: a\n    protect: {where: 'file.ext == ''h5'' and x'}\n",
        [
            'single-quoted-escape.yaml:4:35: error: unexpected character "\'"; expected an expression'
        ],
    ),
    (
        "double-quoted",
        "version: 1\nrules:\n  - name: a\n    protect:\n"
        '      where: "file.path like \\"*.h5\\" or file.created < 2026-02-30"\n',
        ["double-quoted.yaml:5:57: error: 2026-02-30 is not a valid date and time"],
    ),
    (
        "reserved-word-in-expression",
        'version: 1\nrules:\n  - name: a\n    protect: {where: "file.meta.kind in [sample]"}\n',
        [
            "reserved-word-in-expression.yaml:4:42: error: 'sample' is a reserved word "
            "and cannot be an attribute"
        ],
    ),
    (
        "folded-block",
        "version: 1\nrules:\n  - name: a\n    protect:\n      where: >\n"
        '        file.size > 1 and\n        file.ext = "h5"\n',
        [
            "folded-block.yaml:7:18: error: unexpected '='; expected one of: an operator, end of file"
        ],
    ),
    (
        "multi-line-plain",
        "version: 1\nrules:\n  - name: a\n    protect:\n      where: file.size > 1 and\n"
        '        file.ext = "h5"\n',
        [
            "multi-line-plain.yaml:6:18: error: unexpected '='; "
            "expected one of: an operator, end of file"
        ],
    ),
    # literals
    (
        "bad-duration",
        "version: 1\nrules:\n  - name: f\n    verify: {on: tape, every: 365 dayz}\n",
        ["bad-duration.yaml:4:35: error: unknown unit 'dayz'; did you mean 'day'?"],
    ),
    (
        "duration-without-unit",
        "version: 1\nrules:\n  - name: f\n    verify: {on: tape, every: 365, sample: 2}\n",
        [
            "duration-without-unit.yaml:4:31: error: 'every' expects a duration such as "
            "'7 days', got 365",
            "duration-without-unit.yaml:4:44: error: 'sample' expects a percentage such as "
            "'80%', got 2",
        ],
    ),
    (
        "bad-severity",
        "version: 1\nrules:\n  - name: q\n    alarm:\n      - {when: 'true', severity: warn}\n",
        [
            "bad-severity.yaml:5:34: error: 'severity' is one of info, warning, critical, "
            "not 'warn'; did you mean 'warning'?"
        ],
    ),
    (
        "bad-principal",
        "version: 1\nrules:\n  - name: a\n    grant: [{perms: [read], principals: [experiment.user]}]\n",
        [
            "bad-principal.yaml:4:42: error: a principal is one of experiment.users, user:NAME, "
            "group:NAME, not 'experiment.user'; did you mean 'experiment.users'?"
        ],
    ),
    (
        "two-verbs",
        "version: 1\nrules:\n  - name: a\n    place: {where: 'true', on: voyager}\n"
        "    replicate: {where: 'true', copies: 2}\n",
        ["two-verbs.yaml:5:5: error: a rule has one verb; 'replicate' follows 'place'"],
    ),
    (
        "version-missing",
        "station: 8IDI\nrules: []\n",
        ["version-missing.yaml:1:1: error: missing required top-level key 'version'"],
    ),
    (
        "version-2",
        "version: 2\nrules: []\n",
        ["version-2.yaml:1:10: error: 'version' must be 1, got 2"],
    ),
    (
        "yaml-syntax",
        "version: 1\nrules:\n  - name: a\n    protect: {where: 'true'\n",
        ["yaml-syntax.yaml:4:14: error: invalid YAML: expected ',' or '}', but got '<stream end>'"],
    ),
    (
        "not-a-mapping",
        "- a\n- b\n",
        [
            "not-a-mapping.yaml:1:1: error: a rule file is a mapping with version, station "
            "and rules, got a list"
        ],
    ),
    # `on` is the text "on" (YAML 1.2), so it is a key archive does not know...
    (
        "on-in-archive",
        "version: 1\nrules:\n  - name: a\n    archive: {where: 'true', on: tape}\n",
        ["on-in-archive.yaml:4:30: error: unknown key 'on' in 'archive'"],
    ),
    # ...unless the file asks for YAML 1.1, where it is the boolean true
    (
        "yaml-1-1",
        "%YAML 1.1\n---\nversion: 1\nrules:\n  - name: a\n    place: {where: 'true', on: v}\n",
        ["yaml-1-1.yaml:6:28: error: unknown key 'true' in 'place'"],
    ),
]


@pytest.mark.parametrize(("name", "text", "expected"), BAD, ids=[case[0] for case in BAD])
def test_bad_yaml(name: str, text: str, expected: list[str]) -> None:
    tree, diagnostics = parse_yaml_rules(text, f"{name}.yaml")
    assert tree is None
    assert [d.render().splitlines()[0] for d in diagnostics] == expected


def test_hints() -> None:
    """The hints name what would be right; the YAML 1.1 one says why `on` broke."""
    _, diagnostics = parse_yaml_rules(BAD[0][1], "x.yaml")
    assert diagnostics[0].hint == "place takes: where, on, at"
    _, diagnostics = parse_yaml_rules(BAD[-1][1], "x.yaml")
    assert diagnostics[0].hint is not None and "%YAML 1.1" in diagnostics[0].hint


def test_enough_bad_cases() -> None:
    assert len(BAD) >= 12


# ---- fuzzing: mutations of the section 6 example

_TOKEN = re.compile(
    r"'(?:[^'\n]|'')*'|\"(?:[^\"\\\n]|\\.)*\"|[A-Za-z0-9_][A-Za-z0-9_\-]*|\s+|.", re.DOTALL
)
TOKENS = _TOKEN.findall(SECTION_6)
YAML_ODD = [*ODD, ":", "- ", "{", "}", "&a ", "*a", "!!str ", "|\n", ">-\n", "? ", "---\n", "  "]


@FUZZ
@given(mutated(TOKENS, YAML_ODD))
def test_mutated_yaml_rule_files(text: str) -> None:
    assert_answer(parse_yaml_rules(text, "fuzz.yaml"))


@FUZZ
@given(st.text(max_size=80))
def test_random_yaml_text(text: str) -> None:
    assert_answer(parse_yaml_rules(text, "fuzz.yaml"))
