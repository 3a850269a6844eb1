"""Compact text forms of AST nodes, so that tests state the expected shape in one line."""

from __future__ import annotations

import json

from policyd.grammar import ast


def sexpr(node: ast.Expr) -> str:
    """An S-expression without spans: `(or (like file.path "*.h5") (== station "8IDI"))`."""
    match node:
        case ast.Literal(kind="text", value=value):
            return json.dumps(value)
        case ast.Literal(kind="list", value=items):
            return "[" + ", ".join(sexpr(item) for item in items) + "]"  # type: ignore[attr-defined]
        case ast.Literal(kind="bool", value=value):
            return "true" if value else "false"
        case ast.Literal(kind="null"):
            return "null"
        case ast.Literal(kind="number", value=value):
            return repr(value)
        case ast.Literal(kind=kind, value=value):
            return f"{kind}:{value!r}"
        case ast.Attribute(path=path):
            return ".".join(path)
        case ast.Index(target=target, key=key):
            return f"{sexpr(target)}[{json.dumps(key)}]"
        case ast.Call(name=name, args=args, kwargs=kwargs):
            parts = [sexpr(a) for a in args] + [f"{k.name}={sexpr(k.value)}" for k in kwargs]
            return f"({name}(){''.join(' ' + p for p in parts)})"
        case ast.Unary(operand=operand):
            return f"(neg {sexpr(operand)})"
        case ast.Binary(op=op, left=left, right=right) | ast.Compare(op=op, left=left, right=right):
            return f"({op} {sexpr(left)} {sexpr(right)})"
        case ast.Like(operand=operand, pattern=pattern):
            return f"(like {sexpr(operand)} {json.dumps(pattern)})"
        case ast.Matches(operand=operand, pattern=pattern):
            return f"(matches {sexpr(operand)} {json.dumps(pattern)})"
        case ast.In(item=item, container=container):
            return f"(in {sexpr(item)} {sexpr(container)})"
        case ast.IsNull(operand=operand, negated=negated):
            return f"({'is-not-null' if negated else 'is-null'} {sexpr(operand)})"
        case ast.And(left=left, right=right):
            return f"(and {sexpr(left)} {sexpr(right)})"
        case ast.Or(left=left, right=right):
            return f"(or {sexpr(left)} {sexpr(right)})"
        case ast.Not(operand=operand):
            return f"(not {sexpr(operand)})"
    raise TypeError(f"not an expression: {node!r}")


def names(items: tuple[ast.Name, ...]) -> list[str]:
    return [item.value for item in items]
