"""Shared helpers: parse an expression and type-check it in one call."""

from __future__ import annotations

from policyd.diagnostics import Diagnostic
from policyd.grammar import ast
from policyd.grammar.dsl import parse_expression
from policyd.rules.typecheck import Context, check_expression
from policyd.rules.types import Type


def parse(text: str) -> ast.Expr:
    expr, problems = parse_expression(text, "t.policy")
    assert expr is not None, problems
    return expr


def check(text: str, context: Context) -> tuple[Type, list[Diagnostic]]:
    return check_expression(parse(text), context)
