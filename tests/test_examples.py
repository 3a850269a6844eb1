"""The example config repository (examples/aps) stays valid.

Until `policyd check` exists, this test does its work by hand: the site config and its
station files load, every rule file parses with no diagnostic, every expression
type-checks in the context of its clause, every template is valid, every name a rule
uses (location, channel, workflow) is defined, every workflow loads, and the variables
of each workflow are defined given the `with` keys of the rules that run it. It also
keeps the promise of examples/aps/README.md: every verb and every clause is used, in
both forms. When `policyd check` arrives, `policyd check examples/aps` can replace most
of this.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from policyd.diagnostics import Diagnostic
from policyd.grammar import ast
from policyd.grammar.dsl import parse_policy
from policyd.grammar.yaml_rules import parse_yaml_rules
from policyd.rules.typecheck import (
    check_expression,
    check_template,
    statement_expressions,
)
from policyd.rules.workflows import check_variables, load_workflow_file
from policyd.rules.yaml_schema import VERBS
from policyd.stations.config import SiteConfig, load_site_config

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "aps"
RULE_FILES = sorted((EXAMPLE / "rules").glob("*.policy")) + sorted(
    (EXAMPLE / "rules").glob("*.yaml")
)
WORKFLOW_FILES = sorted((EXAMPLE / "workflows").glob("*.yaml"))


def _shown(diagnostics: list[Diagnostic]) -> list[str]:
    return [f"{d.span}: {d.code}: {d.message}" for d in diagnostics]


def _parse(path: Path) -> ast.File:
    text = path.read_text(encoding="utf-8")
    parse = parse_policy if path.suffix == ".policy" else parse_yaml_rules
    tree, diagnostics = parse(text, str(path))
    assert diagnostics == [], _shown(diagnostics)
    assert tree is not None
    return tree


@pytest.fixture(scope="module")
def config() -> SiteConfig:
    return load_site_config(EXAMPLE / "policyd.yaml")


@pytest.fixture(scope="module")
def files() -> dict[Path, ast.File]:
    return {path: _parse(path) for path in RULE_FILES}


def _names(statement: ast.Statement) -> Iterator[tuple[str, str]]:
    """(kind, name) of every location, channel and workflow a statement names."""
    match statement:
        case ast.Place():
            if statement.on is not None:
                yield "location", statement.on.value
        case ast.Replicate():
            if isinstance(statement.on, ast.LocationNames):
                yield from (("location", n.value) for n in statement.on.names)
        case ast.Archive():
            if statement.to is not None:
                yield "location", statement.to.value
            yield from (("location", n.value) for n in statement.release_from)
        case ast.Release():
            yield from (("location", n.value) for n in statement.from_)
        case ast.Alarm():
            yield from (("channel", n.value) for n in statement.notify)
        case ast.Grant():
            if statement.at is not None:
                yield "location", statement.at.value
        case ast.Run():
            yield "workflow", statement.workflow.value
        case ast.Verify():
            if statement.on is not None:
                yield "location", statement.on.value
    notify = getattr(statement, "notify", None)
    if isinstance(notify, ast.NotifyBefore):
        yield "channel", notify.channel.value


def _statements(files: dict[Path, ast.File]) -> Iterator[tuple[Path, ast.Statement]]:
    for path, tree in files.items():
        for rule in tree.rules:
            for statement in rule.statements:
                yield path, statement


def test_site_config_loads_without_warnings(config: SiteConfig) -> None:
    assert config.site == "aps"
    assert str(config.timezone) == "America/Chicago"
    assert set(config.stations) == {"8IDI", "1ID", "6BM"}
    assert config.warnings == []
    assert sorted(p.name for p in config.rule_files()) == sorted(p.name for p in RULE_FILES)
    assert sorted(p.name for p in config.workflow_files()) == [p.name for p in WORKFLOW_FILES]


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_rule_file_parses(path: Path) -> None:
    _parse(path)


def test_every_expression_type_checks(files: dict[Path, ast.File]) -> None:
    problems: list[Diagnostic] = []
    for _, statement in _statements(files):
        for expr, context in statement_expressions(statement):
            _, diagnostics = check_expression(expr, context)
            problems += diagnostics
    assert problems == [], _shown(problems)


def test_every_template_is_valid(files: dict[Path, ast.File]) -> None:
    problems: list[Diagnostic] = []
    templates = 0
    for _path, statement in _statements(files):
        if isinstance(statement, ast.Place) and statement.at is not None:
            templates += 1
            text = str(statement.at.value)
            problems += check_template(text, statement.at.span, text_offset=1)
    assert templates >= 4
    assert problems == [], _shown(problems)


def test_every_name_is_defined(config: SiteConfig, files: dict[Path, ast.File]) -> None:
    workflow_names = set()
    for path in WORKFLOW_FILES:
        workflow, _ = load_workflow_file(path)
        assert workflow is not None
        workflow_names.add(workflow.name)
    defined = {
        "location": set(config.locations),
        "channel": set(config.notify),
        "workflow": workflow_names,
    }
    unknown = [
        (path.name, kind, name)
        for path, statement in _statements(files)
        for kind, name in _names(statement)
        if name not in defined[kind]
    ]
    assert unknown == []


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_workflow_loads(path: Path) -> None:
    workflow, diagnostics = load_workflow_file(path)
    assert diagnostics == [], _shown(diagnostics)
    assert workflow is not None


def test_workflow_variables_are_defined(files: dict[Path, ast.File]) -> None:
    workflows = {}
    for path in WORKFLOW_FILES:
        workflow, _ = load_workflow_file(path)
        assert workflow is not None
        workflows[workflow.name] = workflow
    runs = [s for _, s in _statements(files) if isinstance(s, ast.Run)]
    assert {run.workflow.value for run in runs} == set(workflows)
    problems: list[Diagnostic] = []
    for run in runs:
        keys = [argument.name for argument in run.with_]
        problems += check_variables(workflows[run.workflow.value], keys)
    assert problems == [], _shown(problems)


def test_every_verb_in_both_forms(files: dict[Path, ast.File]) -> None:
    verbs: dict[str, set[str]] = {}
    for path, statement in _statements(files):
        verbs.setdefault(type(statement).__name__.lower(), set()).add(path.suffix)
    assert set(verbs) == set(VERBS)
    assert all(forms == {".policy", ".yaml"} for forms in verbs.values()), verbs


def test_every_clause_is_used(files: dict[Path, ast.File]) -> None:
    used: set[str] = set()
    for tree in files.values():
        for rule in tree.rules:
            if rule.priority is not None:
                used.add("priority-negative" if rule.priority.value < 0 else "priority")  # type: ignore[operator]
            if rule.schedule is not None:
                used.add(f"schedule-{rule.schedule.kind}")
            if rule.disabled:
                used.add("disabled")
    for _, s in _statements(files):
        match s:
            case ast.Replicate():
                used.add("copies")
                used.add(type(s.on).__name__)
            case ast.Archive():
                used.update({"to"} | ({"then-release"} if s.release_from else set()))
            case ast.Release():
                used.add("threshold-release" if s.when is not None else "plain-release")
                if s.order_by is not None:
                    used.add("order-desc" if s.order_by.descending else "order-asc")
            case ast.Alarm():
                used.update(
                    name
                    for name, value in (
                        ("clear-when", s.clear_when),
                        ("for", s.for_),
                        ("severity", s.severity),
                    )
                    if value is not None
                )
            case ast.Grant():
                used.update(p.kind for p in s.principals)
                if s.while_ is not None:
                    used.add("while")
            case ast.Run():
                if s.with_:
                    used.add("with")
            case ast.Verify():
                used.update({"verify-sample"} if s.sample is not None else set())
                used.update({"verify-where"} if s.where is not None else set())
        if isinstance(getattr(s, "notify", None), ast.NotifyBefore):
            used.add("notify-before")
    expected = {
        "priority",
        "priority-negative",
        "schedule-duration",
        "schedule-text",
        "disabled",
        "copies",
        "LocationNames",
        "LocationTier",
        "LocationQuery",
        "to",
        "then-release",
        "threshold-release",
        "plain-release",
        "order-asc",
        "order-desc",
        "clear-when",
        "for",
        "severity",
        "experiment-users",
        "user",
        "group",
        "while",
        "with",
        "verify-sample",
        "verify-where",
        "notify-before",
    }
    assert expected - used == set()


def test_policyd_check_passes_the_examples_without_a_finding() -> None:
    from policyd.rules.check import check_site

    result = check_site([Path(__file__).parent.parent / "examples" / "aps"])
    assert result.diagnostics == []
    assert len(result.files) >= 10
