"""Path templates: known attributes, strftime only on times, paths that stay relative."""

from __future__ import annotations

import pytest

from policyd.diagnostics import Span
from policyd.rules.typecheck import GRANT_WHILE, check_template

SPAN = Span("r.policy", 4, 6, 4, 80)


@pytest.mark.parametrize(
    "template",
    [
        "{station}/{experiment.start:%Y-%m}/{experiment.name}/{file.path}",
        "{station}/{experiment.name}/{file.path}",
        "raw/{experiment.start:%Y/%m/%d}/{file.name}",
        '{experiment.meta["proposal id"]}/{file.meta.sample}/{file.name}',
        "{experiment.meta.date:%Y}/{file.path}",
        "{{literal}}/{file.path}",
        "a..b/{file.path}",
        "100%/{experiment.start:%%Y}/{file.path}",
    ],
)
def test_valid_templates(template: str) -> None:
    assert check_template(template, SPAN) == []


# (template, code, message, hint)
INVALID = [
    (
        "/gdata/{file.path}",
        "bad-template",
        'a template must render a relative path, not one starting with /: "/gdata/{file.path}"',
        "remove the leading /: the path is inside the location's root",
    ),
    (
        "{station}/../{file.path}",
        "bad-template",
        'a template cannot hold a .. segment: "{station}/../{file.path}"',
        "paths never leave the location's root",
    ),
    (
        "{experiment.start:..}/{file.path}",
        "bad-template",
        'a template cannot hold a .. segment: "{experiment.start:..}/{file.path}"',
        "paths never leave the location's root",
    ),
    (
        "{station}//{file.path}",
        "bad-template",
        'a template cannot hold an empty segment (// or a trailing /): "{station}//{file.path}"',
        None,
    ),
    ("", "bad-template", "a template cannot be empty", None),
    (
        "{file.szie}",
        "unknown-attribute",
        "unknown attribute file.szie",
        "did you mean file.size?",
    ),
    (
        "{file.size}",
        "type-mismatch",
        "cannot put size in a path: {file.size}",
        "use text, number or time attributes",
    ),
    (
        "{experiment.users}/{file.path}",
        "type-mismatch",
        "cannot put list of text in a path: {experiment.users}",
        "use text, number or time attributes",
    ),
    (
        "{file.name:%Y}",
        "type-mismatch",
        "a format applies to times only, and file.name is text: {file.name:%Y}",
        "write {file.name}",
    ),
    (
        "{experiment.start:%Q}/{file.path}",
        "bad-template",
        "%Q is not a strftime directive policyd renders: {experiment.start:%Q}",
        "use %Y %m %d %H %M %S %j %b %a (and %% for a %)",
    ),
    (
        "{experiment.start:}/{file.path}",
        "bad-template",
        "an empty format in {experiment.start:}",
        "write {experiment.start}",
    ),
    (
        "{file.path",
        "bad-template",
        'a { that is never closed in template "{file.path"',
        "close it with }, or write {{ for a literal brace",
    ),
    (
        "a}/{file.path}",
        "bad-template",
        'a } without a { in template "a}/{file.path}"',
        "write }} for a literal brace",
    ),
    (
        "{file.size > 1}",
        "bad-template",
        "a placeholder holds one attribute, not {file.size > 1}",
        "write {ATTRIBUTE} or {ATTRIBUTE:FORMAT}, e.g. {experiment.start:%Y-%m}",
    ),
    (
        "{ file.path }",
        "bad-template",
        "a placeholder cannot hold spaces around its attribute: { file.path }",
        "write {file.path}",
    ),
    (
        "{location.name}/{file.path}",
        "attribute-not-here",
        "location.name is only known inside `locations where`",
        "use location.* in `on locations where E`",
    ),
]


@pytest.mark.parametrize(("template", "code", "message", "hint"), INVALID)
def test_invalid_templates(template: str, code: str, message: str, hint: str | None) -> None:
    diagnostics = check_template(template, SPAN)
    assert [(d.code, d.message, d.hint) for d in diagnostics] == [(code, message, hint)]


def test_placeholder_columns_point_into_the_template() -> None:
    # at "{station}/{file.szie}" with the opening quote at column 6
    [unknown] = check_template("{station}/{file.szie}", SPAN)
    assert unknown.span == Span("r.policy", 4, 18, 4, 27)
    [wrong] = check_template("{station}/{file.size}", SPAN)
    assert wrong.span == Span("r.policy", 4, 17, 4, 28)


def test_placeholder_span_without_quote_offset() -> None:
    [unknown] = check_template("{file.szie}", Span("r.yaml", 2, 9, 2, 20), text_offset=0)
    assert (unknown.span.line, unknown.span.col) == (2, 10)


def test_context_decides_the_attributes() -> None:
    [diagnostic] = check_template("{file.path}", SPAN, GRANT_WHILE)
    assert diagnostic.code == "attribute-not-here"
