"""The DSL front end: rule text in, an AST with spans or diagnostics out, never a traceback.

Rule files are written by hand and checked in CI, so every way of getting them wrong
must end as a Diagnostic at a line and column with a message a beamline manager can
act on. Lark's exceptions are turned into diagnostics in one adapter
(`_syntax_diagnostic`); after a syntax error the file is parsed again rule by rule so
that one run reports the mistakes of every rule, not only the first.
"""

from __future__ import annotations

import datetime as dt
import difflib
import itertools
import re
import threading
from collections.abc import Callable, Iterable
from copy import copy
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from lark import Lark, Token, Transformer, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.grammar import Rule
from lark.lark import PostLex
from lark.lexer import BasicLexer, ContextualLexer, PatternStr, UnlessCallback
from lark.parse_tree_builder import ExpandSingleChild
from lark.parsers.lalr_analysis import Shift
from lark.parsers.lalr_parser_state import ParserState

from policyd.diagnostics import Diagnostic, Span, sorted_diagnostics
from policyd.grammar import ast
from policyd.units import (
    DURATION_FORMS,
    DURATION_UNITS,
    SIZE_FORMS,
    SIZE_UNITS,
    parse_duration,
    parse_percent,
    parse_size,
)

#: spec/rules.md section 2. A reserved word is a name only when quoted (`on "tier"`).
# fmt: off
RESERVED_WORDS = frozenset({
    "rule", "station", "priority", "schedule", "every", "disabled", "files", "where", "on",
    "at", "to", "from", "then", "release", "copies", "tier", "locations", "when", "until",
    "clear", "order", "by", "asc", "desc", "notify", "before", "severity", "for", "grant",
    "revoke", "while", "run", "workflow", "with", "verify", "sample", "place", "replicate",
    "archive", "expire", "protect", "alarm", "directory", "experiment", "user", "group",
    "read", "write", "and", "or", "not", "in", "like", "matches", "is", "null", "true",
    "false", "now",
})

VERBS = frozenset({
    "place", "replicate", "archive", "release", "expire", "protect", "alarm", "grant", "run",
    "verify",
})
# fmt: on

_GRAMMAR_FILE = Path(__file__).with_name("policy.lark")

# A line whose first word is `rule` starts a rule: the unit of recovery after an error.
_RULE_LINE = re.compile(r"^[ \t]*(rule)(?![A-Za-z0-9_\-])", re.MULTILINE)

_ESCAPE = re.compile(r'\\(["\\])')


class _AlwaysAcceptWord(PostLex):
    """Puts WORD into every state's lexer (see the comments in policy.lark)."""

    always_accept = ("WORD",)

    def process(self, stream: Iterable[Token]) -> Iterable[Token]:
        return stream


def _alternation(units: Iterable[str]) -> str:
    """Longest first, so that the regex alternation prefers `days` to `d`."""
    return "|".join(sorted((re.escape(u) for u in units), key=len, reverse=True))


class _Inline(Transformer[Token, Any]):
    """Builds the AST while parsing, with no parse tree in between.

    A 2,000-rule file is about 50,000 tokens; building lark's tree with positions and
    then walking it took twice as long as building AST nodes in the parser's own
    reductions. Lark binds this transformer when the parser is built, so the builder
    for the current text is installed per parse, under a lock. Spans are computed by
    the builder from the first and last token of each reduction (keep_all_tokens keeps
    the keywords for that), which is what propagate_positions would do.
    """

    def __init__(self) -> None:
        super().__init__()
        self.builder: _Builder | None = None

    def __default__(self, data: str, children: list[Any], meta: object) -> Any:
        if data.startswith("_"):  # lark's helper rules for `+` and `*`: lark inlines them
            return Tree(data, children)
        assert self.builder is not None
        return self.builder.dispatch(data, children)


_INLINE = _Inline()
_PARSE_LOCK = threading.Lock()


@cache
def _parser() -> Lark:
    """Built once per process: building the LALR tables costs far more than a parse."""
    text = (
        _GRAMMAR_FILE.read_text(encoding="utf-8")
        .replace("__SIZE_UNITS__", _alternation(SIZE_UNITS))
        .replace("__DURATION_UNITS__", _alternation(DURATION_UNITS))
    )
    return Lark(
        text,
        parser="lalr",
        lexer="contextual",
        keep_all_tokens=True,
        maybe_placeholders=False,
        start=["start", "expression"],
        postlex=_AlwaysAcceptWord(),
        transformer=_INLINE,
    )


# ---- the quick parse of text without mistakes


class _Mistake(Exception):
    """The quick parse met something it does not read; lark parses the text again."""


class _StateLexer(NamedTuple):
    """One parser state's lexer: its terminals, in lark's order, after the ignored text."""

    match: Callable[[str, int], re.Match[str] | None]
    keywords: dict[str, dict[str, str]]  # per terminal, the keywords its text may be
    newline_types: frozenset[str]  # the terminals whose text may hold a line break


def _no_match(text: str, pos: int) -> None:
    """The match of a state's lexer that the quick parser does not run."""


class _StateLexers(dict[int, _StateLexer]):
    """Lexers by parser state, built on first use (a file uses few of lark's ~130)."""

    def __init__(self, contextual: ContextualLexer, ignored: str, re_module: Any) -> None:
        super().__init__()
        self._contextual = contextual
        self._ignored = ignored
        self._re = re_module
        self._by_lexer: dict[int, _StateLexer] = {}

    def __missing__(self, state: int) -> _StateLexer:
        lexer = self._contextual.lexers[state]
        made = self._by_lexer.get(id(lexer))
        if made is None:
            made = self._by_lexer[id(lexer)] = self._build(lexer)
        self[state] = made
        return made

    def _build(self, lexer: BasicLexer) -> _StateLexer:
        """One regex: the ignored text (spaces, comments), then one of the terminals.

        No terminal starts with a space or `#`, so lark's lexer skips exactly the text
        this regex skips before a token; after it, the first alternative that matches
        wins, as in lark. A word that is one of the state's keywords becomes that
        keyword, as lark's UnlessCallback makes it. A lexer set up otherwise (another
        kind of callback, keywords with flags, another lark) matches nothing: lark
        reads the text.
        """
        unread = _StateLexer(_no_match, {}, frozenset())
        try:
            scanner = lexer.scanner  # building it makes lexer.callback
            callbacks = lexer.callback
            if not all(
                isinstance(c, UnlessCallback)
                and not any(t.pattern.flags for t in c.scanner.terminals)
                for c in callbacks.values()
            ):
                return unread
            terminals = [t for t in scanner.terminals if t.name not in lexer.ignore_types]
            alternatives = "|".join(f"(?P<{t.name}>{t.pattern.to_regexp()})" for t in terminals)
            flags = lexer.g_regex_flags
            keywords = {
                str(name): {str(t.pattern.value): str(t.name) for t in callback.scanner.terminals}
                for name, callback in callbacks.items()
            }
            newline_types = frozenset(lexer.newline_types)
        except (AttributeError, TypeError):  # a lark whose lexers are built otherwise
            return unread
        pattern = self._re.compile(f"{self._ignored}(?:{alternatives})?", flags)
        return _StateLexer(pattern.match, keywords, newline_types)


class _Reduction(NamedTuple):
    size: int  # how many values the rule takes off the stack
    origin: str  # the rule it reduces to
    callback: Callable[[list[Any]], Any] | None  # lark's, None for a unit rule


class _QuickParser:
    """Lark's LALR tables and contextual lexer, run by one loop of our own.

    Lark spends most of a parse in its own machinery: a generator and a line counter
    per token, a separate lexer match for every run of spaces, a method call per
    shift, a callback for each of the six unit reductions (`?expr: and_expr`, ...)
    every operand climbs through. This loop reads the same tables and the same
    per-state terminals in lark's order, lexes the ignored text and the token in one
    match, and leaves a unit reduction's value where it is; it hands every other
    reduction to lark's own callbacks, so the AST is built by the same code. It reads
    only text without a syntax error: at the first token or character that does not
    fit it raises _Mistake, and lark parses the text again for its exception, so
    every message is lark's. Built only when lark's objects are what it expects.
    """

    def __init__(self, lark: Lark) -> None:
        frontend = lark.parser
        contextual = frontend.lexer.lexer  # behind the post-lexer, which changes nothing
        parser = frontend.parser.parser
        table = parser.parse_table
        self._start_states = table.start_states
        self._end_states = table.end_states
        ignored = "|".join(lark.get_terminal(n).pattern.to_regexp() for n in lark.lexer_conf.ignore)
        self._lexers = _StateLexers(contextual, f"(?:{ignored})*", lark.lexer_conf.re_module)
        # Lark's table with each reduction's rule replaced by what the loop needs: how
        # many values it takes, what it reduces to, and lark's callback, None for a
        # unit rule whose value is its only child's; and symbols as plain text. (Lark's
        # Rule and Token compare with Python code, which slows every lookup.)
        reductions: dict[Rule, _Reduction] = {}
        for rule, callback in parser.callbacks.items():
            size = len(rule.expansion)
            unit = isinstance(callback, ExpandSingleChild) and size == 1
            reductions[rule] = _Reduction(size, str(rule.origin.name), None if unit else callback)
        self._actions: dict[int, dict[str, tuple[bool, Any]]] = {
            state: {
                str(symbol): (True, arg) if action is Shift else (False, reductions[arg])
                for symbol, (action, arg) in actions.items()
            }
            for state, actions in table.states.items()
        }

    @staticmethod
    def fits(lark: Lark) -> bool:
        """Whether lark is set up as this loop assumes: a contextual lexer, and
        callbacks for rules only (none for tokens). Each state's lexer is checked when
        it is first used (_StateLexers)."""
        contextual = lark.parser.lexer.lexer
        if not isinstance(contextual, ContextualLexer) or lark.lexer_conf.callbacks:
            return False
        return all(isinstance(key, Rule) for key in lark.parser.parser.parser.callbacks)

    def parse(self, text: str, start: str) -> Any:
        """What lark's `parse(text, start=start)` returns, or _Mistake."""
        actions = self._actions
        lexers = self._lexers
        end_state = self._end_states[start]
        state = self._start_states[start]
        state_stack = [state]
        value_stack: list[Any] = []
        size_of_text = len(text)
        pos = 0
        line = 1
        line_start = 0  # the offset where `line` starts
        token: Token | None
        while True:
            lexer = lexers[state]
            found = lexer.match(text, pos)
            kind = found.lastgroup if found is not None else None
            if kind is not None:
                begin = found.start(kind)  # type: ignore[union-attr]
                end = found.end()  # type: ignore[union-attr]
                if begin != pos:
                    skipped = text.count("\n", pos, begin)
                    if skipped:
                        line += skipped
                        line_start = text.rfind("\n", pos, begin) + 1
                value = text[begin:end]
                keywords = lexer.keywords.get(kind)
                if keywords is not None:
                    kind = keywords.get(value, kind)
                column = begin - line_start + 1
                token_line = line
                if kind in lexer.newline_types and "\n" in value:
                    line += value.count("\n")
                    line_start = begin + value.rindex("\n") + 1
                end_column = end - line_start + 1
                token = Token(kind, value, begin, token_line, column, line, end_column, end)
                pos = end
            elif found is not None and found.end() == size_of_text:
                kind = "$END"
                token = None
            else:
                raise _Mistake
            while True:
                action = actions[state].get(kind)
                if action is None:
                    raise _Mistake
                shift, target = action
                if shift:
                    if token is None:
                        raise _Mistake
                    state = target
                    state_stack.append(state)
                    value_stack.append(token)
                    break
                size, origin, callback = target
                if callback is None:
                    del state_stack[-1]
                else:
                    if size:
                        children = value_stack[-size:]
                        del state_stack[-size:]
                        del value_stack[-size:]
                    else:
                        children = []
                    value_stack.append(callback(children))
                state = actions[state_stack[-1]][origin][1]
                state_stack.append(state)
                if token is None and state == end_state:
                    return value_stack[-1]


@cache
def _quick_parser() -> _QuickParser | None:
    """The quick parser over _parser()'s tables, or None where lark is not as it expects.

    It reads lark's internals (those of lark 1.3); a lark whose objects differ gets
    no quick parser rather than a failing one, and every parse is lark's own.
    """
    parser = _parser()
    try:
        return _QuickParser(parser) if _QuickParser.fits(parser) else None
    except (AttributeError, KeyError, TypeError):
        return None


# ---- spans


@dataclass(frozen=True)
class _Origin:
    """Where the parsed text sits in its file: a chunk of a file, or a YAML value.

    `next_rule` is set when the text is one rule of a larger file: the parser's "end
    of input" is then really the `rule` keyword of the next rule, at that span.
    """

    file: str
    line_offset: int = 0
    col_offset: int = 0
    next_rule: Span | None = None

    def span(self, line: int, col: int, end_line: int, end_col: int) -> Span:
        return Span(
            self.file,
            line + self.line_offset,
            col + (self.col_offset if line == 1 else 0),
            end_line + self.line_offset,
            end_col + (self.col_offset if end_line == 1 else 0),
        )

    def of_token(self, token: Token) -> Span:
        return self.span(
            token.line or 0, token.column or 0, token.end_line or 0, token.end_column or 0
        )


# ---- from the parser's reductions to the AST


@dataclass(frozen=True)
class _Clause:
    key: str
    value: Any
    span: Span


@dataclass(frozen=True)
class _Body:
    statements: tuple[ast.Statement, ...]
    options: tuple[_Clause, ...]
    span: Span


_RULE_OPTIONS = ("schedule", "disabled")

#: How deep expressions may nest; far beyond what a person writes.
MAX_DEPTH = 100

NodeT = TypeVar("NodeT")

# Terminals whose text is a value; every other token is a keyword or punctuation.
_VALUE_TERMINALS = frozenset(
    {"NAME", "IDENT", "STRING", "NUMBER", "TIME", "SIZE_UNIT", "DURATION_UNIT", "COMPARE"}
)
# The `!` rules of the grammar: the keyword written is the value (`desc`, `read`, ...).
_KEYWORD_RULES = frozenset(
    {"direction", "severity_level", "perm", "attribute_head", "function_name", "keyword_name"}
)
# The token type a keyword gets once it is a value, so that it is not dropped as syntax.
_KEYWORD_VALUE = "KEYWORD_VALUE"
_KEPT_TERMINALS = _VALUE_TERMINALS | {_KEYWORD_VALUE}


def _keyword_rule(token: Token) -> Token:
    """The value of a `!` rule (_KEYWORD_RULES): the keyword written, kept as a value."""
    return token if token.type in _VALUE_TERMINALS else token.update(_KEYWORD_VALUE)


# The builder method of each rule name, as lark passes the name (see _Builder.dispatch);
# _keyword_rule for the keyword rules.
_METHODS: dict[str, Callable[..., Any]] = {}


def _unquote(token: Token) -> str:
    return _ESCAPE.sub(r"\1", token.value[1:-1])


def _clause(key: str) -> Any:
    """A builder method for a clause whose value is its only child, already built."""

    def method(self: _Builder, span: Span, children: list[Any]) -> _Clause:
        return _Clause(key, children[0], span)

    return method


class _Builder:
    """Makes AST nodes from the parser's reductions, reporting what the grammar cannot see.

    The grammar lets clauses come in any order, so a clause given twice, a reserved
    word used as a bare name and malformed numbers or dates are found here. Each
    reduction goes to the method named after its rule (or alias), with its span.
    """

    def __init__(self, origin: _Origin, diagnostics: list[Diagnostic]) -> None:
        self._origin = origin
        self._diagnostics = diagnostics
        # Nesting depth of the expression nodes built so far, by id (the nodes live on
        # in their parents for as long as the parse runs, so ids are not reused).
        self._depths: dict[int, int] = {}

    def dispatch(self, rule: str, children: list[Any]) -> Any:
        """The AST value of one reduction of `rule`, given its children (keywords included).

        The span runs from the first child to the last, keywords included, so that a
        statement's span starts at its verb. Keywords and punctuation are then dropped,
        except where the rule is about which keyword was written (`asc`, `read`, ...).
        This runs for most tokens of a file, so the span is made in one step and the
        method is looked up once per rule name (lark's names are Tokens, whose
        comparisons are Python code: `getattr` with one is slow).
        """
        method = _METHODS.get(rule)
        if method is None:
            name = str(rule)
            method = _keyword_rule if name in _KEYWORD_RULES else getattr(_Builder, name)
            _METHODS[rule] = method
        if method is _keyword_rule:
            return _keyword_rule(children[0])
        origin = self._origin
        if not children:
            span = origin.span(1, 1, 1, 1)
        else:
            first, last = children[0], children[-1]
            if isinstance(first, Token):
                line = (first.line or 0) + origin.line_offset
                col = (first.column or 0) + (origin.col_offset if first.line == 1 else 0)
            else:
                line, col = first.span.line, first.span.col
            if isinstance(last, Token):
                end_line = (last.end_line or 0) + origin.line_offset
                end_col = (last.end_column or 0) + (origin.col_offset if last.end_line == 1 else 0)
            else:
                end_line, end_col = last.span.end_line, last.span.end_col
            span = Span(origin.file, line, col, end_line, end_col)
        kept = [c for c in children if not isinstance(c, Token) or c.type in _KEPT_TERMINALS]
        return method(self, span, kept)

    def _nested(self, node: NodeT, children: Iterable[Any]) -> NodeT:
        """`node`, after checking that expressions do not nest deeper than MAX_DEPTH.

        Every later pass (type checking, the three compilers) walks expressions
        recursively, so a machine-generated `not not not ...` or a chain of thousands
        of `or` must stop here, with a diagnostic, rather than crash one of them.
        """
        depth = 1 + max((self._depths.get(id(c), 1) for c in children), default=1)
        self._depths[id(node)] = depth
        if depth == MAX_DEPTH + 1:
            self._error(
                "too-deep",
                f"the expression nests more than {MAX_DEPTH} levels deep",
                node.span,
                hint="split the rule, or test many values at once with `in [...]`",
            )
        return node

    def _error(self, code: str, message: str, span: Span, hint: str | None = None) -> None:
        self._diagnostics.append(Diagnostic(code, message, span, hint=hint))

    def _check_reserved(self, token: Token, what: str) -> None:
        if token.value in RESERVED_WORDS:
            self._error(
                "reserved-word",
                f"'{token.value}' is a reserved word and cannot be {what}",
                self._origin.of_token(token),
                hint=f'quote it to use it as a name: "{token.value}"' if what == "a name" else None,
            )

    def _unique(self, what: str, clauses: Iterable[_Clause]) -> dict[str, Any]:
        """Clause values by key; a clause given twice is reported and its repeat dropped."""
        seen: dict[str, _Clause] = {}
        for clause in clauses:
            first = seen.get(clause.key)
            if first is None:
                seen[clause.key] = clause
                continue
            self._error(
                "duplicate-clause",
                f"'{clause.key}' is given twice in this {what}",
                clause.span,
                hint=f"a clause may appear once; the first '{clause.key}' is at line "
                f"{first.span.line}, column {first.span.col}",
            )
        return {key: clause.value for key, clause in seen.items()}

    def _clauses(self, verb: str, items: Iterable[Any]) -> tuple[dict[str, Any], list[_Clause]]:
        """A statement's clause values by key, and the rule options found among them."""
        clauses = [item for item in items if isinstance(item, _Clause)]
        options = [c for c in clauses if c.key in _RULE_OPTIONS]
        own = [c for c in clauses if c.key not in _RULE_OPTIONS]
        return self._unique(f"{verb} statement", own), options

    # -- file and rules

    def start(self, span: Span, children: list[Any]) -> ast.File:
        station = next((c for c in children if isinstance(c, ast.Name)), None)
        rules = tuple(c for c in children if isinstance(c, ast.Rule))
        return ast.File(station, rules, span)

    def station_decl(self, span: Span, children: list[Any]) -> ast.Name:
        return children[0]

    def expression(self, span: Span, children: list[Any]) -> ast.Expr:
        return children[0]

    def atom(self, span: Span, children: list[Any]) -> ast.Expr:
        """`( E )`: the parentheses only group, E keeps its own span."""
        return children[0]

    def rule(self, span: Span, children: list[Any]) -> ast.Rule:
        name: ast.Name = children[0]
        priority = None
        options: list[_Clause] = []
        statements: tuple[ast.Statement, ...] = ()
        for child in children[1:]:
            if isinstance(child, _Body):
                statements = child.statements
                options.extend(child.options)
            elif isinstance(child, _Clause) and child.key == "priority":
                priority = child.value
            elif isinstance(child, _Clause):
                options.append(child)
        values = self._unique("rule", sorted(options, key=lambda c: (c.span.line, c.span.col)))
        return ast.Rule(
            name,
            priority,
            statements,
            values.get("schedule"),
            bool(values.get("disabled")),
            span,
        )

    def priority_value(self, span: Span, children: list[Token]) -> _Clause:
        return _Clause("priority", self._integer(children[-1], span, "a priority"), span)

    def priority_negative(self, span: Span, children: list[Token]) -> _Clause:
        value = self._integer(children[-1], span, "a priority")
        negative = ast.Literal("number", -value.value, value.span)  # type: ignore[operator]
        return _Clause("priority", negative, span)

    def _integer(self, token: Token, span: Span, what: str) -> ast.Literal:
        if "." in token.value:
            self._error("not-an-integer", f"{what} is a whole number, not {token.value}", span)
            return ast.Literal("number", int(float(token.value)), span)
        return ast.Literal("number", int(token.value), span)

    def schedule(self, span: Span, children: list[Any]) -> _Clause:
        value = children[0]
        if isinstance(value, Token):
            value = ast.Literal("text", _unquote(value), self._origin.of_token(value))
        return _Clause("schedule", value, span)

    def disabled(self, span: Span, children: list[Any]) -> _Clause:
        return _Clause("disabled", True, span)

    # -- verbs

    def place(self, span: Span, children: list[Any]) -> _Body:
        values, options = self._clauses("place", children)
        statement = ast.Place(values["where"], values.get("on"), values.get("at"), span)
        return _Body((statement,), tuple(options), span)

    def replicate(self, span: Span, children: list[Any]) -> _Body:
        values, options = self._clauses("replicate", children)
        statement = ast.Replicate(values["where"], values.get("copies"), values.get("on"), span)
        return _Body((statement,), tuple(options), span)

    def archive(self, span: Span, children: list[Any]) -> _Body:
        values, options = self._clauses("archive", children)
        statement = ast.Archive(
            values["where"],
            values.get("to"),
            values.get("then release from", ()),
            values.get("notify"),
            span,
        )
        return _Body((statement,), tuple(options), span)

    def release(self, span: Span, children: list[Any]) -> _Body:
        values, options = self._clauses("release", children)
        statement = ast.Release(
            values["where"],
            values.get("from", ()),
            values.get("when"),
            values.get("until"),
            values.get("order by"),
            values.get("notify"),
            span,
        )
        return _Body((statement,), tuple(options), span)

    def expire(self, span: Span, children: list[Any]) -> _Body:
        values, options = self._clauses("expire", children)
        statement = ast.Expire(values["where"], values.get("notify"), span)
        return _Body((statement,), tuple(options), span)

    def protect(self, span: Span, children: list[Any]) -> _Body:
        values, options = self._clauses("protect", children)
        return _Body((ast.Protect(values["where"], span),), tuple(options), span)

    def alarm(self, span: Span, children: list[Any]) -> _Body:
        values, options = self._clauses("alarm", children[1:])
        statement = ast.Alarm(
            children[0],
            values.get("clear when"),
            values.get("notify", ()),
            str(values["severity"]) if "severity" in values else None,
            values.get("for"),
            span,
        )
        return _Body((statement,), tuple(options), span)

    def grant(self, span: Span, children: list[Any]) -> _Body:
        perms = tuple(str(c) for c in children if isinstance(c, Token))
        values, options = self._clauses("grant", children)
        statement = ast.Grant(
            perms,
            values.get("to", ()),
            bool(values.get("on")),
            values.get("at"),
            values.get("while"),
            span,
        )
        return _Body((statement,), tuple(options), span)

    def alarms(self, span: Span, children: list[_Body]) -> _Body:
        return _Body(
            tuple(s for body in children for s in body.statements),
            tuple(o for body in children for o in body.options),
            span,
        )

    grants = alarms

    def run(self, span: Span, children: list[Any]) -> _Body:
        values, options = self._clauses("run", children[1:])
        statement = ast.Run(children[0], values.get("for"), values.get("with", ()), span)
        return _Body((statement,), tuple(options), span)

    def verify(self, span: Span, children: list[Any]) -> _Body:
        values, options = self._clauses("verify", children)
        statement = ast.Verify(
            values.get("where"),
            values.get("on"),
            values.get("every"),
            values.get("sample"),
            span,
        )
        return _Body((statement,), tuple(options), span)

    # -- clauses

    where = _clause("where")
    on_location = _clause("on")
    on_locations = _clause("on")
    at_location = _clause("at")
    to_location = _clause("to")
    when = _clause("when")
    until = _clause("until")
    clear_when = _clause("clear when")
    for_duration = _clause("for")
    every = _clause("every")
    sample = _clause("sample")
    for_files = _clause("for")
    severity = _clause("severity")
    while_condition = _clause("while")

    def at_template(self, span: Span, children: list[Token]) -> _Clause:
        token = children[0]
        template = ast.Literal("text", _unquote(token), self._origin.of_token(token))
        return _Clause("at", template, span)

    def copies(self, span: Span, children: list[Token]) -> _Clause:
        return _Clause("copies", self._integer(children[0], span, "a number of copies"), span)

    def then_release(self, span: Span, children: list[ast.Name]) -> _Clause:
        return _Clause("then release from", tuple(children), span)

    def from_locations(self, span: Span, children: list[ast.Name]) -> _Clause:
        return _Clause("from", tuple(children), span)

    def to_principals(self, span: Span, children: list[ast.Principal]) -> _Clause:
        return _Clause("to", tuple(children), span)

    def notify_channels(self, span: Span, children: list[ast.Name]) -> _Clause:
        return _Clause("notify", tuple(children), span)

    def notify_before(self, span: Span, children: list[Any]) -> _Clause:
        return _Clause("notify", ast.NotifyBefore(children[0], children[1], span), span)

    def order_by(self, span: Span, children: list[Any]) -> _Clause:
        descending = len(children) > 1 and children[1] == "desc"
        return _Clause("order by", ast.OrderBy(children[0], descending, span), span)

    def on_directory(self, span: Span, children: list[Any]) -> _Clause:
        return _Clause("on", True, span)

    def with_args(self, span: Span, children: list[ast.KeywordArgument]) -> _Clause:
        self._check_unique_keywords(children)
        return _Clause("with", tuple(children), span)

    def with_arg(self, span: Span, children: list[Any]) -> ast.KeywordArgument:
        return ast.KeywordArgument(children[0].value, children[1], span)

    def _check_unique_keywords(self, arguments: Iterable[ast.KeywordArgument]) -> None:
        seen: set[str] = set()
        for argument in arguments:
            if argument.name in seen:
                self._error(
                    "duplicate-argument", f"'{argument.name}' is given twice", argument.span
                )
            seen.add(argument.name)

    # -- names, location sets, principals

    def name(self, span: Span, children: list[Token]) -> ast.Name:
        token = children[0]
        span = self._origin.of_token(token)
        if token.type == "STRING":
            return ast.Name(_unquote(token), True, span)
        self._check_reserved(token, "a name")
        return ast.Name(token.value, False, span)

    def location_names(self, span: Span, children: list[ast.Name]) -> ast.LocationNames:
        return ast.LocationNames(tuple(children), span)

    def location_tier(self, span: Span, children: list[ast.Name]) -> ast.LocationTier:
        return ast.LocationTier(children[0], span)

    def location_query(self, span: Span, children: list[ast.Expr]) -> ast.LocationQuery:
        return ast.LocationQuery(children[0], span)

    def experiment_users(self, span: Span, children: list[Any]) -> ast.Principal:
        return ast.Principal("experiment-users", None, span)

    def user_principal(self, span: Span, children: list[ast.Name]) -> ast.Principal:
        return ast.Principal("user", children[0], span)

    def group_principal(self, span: Span, children: list[ast.Name]) -> ast.Principal:
        return ast.Principal("group", children[0], span)

    # -- expressions

    def or_(self, span: Span, children: list[ast.Expr]) -> ast.Or:
        return self._nested(ast.Or(children[0], children[1], span), children)

    def and_(self, span: Span, children: list[ast.Expr]) -> ast.And:
        return self._nested(ast.And(children[0], children[1], span), children)

    def not_(self, span: Span, children: list[ast.Expr]) -> ast.Not:
        return self._nested(ast.Not(children[0], span), children)

    def compare(self, span: Span, children: list[Any]) -> ast.Compare:
        return self._nested(
            ast.Compare(children[1].value, children[0], children[2], span), children
        )

    def in_(self, span: Span, children: list[ast.Expr]) -> ast.In:
        return self._nested(ast.In(children[0], children[1], span), children)

    def like(self, span: Span, children: list[Any]) -> ast.Like:
        return self._nested(ast.Like(children[0], _unquote(children[1]), span), children)

    def matches(self, span: Span, children: list[Any]) -> ast.Matches:
        return self._nested(ast.Matches(children[0], _unquote(children[1]), span), children)

    def is_null(self, span: Span, children: list[ast.Expr]) -> ast.IsNull:
        return self._nested(ast.IsNull(children[0], False, span), children)

    def is_not_null(self, span: Span, children: list[ast.Expr]) -> ast.IsNull:
        return self._nested(ast.IsNull(children[0], True, span), children)

    def add(self, span: Span, children: list[ast.Expr]) -> ast.Binary:
        return self._nested(ast.Binary("+", children[0], children[1], span), children)

    def subtract(self, span: Span, children: list[ast.Expr]) -> ast.Binary:
        return self._nested(ast.Binary("-", children[0], children[1], span), children)

    def negate(self, span: Span, children: list[ast.Expr]) -> ast.Expr:
        operand = children[0]
        if isinstance(operand, ast.Literal) and operand.kind == "number":
            return ast.Literal("number", -operand.value, span)  # type: ignore[operator]
        return self._nested(ast.Unary("-", operand, span), children)

    def text(self, span: Span, children: list[Token]) -> ast.Literal:
        return ast.Literal("text", _unquote(children[0]), span)

    def number(self, span: Span, children: list[Token]) -> ast.Literal:
        raw = children[0].value
        value: int | float = float(raw) if "." in raw else int(raw)
        return ast.Literal("number", value, span)

    def size(self, span: Span, children: list[Token]) -> ast.Literal:
        number, unit = children
        return ast.Literal("size", parse_size(f"{number} {unit}"), span)

    def duration(self, span: Span, children: list[Token]) -> ast.Literal:
        number, unit = children
        return ast.Literal("duration", parse_duration(f"{number} {unit}"), span)

    def percent(self, span: Span, children: list[Token]) -> ast.Literal:
        return ast.Literal("percent", parse_percent(f"{children[0]}%"), span)

    def time(self, span: Span, children: list[Token]) -> ast.Literal:
        value = children[0].value
        try:
            dt.datetime.fromisoformat(value)
        except ValueError:
            self._error("invalid-time", f"{value} is not a valid date and time", span)
        return ast.Literal("time", value, span)

    def true(self, span: Span, children: list[Any]) -> ast.Literal:
        return ast.Literal("bool", True, span)

    def false(self, span: Span, children: list[Any]) -> ast.Literal:
        return ast.Literal("bool", False, span)

    def null(self, span: Span, children: list[Any]) -> ast.Literal:
        return ast.Literal("null", None, span)

    def list_literal(self, span: Span, children: list[ast.Expr]) -> ast.Literal:
        return self._nested(ast.Literal("list", tuple(children), span), children)

    def attribute(self, span: Span, children: list[Token]) -> ast.Attribute | ast.Index:
        head = children[0]
        if head.type == "IDENT":
            self._check_reserved(head, "an attribute")
        path = tuple(t.value for t in children if t.type != "STRING")
        if children[-1].type == "STRING":
            target = ast.Attribute(path, span)
            return ast.Index(target, _unquote(children[-1]), span)
        return ast.Attribute(path, span)

    def call(self, span: Span, children: list[Any]) -> ast.Call:
        name: Token = children[0]
        if name.type == "IDENT":
            self._check_reserved(name, "a function")
        args: list[ast.Expr] = []
        kwargs: list[ast.KeywordArgument] = []
        for argument in children[1:]:
            if isinstance(argument, ast.KeywordArgument):
                kwargs.append(argument)
            elif kwargs:
                self._error(
                    "positional-after-keyword",
                    "a positional argument cannot follow a keyword argument",
                    argument.span,
                    hint=f"write the positional arguments of {name.value}() first",
                )
            else:
                args.append(argument)
        self._check_unique_keywords(kwargs)
        return self._nested(ast.Call(name.value, tuple(args), tuple(kwargs), span), children)

    def keyword_argument(self, span: Span, children: list[Any]) -> ast.KeywordArgument:
        return self._nested(ast.KeywordArgument(children[0].value, children[1], span), children)


# ---- lark's errors as diagnostics

# How a terminal that is not a keyword is named in "expected ..." lists.
_TERMINAL_NAMES = {
    "NAME": "a name",
    "IDENT": "an identifier",
    "STRING": "a string",
    "NUMBER": "a number",
    "TIME": "a time",
    "SIZE_UNIT": "a unit",
    "DURATION_UNIT": "a unit",
    "COMPARE": "a comparison",
    "$END": "end of file",
}
# Everything that may start an expression, shown as "an expression" when all can.
# fmt: off
_EXPRESSION_START = frozenset({
    "an identifier", "a number", "a string", "a time", "(", "[", "-", "not", "true", "false",
    "null", "now", "station", "experiment", "copies",
})
# Everything that may follow an operand, shown as "an operator".
_OPERATORS = frozenset({
    "a comparison", "+", "-", "in", "like", "matches", "is", "and", "or", ".", "[", "(", "%",
    "a unit",
})
# fmt: on
_WORDY = re.compile(r"[^\W\d]\w*")


def _acceptable(exc: UnexpectedInput, fallback: Iterable[str]) -> set[str]:
    """The terminals the parser would really take at the error.

    An LALR state merges the lookaheads of every context it serves, so lark's own
    `expected` lists terminals that cannot follow here (after the `where` of a place
    rule it would offer `copies` and `severity`). Feeding each candidate to a copy of
    the parser state keeps the ones that truly fit.
    """
    state = getattr(exc, "state", None)
    if not isinstance(state, ParserState):
        return set(fallback)
    quiet = copy(state.parse_conf)
    quiet.callbacks = {}  # the trials must not build AST nodes nor report anything
    accepted = set()
    for terminal in state.parse_conf.parse_table.states[state.position]:
        if not terminal.isupper():  # the table also holds the gotos of rules
            continue
        trial = state.copy(deepcopy_values=False)
        trial.parse_conf = quiet
        try:
            trial.feed_token(Token(terminal, ""), is_end=terminal == "$END")
        except Exception:
            continue
        accepted.add(terminal)
    return accepted or set(fallback)


def _expected_names(parser: Lark, expected: Iterable[str]) -> set[str]:
    names = set()
    for terminal in expected:
        if terminal in _TERMINAL_NAMES:
            names.add(_TERMINAL_NAMES[terminal])
            continue
        pattern = parser.get_terminal(terminal).pattern
        names.add(pattern.value if isinstance(pattern, PatternStr) else terminal.lower())
    return names


def _describe_expected(names: set[str]) -> str:
    shown = set(names)
    if "a name" in shown and "an identifier" not in shown:
        shown.discard("a string")  # a quoted name is still a name
    if {"an identifier", "a number", "a string"} <= shown:
        shown = (shown - _EXPRESSION_START) | {"an expression"}
    if "a comparison" in shown:
        shown = (shown - _OPERATORS) | {"an operator"}
    phrases = sorted(n for n in shown if n.startswith(("a ", "an ")))
    words = sorted(n for n in shown if _WORDY.fullmatch(n))
    marks = sorted(
        f"'{n}'" for n in shown if n not in phrases and n not in words and n != "end of file"
    )
    items = phrases + words + marks + (["end of file"] if "end of file" in shown else [])
    if not items:
        return "nothing can follow here"
    if len(items) == 1:
        return f"expected {items[0]}"
    return "expected one of: " + ", ".join(items)


def _describe_token(token: Token) -> str:
    if token.type == "STRING":
        value = token.value if len(token.value) <= 30 else token.value[:27] + '..."'
        return f"string {value}"
    return f"'{token.value}'"


def _token_hint(token: Token, names: set[str]) -> str | None:
    value = token.value
    if value in VERBS and "rule" in names:
        return (
            "a rule has one verb (only alarm and grant may repeat); "
            "start another rule with 'rule NAME'"
        )
    if value == "station" and "rule" in names:
        return "the station line must come first in the file"
    if token.type == "COMPARE" and "and" in names:
        return "comparisons do not chain: write 'a < b and b < c'"
    if value == "=" and "a comparison" in names:
        return "compare with '=='"
    if (
        token.type in ("WORD", "NAME", "IDENT")
        and value.lower() in RESERVED_WORDS
        and value != value.lower()
    ):
        return "keywords are lower case"
    return None


def _unexpected_token(exc: UnexpectedToken, origin: _Origin) -> Diagnostic:
    token: Token = exc.token
    names = _expected_names(_parser(), _acceptable(exc, exc.expected))
    expected = _describe_expected(names)
    if token.type == "$END" and origin.next_rule is not None:
        return Diagnostic("unexpected-token", f"unexpected 'rule'; {expected}", origin.next_rule)
    if token.type == "$END":
        span = origin.span(
            token.end_line or 1, token.end_column or 1, token.end_line or 1, token.end_column or 1
        )
        return Diagnostic("unexpected-eof", f"unexpected end of input; {expected}", span)
    span = origin.of_token(token)
    suggestion = None
    if token.type in ("WORD", "NAME", "IDENT"):
        candidates = [n for n in names if _WORDY.fullmatch(n)]
        if "a unit" in names:
            candidates += [*SIZE_UNITS, *DURATION_UNITS]
        close = difflib.get_close_matches(token.value, candidates, n=1)
        suggestion = close[0] if close else None
    if (
        "a unit" in names
        and token.type == "WORD"
        and (suggestion is None or suggestion in SIZE_UNITS or suggestion in DURATION_UNITS)
    ):
        message = f"unknown unit '{token.value}'"
        if suggestion:
            message += f"; did you mean '{suggestion}'?"
        if suggestion in SIZE_UNITS:
            hint = f"a size is {SIZE_FORMS}"
        elif suggestion in DURATION_UNITS:
            hint = f"a duration is {DURATION_FORMS}"
        else:
            hint = f"a size is {SIZE_FORMS}; a duration is {DURATION_FORMS}"
        return Diagnostic("unknown-unit", message, span, hint=hint)
    message = f"unexpected {_describe_token(token)}; {expected}"
    if suggestion:
        message += f"; did you mean '{suggestion}'?"
    return Diagnostic("unexpected-token", message, span, hint=_token_hint(token, names))


def _unexpected_characters(exc: UnexpectedCharacters, text: str, origin: _Origin) -> Diagnostic:
    span = origin.span(exc.line, exc.column, exc.line, exc.column + 1)
    char = text[exc.pos_in_stream] if 0 <= exc.pos_in_stream < len(text) else ""
    if char == '"':
        return Diagnostic(
            "unterminated-string",
            "the string is not closed on this line",
            span,
            hint='a string ends on the line it starts; write \\" for a quote inside it',
        )
    hint = "strings are written in double quotes" if char == "'" else None
    allowed = _acceptable(exc, exc.allowed or ()) - {"WORD"}
    expected = _describe_expected(_expected_names(_parser(), allowed))
    return Diagnostic(
        "unexpected-character", f"unexpected character {char!r}; {expected}", span, hint=hint
    )


def _syntax_diagnostic(exc: UnexpectedInput, text: str, origin: _Origin) -> Diagnostic:
    """The one adapter from lark's exceptions to our diagnostics."""
    if isinstance(exc, UnexpectedToken):
        return _unexpected_token(exc, origin)
    if isinstance(exc, UnexpectedCharacters):
        return _unexpected_characters(exc, text, origin)
    line = getattr(exc, "line", 0) or 0
    column = getattr(exc, "column", 0) or 0
    return Diagnostic("syntax", "the input ends too early", origin.span(line, column, line, column))


# ---- entry points


def _parse(text: str, start: str, origin: _Origin, diagnostics: list[Diagnostic]) -> Any:
    """The built node, or None with a diagnostic added.

    The quick parser reads text without a syntax error; after a mistake lark parses
    the text again, with a new builder, so that the diagnostics are lark's own.
    """
    with _PARSE_LOCK:
        try:
            quick = _quick_parser()
            if quick is not None:
                found: list[Diagnostic] = []
                _INLINE.builder = _Builder(origin, found)
                try:
                    node = quick.parse(text, start)
                    diagnostics += found
                    return node
                except _Mistake:
                    found.clear()  # lark reads the text again below, with its own messages
            _INLINE.builder = _Builder(origin, diagnostics)
            return _parser().parse(text, start=start)
        except UnexpectedInput as exc:
            diagnostics.append(_syntax_diagnostic(exc, text, origin))
            return None
        finally:
            _INLINE.builder = None


def _parse_by_rule(text: str, file: str) -> tuple[list[Diagnostic], ast.File]:
    """Every rule's mistakes: the text before the first rule, and each rule, parsed alone;
    and a File of the parts that parsed without a mistake.

    Each part is parsed as a whole file, so that a message reads the same as when the
    whole file is parsed (a rule may end with another rule or the end of the file).
    """
    diagnostics: list[Diagnostic] = []
    station: ast.Name | None = None
    rules: list[ast.Rule] = []
    keywords = [m.start(1) for m in _RULE_LINE.finditer(text)]
    starts = [text.rfind("\n", 0, k) + 1 for k in keywords]
    bounds = sorted({0, *starts, len(text)})
    line = 0
    for begin, end in itertools.pairwise(bounds):
        next_rule = None
        if end in starts:
            keyword = keywords[starts.index(end)]
            end_line = line + text.count("\n", begin, end) + 1
            col = keyword - end + 1
            next_rule = Span(file, end_line, col, end_line, col + len("rule"))
        own: list[Diagnostic] = []
        part = _parse(text[begin:end], "start", _Origin(file, line, 0, next_rule), own)
        if isinstance(part, ast.File) and not own:
            station = station or part.station
            rules += part.rules
        diagnostics += own
        line += text.count("\n", begin, end)
    return diagnostics, ast.File(station, tuple(rules), _whole(text, file))


def _whole(text: str, file: str) -> Span:
    """The span of the whole text."""
    lines = text.split("\n")
    return Span(file, 1, 1, len(lines), len(lines[-1]) + 1)


def _guarded(file: str, work: Any) -> tuple[Any, list[Diagnostic]]:
    """Run `work`, turning any failure the adapter does not know into a diagnostic."""
    try:
        return work()
    except RecursionError:
        message = "the input is nested too deeply to read"
        return None, [
            Diagnostic("too-deep", message, Span(file), hint="split it into smaller parts")
        ]
    except Exception as exc:  # the promise is "never a traceback", whatever lark does
        message = f"internal error while parsing: {type(exc).__name__}: {exc}"
        return None, [Diagnostic("internal-error", message, Span(file))]


def parse_policy(text: str, file: str) -> tuple[ast.File | None, list[Diagnostic]]:
    """The AST of a `.policy` file, or None and every error found in it (sorted).

    The AST is returned only when there is no error: later passes can rely on a
    complete tree. `parse_policy_partial` also gives the rules that parsed.
    """
    tree, diagnostics = parse_policy_partial(text, file)
    return (None, diagnostics) if diagnostics else (tree, [])


def parse_policy_partial(text: str, file: str) -> tuple[ast.File, list[Diagnostic]]:
    """Every error of a `.policy` file (sorted) and a File of the rules without one.

    After a mistake each rule is parsed alone, so the File holds every rule that
    parsed cleanly (and the station line, if it did): `policyd check` still checks
    them. Only for callers that report the diagnostics: one that needs the whole
    file (convert) uses `parse_policy`.
    """

    # A byte-order mark some editors write is not part of the text, nor of its columns.
    source = text.removeprefix("\ufeff")

    def work() -> tuple[ast.File, list[Diagnostic]]:
        diagnostics: list[Diagnostic] = []
        tree = _parse(source, "start", _Origin(file), diagnostics)
        if isinstance(tree, ast.File) and not diagnostics:
            return tree, []
        by_rule, partial = _parse_by_rule(source, file)
        if tree is None:
            diagnostics = by_rule or diagnostics
        return partial, sorted_diagnostics(diagnostics)

    tree, diagnostics = _guarded(file, work)
    return (tree if tree is not None else ast.File(None, (), Span(file, 1, 1))), diagnostics


def parse_expression(
    text: str, file: str, line_offset: int = 0, col_offset: int = 0
) -> tuple[ast.Expr | None, list[Diagnostic]]:
    """One expression, for the YAML front end.

    `line_offset` and `col_offset` place the text in its file: the expression's first
    character is at line `1 + line_offset`, column `1 + col_offset` (a YAML scalar that
    starts at line 12, column 15 passes 11 and 14), so spans point into the YAML file.
    """

    def work() -> tuple[ast.Expr | None, list[Diagnostic]]:
        diagnostics: list[Diagnostic] = []
        origin = _Origin(file, line_offset, col_offset)
        expr = _parse(text, "expression", origin, diagnostics)
        if diagnostics:
            return None, sorted_diagnostics(diagnostics)
        return expr, []

    return _guarded(file, work)
