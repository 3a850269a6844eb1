"""Whatever the expression, the checker answers with a type and diagnostics, never a traceback.

The expressions are generated as trees, well-formed in shape but free in content:
unknown names, wrong argument counts, every pairing of types, odd patterns. The same
trees, printed by `expression_text`, must parse back to themselves, because messages
quote them and a reader should be able to paste the quote back into a rule.
"""

from __future__ import annotations

from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyd.diagnostics import Span
from policyd.grammar import ast
from policyd.grammar.dsl import parse_expression
from policyd.rules.typecheck import (
    FILE_VALUE,
    FILE_WHERE,
    GRANT_WHILE,
    LOCATIONS_WHERE,
    TEMPLATE,
    WHEN,
    check_expression,
    check_template,
    constant_value,
    expression_text,
)
from policyd.rules.types import Type
from tests.grammar.helpers import sexpr

CODES = {
    "unknown-attribute",
    "unknown-function",
    "wrong-arguments",
    "type-mismatch",
    "duration-needs-unit",
    "not-a-condition",
    "bad-pattern",
    "attribute-not-here",
    "bad-template",
    "expression-too-deep",
}
SPAN = Span("fuzz.policy", 1, 1, 1, 2)

PATHS = [
    ("file", "path"),
    ("file", "size"),
    ("file", "szie"),
    ("file", "created"),
    ("file", "meta"),
    ("file", "meta", "sample"),
    ("file", "meta", "a", "b"),
    ("experiment", "end"),
    ("experiment", "users"),
    ("experiment", "active"),
    ("experiment", "meta", "doi"),
    ("station",),
    ("now",),
    ("location", "tier"),
    ("location", "x"),
    ("bogus",),
]
# Text without newlines (a DSL string cannot hold one), with quotes and backslashes.
TEXT = st.text(alphabet=st.sampled_from('ab*?/.\\"()[]{}^$+|:%é 1'), max_size=8)

literals = st.one_of(
    st.builds(lambda v: ast.Literal("text", v, SPAN), TEXT),
    st.builds(lambda v: ast.Literal("number", v, SPAN), st.integers(-(10**6), 10**6)),
    st.builds(
        lambda v: ast.Literal("number", float(Decimal(v) / 100), SPAN),
        st.integers(0, 10**5).filter(lambda v: v % 100 != 0),
    ),
    st.builds(lambda v: ast.Literal("size", v, SPAN), st.integers(0, 10**16)),
    st.builds(lambda v: ast.Literal("duration", float(v), SPAN), st.integers(0, 10**9)),
    st.builds(
        lambda v: ast.Literal("percent", float(Decimal(v) / 100), SPAN), st.integers(0, 10**4)
    ),
    st.builds(
        lambda v: ast.Literal("time", v, SPAN),
        st.sampled_from(["2026-01-31", "2026-01-31T12:00:00Z", "2025-12-01T00:00"]),
    ),
    st.builds(lambda v: ast.Literal("bool", v, SPAN), st.booleans()),
    st.just(ast.Literal("null", None, SPAN)),
)
attributes = st.builds(lambda p: ast.Attribute(p, SPAN), st.sampled_from(PATHS))
indexes = st.builds(
    lambda p, k: ast.Index(ast.Attribute(p, SPAN), k, SPAN),
    st.sampled_from([("file", "meta"), ("experiment", "meta"), ("file", "path")]),
    TEXT,
)
leaves = st.one_of(literals, attributes, indexes)
FUNCTION_NAMES = ["age", "copies", "usage", "used", "free", "path_on", "time_to_full", "agee"]
KEYWORDS = ["station", "tier", "location", "where_"]


def _not_a_number_literal(node: ast.Expr) -> bool:
    # `-3` is folded into the literal by the parser, so Unary never holds a number literal
    return not (isinstance(node, ast.Literal) and node.kind == "number")


def extend(children: st.SearchStrategy[ast.Expr]) -> st.SearchStrategy[ast.Expr]:
    two = st.tuples(children, children)
    return st.one_of(
        st.builds(lambda c: ast.Unary("-", c, SPAN), children.filter(_not_a_number_literal)),
        st.builds(lambda op, c: ast.Binary(op, c[0], c[1], SPAN), st.sampled_from(["+", "-"]), two),
        st.builds(
            lambda op, c: ast.Compare(op, c[0], c[1], SPAN),
            st.sampled_from(["==", "!=", "<", "<=", ">", ">="]),
            two,
        ),
        st.builds(lambda c, p: ast.Like(c, p, SPAN), children, TEXT),
        st.builds(lambda c, p: ast.Matches(c, p, SPAN), children, TEXT),
        st.builds(lambda c: ast.In(c[0], c[1], SPAN), two),
        st.builds(lambda c, n: ast.IsNull(c, n, SPAN), children, st.booleans()),
        st.builds(lambda c: ast.And(c[0], c[1], SPAN), two),
        st.builds(lambda c: ast.Or(c[0], c[1], SPAN), two),
        st.builds(lambda c: ast.Not(c, SPAN), children),
        st.builds(
            lambda items: ast.Literal("list", tuple(items), SPAN),
            st.lists(children, max_size=3),
        ),
        st.builds(
            lambda name, args, kwargs: ast.Call(
                name,
                tuple(args),
                tuple(ast.KeywordArgument(k, v, SPAN) for k, v in kwargs.items()),
                SPAN,
            ),
            st.sampled_from(FUNCTION_NAMES),
            st.lists(children, max_size=2),
            st.dictionaries(st.sampled_from(KEYWORDS), children, max_size=2),
        ),
    )


expressions = st.recursive(leaves, extend, max_leaves=12)
CONTEXTS = [FILE_WHERE, FILE_VALUE, WHEN, GRANT_WHILE, LOCATIONS_WHERE, TEMPLATE]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions)
def test_checking_never_raises(expr: ast.Expr) -> None:
    for context in CONTEXTS:
        result, diagnostics = check_expression(expr, context)
        assert isinstance(result, Type)
        for diagnostic in diagnostics:
            assert diagnostic.code in CODES
            assert diagnostic.span is not None
            assert diagnostic.message
    assert constant_value(expr) in (True, False, None)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions)
def test_expression_text_parses_back(expr: ast.Expr) -> None:
    text = expression_text(expr)
    parsed, problems = parse_expression(text, "back.policy")
    assert parsed is not None, (text, problems)
    assert sexpr(parsed) == sexpr(expr), text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from('{}:%/.abfiletxpmnsY\\"[] \x00'), max_size=30))
def test_template_checking_never_raises(template: str) -> None:
    for diagnostic in check_template(template, SPAN):
        assert diagnostic.code in CODES
        assert diagnostic.span is not None
