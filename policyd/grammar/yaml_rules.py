"""The YAML front end of the rules language (spec/rules.md section 6).

Some beamline managers keep their rules as YAML, next to the rest of their station
configuration, and `policyd convert` moves rules between the two forms. Both forms must
therefore load into exactly the same AST as `parse_policy` builds for the DSL, and a
mistake in a YAML file must be reported at its line and column just as in a `.policy`
file, including a mistake inside an expression string (`where: 'file.size >> 1'`). So:

* YAML is read with ruamel's round-trip loader as YAML 1.2 (via `yamlsource`), which
  records the position of every key and value;
* every expression string, and every literal written as YAML (`until: 80%`,
  `every: 365 days`, `copies: 2`), is parsed by the DSL's own expression grammar
  (`parse_expression`), so the two forms cannot disagree on a unit or an operator;
* which clause keys a verb takes, and which it requires, follow policy.lark: the keys
  the grammar puts in a verb's head are required (`where` for the file verbs, `when`
  for alarm, `perms` for grant, `workflow` for run), the others are optional, as the
  DSL parser leaves the spec's other "required clauses" to the checker.

Column mapping. ruamel gives the position where a scalar starts; this module finds the
position of every character of the scalar's value in the source (skipping the opening
quote, `''` in single-quoted scalars, backslash escapes in double-quoted ones, and the
line breaks and indentation that folding removes). When the value sits on one line
character for character, the expression is parsed with `parse_expression`'s line and
column offsets; otherwise it is parsed at offset 0 and every span of the result is
mapped back through that character map. Limits, all "best effort, never a crash":
block scalars (`|`, `>`) map non-blank characters exactly, but a span starting on the
extra indentation of a more-indented line may point a few columns early; a value
reached through an alias (`*name`) points into the anchored node; a value that could
not be aligned with its source (a tag, an unusual escape) points at the scalar's start.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import difflib
import re
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from policyd.diagnostics import Diagnostic, DiagnosticError, Span, sorted_diagnostics
from policyd.gcpause import gc_paused
from policyd.grammar import ast
from policyd.grammar.dsl import RESERVED_WORDS, VERBS, parse_expression
from policyd.units import DURATION_FORMS, PERCENT_FORMS
from policyd.yamlsource import parse_yaml

__all__ = ["CLAUSE_KEYS", "RULE_KEYS", "TOP_KEYS", "parse_yaml_rules", "parse_yaml_rules_partial"]

#: The keys of a rule file's top-level mapping; `version` is required.
TOP_KEYS = ("version", "station", "rules")
#: The keys of a rule besides its verb; `name` is required.
RULE_KEYS = ("name", "priority", "schedule", "disabled")

#: Per verb: (required clause keys, optional clause keys), as policy.lark has them.
CLAUSE_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "place": (("where",), ("on", "at")),
    "replicate": (("where",), ("copies", "on")),
    "archive": (("where",), ("to", "release_from", "notify_before")),
    "release": (("where",), ("from", "when", "until", "order_by", "notify_before")),
    "expire": (("where",), ("notify_before",)),
    "protect": (("where",), ()),
    "alarm": (("when",), ("clear_when", "notify", "severity", "for")),
    "grant": (("perms",), ("principals", "at", "while")),
    "run": (("workflow",), ("where", "with")),
    "verify": ((), ("where", "on", "every", "sample")),
}
_LIST_VERBS = ("alarm", "grant")
_ALL_CLAUSES = frozenset(k for req, opt in CLAUSE_KEYS.values() for k in (*req, *opt))

# A DSL name that needs no quotes (policy.lark's NAME), and an expression identifier.
_BARE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# How a non-text plain scalar (`2`, `-5`, `1.5`, `true`) is written in the source.
_PLAIN_TOKEN = re.compile(r"[^\s,\[\]{}#]+")
# `schedule:` holds a duration when it looks like a number and a unit, else a cron text.
_DURATION_LIKE = re.compile(r"\s*[0-9.]+\s*[A-Za-z]*\s*")
_LINE_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")  # what ruamel counts as one
_SEVERITIES = ("info", "warning", "critical")
_PERMS = ("read", "write")
_PRINCIPAL_FORMS = ("experiment.users", "user:NAME", "group:NAME")
_PRINCIPAL = re.compile(r"(user|group):[ \t]*(\S.*)", re.DOTALL)

NodeT = TypeVar("NodeT")


class _Skip(Exception):
    """A value could not be read; its diagnostic is already recorded."""


class _Entry(NamedTuple):
    """One value of the tree and where it is: a mapping value or a list item.

    (A NamedTuple, not a frozen dataclass: the reader makes one per key and item.)
    """

    key: str  # how messages name it: the key, or `notify[1]` for a list item
    value: Any
    key_span: Span  # the key (a list item's own position for items)
    span: Span  # where the value starts


class _Text(NamedTuple):
    """A scalar's value as text, with the source offsets of each of its characters.

    `starts[i]`/`ends[i]` are the offsets in the file of the source characters that
    produced character i (an escape is several), `end` is just past the scalar.
    """

    text: str
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    begin: int
    end: int


class _Source:
    """The file's text, with line starts counted the way ruamel counts lines.

    The reader asks about most scalars twice (to read the value, then to find where
    its statement ends), so spans and alignments are kept once made.
    """

    def __init__(self, text: str, file: str) -> None:
        self.text = text
        self.file = file
        self.line_starts = [0] + [m.end() for m in _LINE_BREAK.finditer(text)]
        self._spans: dict[tuple[int, int], Span] = {}
        self._aligned: dict[tuple[str, int], _Text] = {}

    def offset(self, line: int, col: int) -> int:
        """The offset of a 1-based line and column, clamped to the text."""
        starts = self.line_starts
        if 0 < line <= len(starts) and col > 0:
            return min(starts[line - 1] + col - 1, len(self.text))
        index = min(max(line, 1), len(starts)) - 1
        return min(starts[index] + max(col, 1) - 1, len(self.text))

    def position(self, offset: int) -> tuple[int, int]:
        """The 1-based line and column of an offset."""
        index = max(bisect.bisect_right(self.line_starts, offset) - 1, 0)
        return index + 1, offset - self.line_starts[index] + 1

    def span(self, start: int, end: int) -> Span:
        made = self._spans.get((start, end))
        if made is None:
            line, col = self.position(start)
            end_line, end_col = self.position(end) if end > start else (line, col)
            made = self._spans[start, end] = Span(self.file, line, col, end_line, end_col)
        return made

    def at(self, line0: int, col0: int) -> Span:
        """The empty Span at one of ruamel's 0-based positions, clamped to the text."""
        starts = self.line_starts
        if 0 <= line0 < len(starts) - 1 and 0 <= col0 < starts[line0 + 1] - starts[line0]:
            return Span(self.file, line0 + 1, col0 + 1, line0 + 1, col0 + 1)  # on its line
        offset = self.offset(line0 + 1, col0 + 1)
        return self.span(offset, offset)

    # -- where a scalar's characters are

    def align(self, value: str, begin: int) -> _Text:
        """Find each character of `value` in the source, from the scalar's first offset."""
        made = self._aligned.get((value, begin))
        if made is None:
            made = self._aligned[value, begin] = self._align(value, begin)
        return made

    def _align(self, value: str, begin: int) -> _Text:
        src = self.text
        n = len(src)
        style = src[begin] if begin < n and src[begin] in "'\"|>" else ""
        p = begin + 1 if style in ("'", '"') else begin
        if style in ("|", ">"):  # the content starts on the line after the header
            found = _LINE_BREAK.search(src, begin)
            p = found.end() if found else n
        elif (
            src.startswith(value, p)
            and not (style == '"' and "\\" in value)
            and not (style == "'" and "'" in value)
        ):
            # Most scalars are their source character for character; the loop below
            # would find that too, a character at a time.
            stop = p + len(value)
            end = stop + 1 if style and stop < n and src[stop] == style else stop
            return _Text(value, tuple(range(p, stop)), tuple(range(p + 1, stop + 1)), begin, end)
        starts: list[int] = []
        ends: list[int] = []
        i = 0
        while i < len(value):
            ch = value[i]
            if p >= n:
                starts.append(n)
                ends.append(n)
                i += 1
                continue
            here = src[p]
            if style == '"' and here == "\\":
                following = src[p + 1] if p + 1 < n else ""
                if following in "\r\n":  # an escaped line break: no character of its own
                    p = self._skip_space(p + 1)
                    continue
                width = {"x": 4, "u": 6, "U": 10}.get(following, 2)
                starts.append(p)
                ends.append(min(p + width, n))
                p = min(p + width, n)
            elif style == "'" and ch == "'" and src.startswith("''", p):
                starts.append(p)
                ends.append(p + 2)
                p += 2
            elif here == ch:
                starts.append(p)
                ends.append(p + 1)
                p += 1
            elif ch in " \n" and here in " \t\r\n\x85\u2028\u2029":
                starts.append(p)  # a line break folded into a space (or kept)
                ends.append(p + 1)
                p = self._skip_space(p)
            elif here in " \t\r\n\x85\u2028\u2029":
                p = self._skip_space(p)  # indentation: try the same character again
                continue
            else:  # an anchor, a tag, something unforeseen: look a little further
                found_at = src.find(ch, p, p + 200)
                if found_at >= 0:
                    p = found_at
                    continue
                starts.append(p)
                ends.append(p)
            i += 1
        end = p + 1 if style in ("'", '"') and p < n and src[p] == style else p
        return _Text(value, tuple(starts), tuple(ends), begin, end)

    def _skip_space(self, p: int) -> int:
        while p < len(self.text) and self.text[p] in " \t\r\n\x85\u2028\u2029":
            p += 1
        return p


# The field names of each type met by _remap: a dataclass's, None for any other type.
_FIELDS: dict[type, tuple[str, ...] | None] = {}


def _remap(node: NodeT, change: Callable[[Span], Span]) -> NodeT:
    """`node` with every Span in it (AST nodes, diagnostics) replaced by `change(span)`.

    A node is made again from its fields in order (all are init fields). The reader
    moves most of the expressions it reuses this way (_Reader._parse_in_place), so
    this is quick: the type decides, once per type, and `dataclasses.replace` is not
    used (it took several times as long).
    """
    kind = type(node)
    if kind is Span:
        return change(node)  # type: ignore[arg-type]
    try:
        names = _FIELDS[kind]
    except KeyError:
        is_node = dataclasses.is_dataclass(kind)
        names = _FIELDS[kind] = tuple(f.name for f in dataclasses.fields(kind)) if is_node else None
    if names is not None:
        return kind(*[_remap(getattr(node, name), change) for name in names])
    if isinstance(node, tuple):
        return tuple([_remap(item, change) for item in node])  # type: ignore[return-value]
    if isinstance(node, list):
        return [_remap(item, change) for item in node]  # type: ignore[return-value]
    return node


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "ScalarBoolean"


def _describe(value: Any, raw: str | None = None) -> str:
    if value is None:
        return "nothing"
    if _is_bool(value):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    shown = raw if raw is not None else str(value)
    return shown if isinstance(value, int | float) else repr(shown)


def _suggest(key: str, allowed: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Reader:
    """Walks the loaded tree once, building AST nodes and collecting every mistake."""

    def __init__(self, source: _Source) -> None:
        self.src = source
        self.file = source.file
        self.diagnostics: list[Diagnostic] = []
        # id -> (the mapping or list, what else its entries depend on, the entries)
        self._entries: dict[int, tuple[CommentedMap, Span, list[_Entry]]] = {}
        self._items: dict[int, tuple[list[Any], tuple[str, Span], list[_Entry]]] = {}
        # One-line expressions parsed without a mistake: the node, and where it was.
        self._parsed: dict[str, tuple[ast.Expr, int, int]] = {}

    def error(self, code: str, message: str, span: Span, hint: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(code, message, span, hint=hint))

    # -- positions

    def _node_span(self, node: Any, fallback: Span) -> Span:
        if isinstance(node, CommentedMap | CommentedSeq) and node.lc.line is not None:
            return self.src.at(node.lc.line, node.lc.col or 0)
        return fallback

    def entries(self, mapping: CommentedMap, fallback: Span) -> list[_Entry]:
        """Each key of a mapping with its value and positions (unknown ones: the parent's).

        Made once per mapping: reading a statement, checking its keys and finding its
        span each go through them again.
        """
        made = self._entries.get(id(mapping))
        if made is not None and made[0] is mapping and made[1] == fallback:
            return made[2]
        out = []
        positions = mapping.lc.data or {}
        for key, value in mapping.items():
            try:
                k_line, k_col, v_line, v_col = positions[key]
            except (KeyError, TypeError, ValueError):
                # A key merged in with `<<:` has no position of its own.
                key_span = span = self._node_span(mapping, fallback)
            else:
                key_span = self.src.at(k_line, k_col)
                empty = value is None and v_line > k_line  # `key:` alone: the key is its place
                span = key_span if empty else self.src.at(v_line, v_col)
            name = "true" if key is True else "false" if key is False else str(key)
            out.append(_Entry(name, value, key_span, span))
        self._entries[id(mapping)] = (mapping, fallback, out)
        return out

    def items(self, entry: _Entry) -> list[_Entry]:
        """The items of a list value; a single value stands for a list of one.

        Made once per list, as `entries` are per mapping.
        """
        if not isinstance(entry.value, list):
            return [entry]
        made = self._items.get(id(entry.value))
        if made is not None and made[0] is entry.value and made[1] == (entry.key, entry.span):
            return made[2]
        out = []
        for index, value in enumerate(entry.value):
            span = entry.span
            with contextlib.suppress(AttributeError, KeyError, TypeError, ValueError):
                line, col = entry.value.lc.data[index]  # where ruamel saw the item
                span = self.src.at(line, col)
            out.append(_Entry(f"{entry.key}[{index}]", value, span, span))
        self._items[id(entry.value)] = (entry.value, (entry.key, entry.span), out)
        return out

    def mapping(
        self, entry: _Entry, allowed: tuple[str, ...], where: str, hint: str | None = None
    ) -> dict[str, _Entry]:
        """A mapping's entries by key; unknown keys are reported and left out."""
        if not isinstance(entry.value, dict):
            self.wrong_type(entry, "a mapping (key: value)")
            raise _Skip
        known: dict[str, _Entry] = {}
        for item in self.entries(entry.value, entry.span):
            if item.key in allowed:
                known[item.key] = item
                continue
            key_hint = hint or f"{where} takes: {', '.join(sorted(allowed))}"
            if item.key in ("true", "false") and not isinstance(_raw_key(entry.value, item), str):
                key_hint = (
                    "this key was read as a boolean; a %YAML 1.1 directive makes `on`, `yes` "
                    "and `no` booleans, while rule files are YAML 1.2: remove the directive"
                )
            self.error(
                "unknown-key",
                f"unknown key {item.key!r} in {where}{_suggest(item.key, allowed)}",
                item.key_span,
                hint=key_hint,
            )
        return known

    def wrong_type(self, entry: _Entry, expected: str, raw: str | None = None) -> None:
        self.error(
            "wrong-type",
            f"{entry.key!r} expects {expected}, got {_describe(entry.value, raw)}",
            entry.span,
        )

    # -- scalars

    def text_of(self, entry: _Entry) -> _Text:
        """The scalar as the text the DSL grammar reads: a string, or a number as written."""
        value = entry.value
        begin = self.src.offset(entry.span.line, entry.span.col)
        if isinstance(value, str):
            return self.src.align(str(value), begin)
        if value is None or isinstance(value, dict | list):
            raise TypeError("not a scalar")
        written = _PLAIN_TOKEN.match(self.src.text, begin)
        token = written.group(0) if written else ""
        if not token or token[0] in "*&!":
            token = ("true" if value else "false") if _is_bool(value) else str(value)
        return self.src.align(token, begin)

    def scalar_span(self, text: _Text) -> Span:
        return self.src.span(text.begin, text.end)

    def expression(self, entry: _Entry, what: str = "an expression") -> ast.Expr:
        """Parse a scalar with the DSL's expression grammar, spans in this file."""
        if entry.value is None or isinstance(entry.value, dict | list):
            self.wrong_type(entry, f"{what} (text)")
            raise _Skip
        text = self.text_of(entry)
        node, diagnostics = self._parse_expression(text)
        self.diagnostics.extend(diagnostics)
        if node is None:
            raise _Skip
        return node

    def _parse_expression(self, text: _Text) -> tuple[ast.Expr | None, list[Diagnostic]]:
        value = text.text
        if value:
            first = text.starts[0]
            shifted = (
                text.starts == tuple(range(first, first + len(value)))
                and text.ends == tuple(range(first + 1, first + len(value) + 1))
                and _LINE_BREAK.search(self.src.text, first, first + len(value)) is None
            )
            if shifted:
                line, col = self.src.position(first)
                return self._parse_in_place(value, line, col)
        node, diagnostics = parse_expression(value, self.file)
        line_starts = [0] + [m.end() for m in re.finditer("\n", value)]

        def index(line: int, col: int) -> int:
            line = min(max(line, 1), len(line_starts))
            return min(max(line_starts[line - 1] + col - 1, 0), len(value))

        def change(span: Span) -> Span:
            if span.line <= 0:
                return Span(self.file, *self.src.position(text.begin))
            first = index(span.line, span.col)
            last = index(span.end_line, span.end_col) if span.end_line > 0 else first
            start = text.starts[first] if first < len(value) else text.end
            end = text.ends[last - 1] if 0 < last <= len(value) else start
            return self.src.span(start, max(start, end))

        return _remap(node, change), _remap(diagnostics, change)

    def _parse_in_place(
        self, value: str, line: int, col: int
    ) -> tuple[ast.Expr | None, list[Diagnostic]]:
        """A one-line expression that starts at `line`, `col` of the file.

        A file of many rules repeats its expressions (`file.path like "*.h5"`,
        `age(experiment.end) > 90 days`): an expression read before without a mistake
        is that node moved to here, which takes a fraction of a parse. One with a
        mistake is not kept: each time it is parsed, for messages at its own place.
        """
        seen = self._parsed.get(value)
        if seen is not None:
            node, at_line, at_col = seen
            lines, cols = line - at_line, col - at_col

            def move(span: Span) -> Span:
                return Span(
                    span.file,
                    span.line + lines,
                    span.col + cols,
                    span.end_line + lines,
                    span.end_col + cols,
                )

            return _remap(node, move), []
        node, diagnostics = parse_expression(value, self.file, line - 1, col - 1)
        if node is not None and not diagnostics:
            self._parsed[value] = (node, line, col)
        return node, diagnostics

    def literal(self, entry: _Entry, kind: str) -> ast.Literal:
        """A literal clause value (`80%`, `7 days`, `2`), read by the expression grammar."""
        phrases = {
            "duration": ("a duration such as '7 days'", DURATION_FORMS),
            "percent": ("a percentage such as '80%'", PERCENT_FORMS),
            "number": ("a whole number", None),
        }
        expected, hint = phrases[kind]
        if entry.value is None or isinstance(entry.value, dict | list) or _is_bool(entry.value):
            self.wrong_type(entry, expected)
            raise _Skip
        node = self.expression(entry, expected)
        if not isinstance(node, ast.Literal) or node.kind != kind:
            self.error(
                "wrong-type",
                f"{entry.key!r} expects {expected}, "
                f"got {_describe(entry.value, self.text_of(entry).text)}",
                entry.span,
                hint=hint,
            )
            raise _Skip
        return node

    def integer(self, entry: _Entry, what: str, *, negative: bool) -> ast.Literal:
        """A whole number; the messages are those of the DSL for the same mistakes."""
        node = self.literal(entry, "number")
        if isinstance(node.value, float):
            raw = self.text_of(entry).text
            self.error("not-an-integer", f"{what} is a whole number, not {raw}", node.span)
            raise _Skip
        if not negative and isinstance(node.value, int) and node.value < 0:
            self.wrong_type(entry, "a whole number, not a negative one")
            raise _Skip
        return node

    def name(self, entry: _Entry, *, quoted: bool = False, skip: int = 0) -> ast.Name:
        """A name in a clause position; YAML needs no quotes for reserved words.

        `quoted` records what the DSL would write: True where the DSL needs quotes (a
        reserved word, a name that is not letters, digits, `_` and `-`) and where the
        spec writes the name quoted (`user "NAME"`, `group "NAME"`, `tier "disk"`), so
        both forms give equal nodes. `skip` drops a prefix such as `user:`.
        """
        value = entry.value
        if _is_bool(value) or not isinstance(value, str | int):
            self.wrong_type(entry, "a name")
            raise _Skip
        text = self.text_of(entry)
        name = text.text[skip:]
        if "\n" in name or "\r" in name:
            self.error("bad-value", f"{entry.key!r}: a name cannot span lines", entry.span)
            raise _Skip
        if skip and skip < len(text.starts):
            span = self.src.span(text.starts[skip], text.end)
        else:
            span = self.scalar_span(text)
        bare = _BARE_NAME.fullmatch(name) is not None and name not in RESERVED_WORDS
        return ast.Name(name, quoted or not bare, span)

    def names(self, entry: _Entry) -> tuple[ast.Name, ...]:
        return tuple(self.name(item) for item in self.items(entry))

    def choice(self, entry: _Entry, allowed: tuple[str, ...]) -> tuple[str, Span]:
        if not isinstance(entry.value, str):
            self.wrong_type(entry, "one of " + ", ".join(allowed))
            raise _Skip
        text = self.text_of(entry)
        if entry.value not in allowed:
            self.error(
                "bad-value",
                f"{entry.key!r} is one of {', '.join(allowed)}, not {str(entry.value)!r}"
                + _suggest(str(entry.value), allowed),
                entry.span,
            )
            raise _Skip
        return str(entry.value), self.scalar_span(text)

    # -- the file

    def top(self, tree: Any) -> ast.File | None:
        whole = self.src.span(0, len(self.src.text))
        top = _Entry("the file", tree, whole, Span(self.file, 1, 1))
        if not isinstance(tree, dict):
            self.error(
                "wrong-type",
                f"a rule file is a mapping with version, station and rules, got {_describe(tree)}",
                Span(self.file, 1, 1),
            )
            return None
        keys = self.mapping(top, TOP_KEYS, "the file")
        if "version" not in keys:
            self.error("missing-key", "missing required top-level key 'version'", top.span)
        else:
            version = keys["version"]
            if _is_bool(version.value) or version.value != 1:
                self.error(
                    "bad-value",
                    f"'version' must be 1, got {_describe(version.value)}",
                    version.span,
                    hint="this version of policyd reads rule files of version 1",
                )
        station = self._optional(keys.get("station"), self.name)
        rules: list[ast.Rule] = []
        if "rules" in keys:
            entry = keys["rules"]
            if not isinstance(entry.value, list):
                self.wrong_type(entry, "a list of rules")
            else:
                for item in self.items(entry):
                    rule = self._optional(item, self.rule)
                    if rule is not None:
                        rules.append(rule)
        return ast.File(station, tuple(rules), whole)

    def _optional(self, entry: _Entry | None, read: Callable[[_Entry], NodeT]) -> NodeT | None:
        if entry is None:
            return None
        try:
            return read(entry)
        except _Skip:
            return None

    def rule(self, entry: _Entry) -> ast.Rule:
        """The rule, or _Skip when it has a mistake (reported; the other rules go on)."""
        errors_before = len(self.diagnostics)
        label = "a rule"
        if isinstance(entry.value, dict) and isinstance(entry.value.get("name"), str):
            label = f"rule {entry.value['name']!r}"
        keys = self.mapping(
            entry,
            (*RULE_KEYS, *sorted(VERBS)),
            label,
            hint=f"a rule takes {', '.join(RULE_KEYS)} and one verb: {', '.join(sorted(VERBS))}"
            + "; clauses go under the verb",
        )
        start = self._node_span(entry.value, entry.span)
        name = self._optional(keys.get("name"), self.name)
        if "name" not in keys:
            self.error("missing-key", f"missing required key 'name' in {label}", start)
        priority = self._optional(
            keys.get("priority"), lambda e: self.integer(e, "a priority", negative=True)
        )
        schedule = self._optional(keys.get("schedule"), self.schedule)
        disabled = False
        if "disabled" in keys:
            flag = keys["disabled"]
            if _is_bool(flag.value):
                disabled = bool(flag.value)
            else:
                self.wrong_type(flag, "true or false")
        verbs = [keys[k] for k in keys if k in VERBS]
        verbs.sort(key=lambda e: (e.key_span.line, e.key_span.col))
        for extra in verbs[1:]:
            self.error(
                "two-verbs",
                f"a rule has one verb; {extra.key!r} follows {verbs[0].key!r}",
                extra.key_span,
                hint="alarm and grant take a list for several statements; "
                "start another rule for another verb",
            )
        statements: tuple[ast.Statement, ...] = ()
        if not verbs:
            if len(keys) == len(entry.value):  # a misspelt verb is already reported
                self.error(
                    "missing-key",
                    f"{label} has no verb; expected one of: {', '.join(sorted(VERBS))}",
                    start,
                )
        else:
            statements = self._optional(verbs[0], self.statements) or ()
        if name is None or len(self.diagnostics) > errors_before:
            raise _Skip
        end = max((s.span for s in statements), key=lambda s: (s.end_line, s.end_col))
        span = Span(self.file, start.line, start.col, end.end_line, end.end_col)
        return ast.Rule(name, priority, statements, schedule, disabled, span)

    def schedule(self, entry: _Entry) -> ast.Literal:
        """A duration (`1 day`) or a cron text (`"0 3 * * *"`)."""
        value = entry.value
        if isinstance(value, int | float) and not _is_bool(value):
            return self.literal(entry, "duration")
        if not isinstance(value, str):
            self.wrong_type(entry, "a duration or a cron text")
            raise _Skip
        if _DURATION_LIKE.fullmatch(value):
            return self.literal(entry, "duration")
        return ast.Literal("text", str(value), self.scalar_span(self.text_of(entry)))

    # -- statements

    def statements(self, entry: _Entry) -> tuple[ast.Statement, ...]:
        verb = entry.key
        if verb in _LIST_VERBS:
            if entry.value is None:
                self.wrong_type(entry, "a list of mappings")
                raise _Skip
            items = self.items(entry)
            if not items:
                self.error("missing-key", f"{verb!r} needs at least one {verb}", entry.span)
                raise _Skip
        else:
            items = [entry]
        out = []
        for item in items:
            statement = self._optional(item, lambda e, verb=verb: self.statement(verb, e))
            if statement is not None:
                out.append(statement)
        if len(out) != len(items):
            raise _Skip
        return tuple(out)

    def statement(self, verb: str, entry: _Entry) -> ast.Statement:
        required, optional = CLAUSE_KEYS[verb]
        allowed = (*required, *optional)
        hint = f"{verb} takes: {', '.join(allowed) if allowed else 'no clauses'}"
        clauses = self.mapping(entry, allowed, repr(verb), hint=hint)
        where_missing = entry.key_span if entry.key == verb else entry.span
        written = [e.key for e in self.entries(entry.value, entry.span)]
        for key in required:
            # A misspelt key (`wher`) is reported once, as unknown, with this suggestion.
            misspelt = any(
                difflib.get_close_matches(w, list(allowed), n=1) == [key]
                for w in written
                if w not in allowed
            )
            if key not in clauses and not misspelt:
                self.error(
                    "missing-key", f"missing required key {key!r} in {verb!r}", where_missing
                )
        before = len(self.diagnostics)
        values: dict[str, Any] = {}
        for key, clause in clauses.items():
            values[key] = self._optional(clause, lambda e, v=verb: self.clause(v, e))
        if len(self.diagnostics) != before or any(k not in clauses for k in required):
            raise _Skip
        spans = [entry.key_span, *(self._end_of(c) for c in clauses.values())]
        start = entry.key_span
        last = max(spans, key=lambda s: (s.end_line, s.end_col))
        span = Span(self.file, start.line, start.col, last.end_line, last.end_col)
        return _build(verb, values, span)

    def _end_of(self, entry: _Entry) -> Span:
        """Roughly where a clause value ends: its last scalar, for a statement's span."""
        value = entry.value
        if isinstance(value, dict) and value:
            return max(
                (self._end_of(e) for e in self.entries(value, entry.span)),
                key=lambda s: (s.end_line, s.end_col),
            )
        if isinstance(value, list) and value:
            return max(
                (self._end_of(e) for e in self.items(entry)),
                key=lambda s: (s.end_line, s.end_col),
            )
        if value is None or isinstance(value, dict | list):
            return entry.span
        return self.scalar_span(self.text_of(entry))

    def clause(self, verb: str, entry: _Entry) -> Any:
        key = entry.key
        if key in ("where", "when", "clear_when", "while"):
            return self.expression(entry)
        if key == "on":
            return self.location_set(entry) if verb == "replicate" else self.name(entry)
        if key == "at":
            if verb == "place":
                if not isinstance(entry.value, str):
                    self.wrong_type(entry, "a path template (text)")
                    raise _Skip
                text = self.text_of(entry)
                return ast.Literal("text", text.text, self.scalar_span(text))
            return self.name(entry)
        if key in ("to", "workflow"):
            return self.name(entry)
        if key == "copies":
            return self.integer(entry, "a number of copies", negative=False)
        if key in ("release_from", "from", "notify"):
            return self.names(entry)
        if key == "until" or key == "sample":
            return self.literal(entry, "percent")
        if key in ("for", "every"):
            return self.literal(entry, "duration")
        if key == "severity":
            return self.choice(entry, _SEVERITIES)[0]
        if key == "notify_before":
            return self.notify_before(entry)
        if key == "order_by":
            return self.order_by(entry)
        if key == "perms":
            return self.perms(entry)
        if key == "principals":
            return tuple(self.principal(item) for item in self.items(entry))
        if key == "with":
            return self.with_args(entry)
        raise AssertionError(f"no reader for clause {key!r}")  # CLAUSE_KEYS and this agree

    # -- structured clause values

    def location_set(self, entry: _Entry) -> ast.LocationSet:
        """`on`: a name, a list of names, `{tier: T}` or `{where: E}`."""
        value = entry.value
        if isinstance(value, dict):
            keys = self.mapping(entry, ("tier", "where"), "'on'")
            span = self._node_span(value, entry.span)
            if len(keys) != 1:
                self.error(
                    "bad-value" if keys else "missing-key",
                    "'on' takes one of 'tier' or 'where'",
                    span,
                    hint="`on: {tier: disk}` or `on: {where: 'location.site == \"aps\"'}`",
                )
                raise _Skip
            if "tier" in keys:
                tier = self.name(keys["tier"], quoted=True)
                return ast.LocationTier(tier, _join(self.file, span, tier.span))
            query = self.expression(keys["where"])
            return ast.LocationQuery(query, _join(self.file, span, query.span))
        names = self.names(entry)
        if not names:
            self.error("bad-value", "'on' needs at least one location", entry.span)
            raise _Skip
        return ast.LocationNames(names, _join(self.file, names[0].span, names[-1].span))

    def notify_before(self, entry: _Entry) -> ast.NotifyBefore:
        keys = self.mapping(entry, ("channel", "before"), "'notify_before'")
        missing = [k for k in ("channel", "before") if k not in keys]
        for key in missing:
            self.error(
                "missing-key", f"missing required key {key!r} in 'notify_before'", entry.key_span
            )
        channel = self._optional(keys.get("channel"), self.name)
        before = self._optional(keys.get("before"), lambda e: self.literal(e, "duration"))
        if channel is None or before is None:
            raise _Skip
        start = self._node_span(entry.value, entry.span)
        return ast.NotifyBefore(channel, before, _join(self.file, start, before.span))

    def order_by(self, entry: _Entry) -> ast.OrderBy:
        """`{expr: E, desc: true}`; a bare expression is accepted for `{expr: E}`."""
        if not isinstance(entry.value, dict):
            expr = self.expression(entry)
            return ast.OrderBy(expr, False, expr.span)
        keys = self.mapping(entry, ("expr", "desc"), "'order_by'")
        if "expr" not in keys:
            self.error("missing-key", "missing required key 'expr' in 'order_by'", entry.key_span)
            raise _Skip
        expr = self.expression(keys["expr"])
        descending = False
        if "desc" in keys:
            if not _is_bool(keys["desc"].value):
                self.wrong_type(keys["desc"], "true or false")
                raise _Skip
            descending = bool(keys["desc"].value)
        start = self._node_span(entry.value, entry.span)
        return ast.OrderBy(expr, descending, _join(self.file, start, expr.span))

    def perms(self, entry: _Entry) -> tuple[str, ...]:
        items = self.items(entry)
        if not items:
            self.error("bad-value", "'perms' needs read, write or both", entry.span)
            raise _Skip
        return tuple(self.choice(item, _PERMS)[0] for item in items)

    def principal(self, entry: _Entry) -> ast.Principal:
        """`experiment.users`, `user:NAME` or `group:NAME` (also `{user: NAME}`)."""
        value = entry.value
        if isinstance(value, dict) and len(value) == 1:
            ((item,),) = [list(self.entries(value, entry.span))]
            if item.key in ("user", "group"):
                name = self.name(item, quoted=True)
                kind = "user" if item.key == "user" else "group"
                return ast.Principal(kind, name, _join(self.file, item.key_span, name.span))
        if isinstance(value, str):
            text = self.text_of(entry)
            span = self.scalar_span(text)
            if value == "experiment.users":
                return ast.Principal("experiment-users", None, span)
            found = _PRINCIPAL.fullmatch(value)
            if found:
                name = self.name(entry, quoted=True, skip=found.start(2))
                kind = "user" if found.group(1) == "user" else "group"
                return ast.Principal(kind, name, span)
        shown = _describe(value, str(value) if isinstance(value, str) else None)
        self.error(
            "bad-value",
            f"a principal is one of {', '.join(_PRINCIPAL_FORMS)}, not {shown}"
            + (_suggest(str(value), ("experiment.users",)) if isinstance(value, str) else ""),
            entry.span,
        )
        raise _Skip

    def with_args(self, entry: _Entry) -> tuple[ast.KeywordArgument, ...]:
        """`with: {qmap: experiment.meta.qmap}`: each value is an expression."""
        if not isinstance(entry.value, dict):
            self.wrong_type(entry, "a mapping of names to expressions")
            raise _Skip
        out = []
        bad = False
        for item in self.entries(entry.value, entry.span):
            if not isinstance(_raw_key(entry.value, item), str) or not _IDENT.fullmatch(item.key):
                self.error(
                    "bad-value",
                    f"{item.key!r} is not a variable name; write letters, digits and _",
                    item.key_span,
                )
                bad = True
                continue
            value = self._optional(item, self.expression)
            if value is None:
                bad = True
                continue
            out.append(
                ast.KeywordArgument(item.key, value, _join(self.file, item.key_span, value.span))
            )
        if bad:
            raise _Skip
        return tuple(out)


def _raw_key(mapping: dict[Any, Any], entry: _Entry) -> Any:
    """The key as loaded (a boolean under YAML 1.1, a number, ...), found by its name."""
    for key in mapping:
        shown = "true" if key is True else "false" if key is False else str(key)
        if shown == entry.key:
            return key
    return entry.key


def _join(file: str, start: Span, end: Span) -> Span:
    return Span(file, start.line, start.col, end.end_line or end.line, end.end_col or end.col)


def _build(verb: str, v: dict[str, Any], span: Span) -> ast.Statement:
    """The statement node of `verb` from its clause values (the DSL's defaults for the rest)."""
    g = v.get
    match verb:
        case "place":
            return ast.Place(v["where"], g("on"), g("at"), span)
        case "replicate":
            return ast.Replicate(v["where"], g("copies"), g("on"), span)
        case "archive":
            return ast.Archive(v["where"], g("to"), g("release_from", ()), g("notify_before"), span)
        case "release":
            return ast.Release(
                v["where"],
                g("from", ()),
                g("when"),
                g("until"),
                g("order_by"),
                g("notify_before"),
                span,
            )
        case "expire":
            return ast.Expire(v["where"], g("notify_before"), span)
        case "protect":
            return ast.Protect(v["where"], span)
        case "alarm":
            return ast.Alarm(
                v["when"], g("clear_when"), g("notify", ()), g("severity"), g("for"), span
            )
        case "grant":
            # YAML has no `on experiment directory` clause: a grant always applies there.
            return ast.Grant(v["perms"], g("principals", ()), True, g("at"), g("while"), span)
        case "run":
            return ast.Run(v["workflow"], g("where"), g("with", ()), span)
        case _:
            return ast.Verify(g("where"), g("on"), g("every"), g("sample"), span)


def _placed(exc: DiagnosticError, source: _Source) -> list[Diagnostic]:
    """yamlsource's diagnostics, with a place for the reader's errors (a bad character).

    ruamel reports a character YAML does not allow with its offset, not a mark, so
    yamlsource cannot place it; the offset is enough to find its line and column.
    """
    offset = getattr(exc.__cause__, "position", None)
    out = []
    for diagnostic in exc.diagnostics:
        if (diagnostic.span is None or diagnostic.span.line <= 0) and isinstance(offset, int):
            line, col = source.position(min(max(offset, 0), len(source.text)))
            diagnostic = dataclasses.replace(diagnostic, span=Span(source.file, line, col))
        elif diagnostic.span is None or diagnostic.span.line <= 0:
            diagnostic = dataclasses.replace(diagnostic, span=Span(source.file, 1, 1))
        out.append(diagnostic)
    return out


def parse_yaml_rules(text: str, file: str) -> tuple[ast.File | None, list[Diagnostic]]:
    """The AST of a YAML rule file, or None and every error found in it (sorted).

    The same contract as `parse_policy`: the AST only when there is no error, spans
    pointing into `file`, and never an exception, whatever the text.
    """
    tree, diagnostics = parse_yaml_rules_partial(text, file)
    return (None, diagnostics) if diagnostics else (tree, [])


def parse_yaml_rules_partial(text: str, file: str) -> tuple[ast.File, list[Diagnostic]]:
    """Every error of a YAML rule file (sorted) and a File of the rules without one.

    A rule with an unknown, missing or mistyped key is left out and the others kept,
    so `policyd check` can still check them; a file that is not YAML, or not a mapping,
    gives an empty File. Only for callers that report the diagnostics: one that needs
    the whole file (convert) uses `parse_yaml_rules`.
    """
    with gc_paused():  # the loaded tree and the AST live to the end (see gcpause)
        return _parse_yaml_rules_partial(text, file)


def _parse_yaml_rules_partial(text: str, file: str) -> tuple[ast.File, list[Diagnostic]]:
    source = text.removeprefix("\ufeff")
    empty = ast.File(None, (), Span(file, 1, 1))
    try:
        try:
            tree = parse_yaml(source, file)
        except DiagnosticError as exc:
            return empty, sorted_diagnostics(_placed(exc, _Source(source, file)))
        except Exception as exc:  # ruamel raises more than YAMLError on odd input
            message = f"invalid YAML: {type(exc).__name__}"
            return empty, [Diagnostic("yaml-syntax", message, Span(file, 1, 1))]
        reader = _Reader(_Source(source, file))
        result = reader.top(tree) or empty
        # A value reached twice through an alias reports its mistakes once.
        return result, sorted_diagnostics(list(dict.fromkeys(reader.diagnostics)))
    except RecursionError:
        message = "the input is nested too deeply to read"
        return empty, [Diagnostic("too-deep", message, Span(file))]
    except Exception as exc:  # the promise is "never a traceback"
        message = f"internal error while reading YAML rules: {type(exc).__name__}: {exc}"
        return empty, [Diagnostic("internal-error", message, Span(file))]
