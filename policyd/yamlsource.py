"""YAML input that remembers where everything came from.

Config and rule files are written by hand and reviewed in git, so a mistake in one
must be reported at its line and column, like a compiler error, and every mistake in
the file at once rather than one per run. This module is the one place that reads
YAML for policyd: it parses with ruamel.yaml's round-trip loader (which keeps the
position of every key and value) as YAML 1.2 (so `on:` and `no:` stay text), or, for
the plain YAML most files are written in, with a quicker reader that builds the same
tree (see "the quick reader" below); it runs pydantic validation on the result, and
turns each pydantic error into a `Diagnostic` pointing into the file. It knows nothing
about what the files mean.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import ScalarNode
from ruamel.yaml.scanner import Scanner

from policyd.diagnostics import Diagnostic, DiagnosticError, Span

ModelT = TypeVar("ModelT", bound=BaseModel)

#: One step into a loaded tree: a mapping key or a list index.
PathItem = str | int
YamlPath = Sequence[PathItem]

_KEY_MARKER = "[key]"  # pydantic's last loc item when a mapping key (not its value) is bad


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.version = (1, 2)
    yaml.allow_duplicate_keys = False
    return yaml


def _syntax_diagnostic(exc: YAMLError, file: str) -> Diagnostic:
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    if mark is None or ("<stream end>" in problem and getattr(exc, "context_mark", None)):
        # "the file ended" is true but useless; where the unclosed thing opened is not.
        mark = getattr(exc, "context_mark", None) or mark
    span = Span(file, mark.line + 1, mark.column + 1) if mark is not None else Span(file)
    if isinstance(exc, DuplicateKeyError):
        found = re.search(r'duplicate key "(.*?)"', problem)
        key = found.group(1) if found else "?"
        return Diagnostic(
            "duplicate-key",
            f"key {key!r} appears twice in the same mapping",
            span,
            hint="keep one of them: YAML keeps no second value for a key",
        )
    hint = None
    context = getattr(exc, "context", None) if isinstance(exc, MarkedYAMLError) else None
    context_mark = getattr(exc, "context_mark", None)
    if "\\t" in problem or "'\t'" in problem:
        hint = "indent YAML with spaces, not tabs"
    elif context and context_mark is not None:
        hint = f"{context}, which starts at line {context_mark.line + 1}"
    return Diagnostic("yaml-syntax", f"invalid YAML: {problem}", span, hint=hint)


# ---------------------------------------------------------------------------
# the quick reader
#
# ruamel's pure-Python scanner spends about a millisecond per rule of a large rule
# file, most of it gathering comments that nothing reads back, and its C scanner is
# YAML 1.1. Files written by hand use a small part of YAML: block mappings and lists,
# one-line plain and quoted scalars, flow lists and mappings. The quick reader reads
# exactly that part and builds the tree ruamel's round-trip loader builds (CommentedMap
# and CommentedSeq with the same line and column for every key, value and item, and
# the same scalars, made by ruamel's own resolver and constructor). It gives up on
# anything else (anchors, tags, block and multi-line scalars, directives, tabs,
# duplicate keys, any mistake), and ruamel then reads the text: what it accepts, how
# it reads it and how it words an error stay ruamel's. Comments are not kept; nothing
# reads them from a loaded tree.


class _NotQuick(Exception):
    """The text uses YAML the quick reader leaves to ruamel (or is not valid YAML)."""


# Text that ruamel reads as a plain reading does: no tab, no CR or other line break
# than LF, no byte-order mark, nothing the YAML reader rejects.
_QUICK_TEXT = re.compile(
    "[\n -~\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]*"
)
# A block mapping key: a plain scalar with no `:`, `#`, comma or bracket (a key with
# one is left to ruamel), then `:` and a space or the end of the line.
_BLOCK_KEY = re.compile(
    r"([^\s\-?:,\[\]{}#&*!|>'\"%@`][^\s:,\[\]{}#]*(?: +[^\s:,\[\]{}#]+)*):(?= |$)"
)
# A plain scalar in a flow collection, which a comma, a bracket or `: ` ends; a `:`
# followed by more of the word is text to ruamel, as in `[user:bob]`.
_FLOW_WORD = r"(?:[^\s:,\[\]{}#]|:(?=[^\s:,\[\]{}#]))*"
_FLOW_PLAIN = re.compile(
    rf"(?:[^\s\-?:,\[\]{{}}#&*!|>'\"%@`]|-(?=[^\s:,\[\]{{}}#])){_FLOW_WORD}"
    rf"(?: +[^\s:,\[\]{{}}#]{_FLOW_WORD})*"
)
_PLAIN_FIRST_NOT = frozenset("?:,[]{}#&*!|>'\"%@`")  # indicators a plain scalar cannot start with
_SIMPLE_KEY_MAX = 1000  # ruamel rejects a key longer than 1024 characters
_MAX_DEPTH = 100  # deeper nesting is left to ruamel (and its recursion limit)
_CONSTRUCTED_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "timestamp")
)
_STR_TAG = "tag:yaml.org,2002:str"
_ESCAPES = Scanner.ESCAPE_REPLACEMENTS
_ESCAPE_CODES = Scanner.ESCAPE_CODES
_HEX = frozenset("0123456789abcdefABCDEF")
_DOUBLE_QUOTED_STOP = re.compile(r'["\\]')


def _is_entry(line: str, col: int) -> bool:
    """A block list entry (`- ` or a lone `-`) starts at `col`."""
    return line.startswith("-", col) and (len(line) == col + 1 or line[col + 1] == " ")


def _rest_is_blank(line: str, at: int) -> bool:
    """Only spaces, or spaces and a comment, follow `at` on the line."""
    rest = line[at:]
    body = rest.lstrip(" ")
    return not body or (body[0] == "#" and len(body) < len(rest))


class _QuickReader:
    """One pass over a text's lines that builds ruamel's round-trip tree or gives up.

    Lines and columns are 0-based, as ruamel keeps them in `.lc`. A "row" is a line
    index; `len(self.lines)` stands for the end of the text.
    """

    def __init__(self, text: str) -> None:
        text = text.replace("\r\n", "\n")  # one line break to ruamel, as to us
        if not _QUICK_TEXT.fullmatch(text):
            raise _NotQuick
        self.lines = text.split("\n")
        self.stop = len(self.lines)
        # Per line, the column of its first character (-1: a blank or comment line, or
        # the `---` that may open the document), and per row the first line from there
        # on that has content.
        self.indent: list[int] = []
        started = False
        for line in self.lines:
            body = line.lstrip(" ")
            if not body or body[0] == "#":
                self.indent.append(-1)
                continue
            marker = line[:3] in ("---", "...") and line[3:4] in ("", " ")
            if not started and line.rstrip(" ") == "---":
                self.indent.append(-1)
            elif line[0] == "%" or marker:
                raise _NotQuick  # a directive, another document, or `--- value`
            else:
                self.indent.append(len(line) - len(body))
            started = True
        self.next_row = [self.stop] * (self.stop + 1)
        for row in range(self.stop - 1, -1, -1):
            self.next_row[row] = row if self.indent[row] >= 0 else self.next_row[row + 1]
        self.yaml = _yaml()
        self.resolver = self.yaml.resolver
        first_chars = self.resolver.versioned_resolver
        if None in first_chars:
            raise _NotQuick  # a resolver for any first character: ask it about every scalar
        self.resolved_first = frozenset(first_chars)
        self.tags: dict[str, Any] = {}  # plain text -> its tag: the same words come back
        self.depth = 0

    def document(self) -> Any:
        row = self.next_row[0]
        if row == self.stop:
            raise _NotQuick  # an empty document: ruamel is quick enough for it
        node, row = self.block(row)
        if row != self.stop:
            raise _NotQuick  # something after the top-level node
        return node

    def mark(self, row: int) -> list[int]:
        """Where ruamel places the token that starts content line `row` (or the end)."""
        if row == self.stop:
            return [self.stop - 1, len(self.lines[-1])]
        return [row, self.indent[row]]

    def enter(self) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise _NotQuick

    # -- block collections

    def block(self, row: int) -> tuple[Any, int]:
        """The block mapping or list that starts content line `row`, and the next row."""
        col = self.indent[row]
        if _is_entry(self.lines[row], col):
            return self.sequence(row, col, indentless=False)
        return self.mapping(row, col)

    def below(self, row: int, col: int) -> tuple[Any, list[int], int]:
        """The value of a key (or list entry) at `col` that ends its line `row`.

        A block collection on the lines below, or None. ruamel places an empty value at
        the next token, which for a key is where the next content line starts.
        """
        following = self.next_row[row + 1]
        if following < self.stop and self.indent[following] > col:
            node, after = self.block(following)
            return node, self.mark(following), after
        return None, self.mark(following), following

    def mapping(self, row: int, col: int) -> tuple[CommentedMap, int]:
        """The block mapping whose first key is at (row, col), and the next content row."""
        self.enter()
        node = CommentedMap()
        lines_cols = node.lc
        lines_cols.line, lines_cols.col = row, col
        while True:
            line = self.lines[row]
            found = _BLOCK_KEY.match(line, col)
            if found is None or found.end() - col > _SIMPLE_KEY_MAX:
                raise _NotQuick
            key = self.plain(found.group(1))
            if key in node:
                raise _NotQuick  # ruamel words the duplicate-key error
            colon = found.end()
            start = len(line) - len(line[colon:].lstrip(" "))
            if start < len(line) and line[start] != "#":
                value, value_at, last = self.inline(row, start)
                after = self.next_row[last + 1]
                if after < self.stop and self.indent[after] > col:
                    raise _NotQuick  # a multi-line scalar, or a mistake
            else:
                following = self.next_row[row + 1]
                if (
                    following < self.stop
                    and self.indent[following] == col
                    and _is_entry(self.lines[following], col)
                ):  # an indentless list
                    value, after = self.sequence(following, col, indentless=True)
                    value_at = self.mark(following)
                else:
                    value, value_at, after = self.below(row, col)
                if (
                    value is None
                    and start < len(line)
                    and after < self.stop
                    and self.indent[after] == col
                ):
                    # A comment after the `:` stays with it when the next key follows,
                    # and ruamel then places the empty value just after the `:`.
                    value_at = [row, colon]
            lines_cols.add_kv_line_col(key, [row, col, *value_at])
            node[key] = value
            if after == self.stop or self.indent[after] < col:
                break
            if self.indent[after] > col:
                raise _NotQuick
            row = after
        node.fa.set_block_style()
        self.depth -= 1
        return node, after

    def sequence(self, row: int, col: int, *, indentless: bool) -> tuple[CommentedSeq, int]:
        """The block list whose first `-` is at (row, col), and the next content row.

        An indentless list (a key's value, its `-` under the key) ends at the next key;
        any other list ends where a line starts left of its `-`.
        """
        self.enter()
        node = CommentedSeq()
        lines_cols = node.lc
        lines_cols.line, lines_cols.col = row, col
        items: list[Any] = []
        while True:
            line = self.lines[row]
            start = len(line) - len(line[col + 1 :].lstrip(" "))
            if start == len(line) or line[start] == "#":
                value, value_at, after = self.below(row, col)
                if value is None:
                    value_at = [row, col + 1]  # ruamel: just after the `-`
            elif _is_entry(line, start):
                raise _NotQuick  # `- - x`
            elif _BLOCK_KEY.match(line, start):
                value, after = self.mapping(row, start)
                value_at = [row, start]
            else:
                value, value_at, last = self.inline(row, start)
                after = self.next_row[last + 1]
                if after < self.stop and self.indent[after] > col:
                    raise _NotQuick
            lines_cols.add_idx_line_col(len(items), value_at)
            items.append(value)
            if after == self.stop or self.indent[after] < col:
                break
            if self.indent[after] > col:
                raise _NotQuick
            if not _is_entry(self.lines[after], col):
                if indentless:
                    break
                raise _NotQuick
            row = after
        node.extend(items)  # as ruamel does: `append` would shift comments one at a time
        node.fa.set_block_style()
        self.depth -= 1
        return node, after

    # -- values on one line (a flow collection may go on over several)

    def inline(self, row: int, start: int) -> tuple[Any, list[int], int]:
        """The value that starts at (row, start), where it is and the row it ends on."""
        line = self.lines[row]
        first = line[start]
        last = row
        if first in "'\"":
            value, end = self.quoted(line, start)
        elif first in "[{":
            value, last, end = self.flow(row, start)
            line = self.lines[last]
        elif first in _PLAIN_FIRST_NOT or _is_entry(line, start):
            raise _NotQuick
        else:
            text = line[start:]
            cut = text.find(" #")
            text = (text if cut < 0 else text[:cut]).rstrip(" ")
            if ": " in text or text.endswith(":"):
                raise _NotQuick  # a mapping where YAML allows none
            return self.plain(text), [row, start], row
        if not _rest_is_blank(line, end):
            raise _NotQuick
        return value, [row, start], last

    def plain(self, text: str) -> Any:
        """A plain scalar's value under YAML 1.2, as ruamel's round-trip loader makes it."""
        if text[0] not in self.resolved_first:
            return text
        tag = self.tags.get(text)
        if tag is None:
            tag = self.tags[text] = self.resolver.resolve(ScalarNode, text, (True, False))
        if tag == _STR_TAG:
            return text
        if str(tag) not in _CONSTRUCTED_TAGS:
            raise _NotQuick  # `<<` merges, `=`: for ruamel
        try:
            return self.yaml.constructor.construct_object(ScalarNode(tag, text, None, None))
        except Exception as exc:  # an impossible date, say: ruamel reports it
            raise _NotQuick from exc

    def quoted(self, line: str, start: int) -> tuple[str, int]:
        """A quoted scalar that closes on its line: its value and the column past it."""
        chunks: list[str] = []
        at = start + 1
        if line[start] == "'":
            while True:  # `''` is a quote; nothing else is special
                close = line.find("'", at)
                if close < 0:
                    raise _NotQuick
                chunks.append(line[at:close])
                if not line.startswith("''", close):
                    return "".join(chunks), close + 1
                chunks.append("'")
                at = close + 2
        while True:
            found = _DOUBLE_QUOTED_STOP.search(line, at)
            if found is None:
                raise _NotQuick
            chunks.append(line[at : found.start()])
            if found.group() == '"':
                return "".join(chunks), found.end()
            code = line[found.end() : found.end() + 1]
            at = found.end() + 1
            if code in _ESCAPES:
                chunks.append(_ESCAPES[code])
            elif code in _ESCAPE_CODES:
                digits = line[at : at + _ESCAPE_CODES[code]]
                if len(digits) != _ESCAPE_CODES[code] or not set(digits) <= _HEX:
                    raise _NotQuick
                chunks.append(chr(int(digits, 16)))
                at += len(digits)
            else:
                raise _NotQuick  # an escaped line break, or no escape at all

    def flow(self, row: int, start: int) -> tuple[Any, int, int]:
        """The flow list or mapping that opens at (row, start), and the (row, column) past it.

        It may go on over several lines: in flow context ruamel ignores indentation.
        """
        self.enter()
        line = self.lines[row]
        mapping = line[start] == "{"
        node: Any = CommentedMap() if mapping else CommentedSeq()
        lines_cols = node.lc
        lines_cols.line, lines_cols.col = row, start
        items: list[Any] = []
        close = "}" if mapping else "]"
        row, at = self.flow_space(row, start + 1)
        while self.lines[row][at] != close:
            line = self.lines[row]
            if mapping:
                found = _FLOW_PLAIN.match(line, at)
                if found is None or not line.startswith(": ", found.end()):
                    raise _NotQuick  # `{a}`, `{a : b}`, `{'a': b}`, a key over two lines...
                key = self.plain(found.group(0))
                if key in node:
                    raise _NotQuick
                value_row, start = self.flow_space(row, found.end() + 1)
                lines_cols.add_kv_line_col(key, [row, at, value_row, start])
                value, row, end = self.flow_node(value_row, start)
                node[key] = value
            else:
                lines_cols.add_idx_line_col(len(items), [row, at])
                value, row, end = self.flow_node(row, at)
                items.append(value)
            row, at = self.flow_space(row, end)
            if self.lines[row][at] == ",":
                row, at = self.flow_space(row, at + 1)
            elif self.lines[row][at] != close:
                raise _NotQuick  # `[a: b]`, `[a b\n c]`...
        if items:  # a list's items (a mapping's went in one by one)
            node.extend(items)
        if node:
            node.fa.set_flow_style()
        self.depth -= 1
        return node, row, at + 1

    def flow_node(self, row: int, start: int) -> tuple[Any, int, int]:
        """A scalar or collection in a flow collection, and the (row, column) past it."""
        line = self.lines[row]
        first = line[start]
        if first in "'\"":
            value, end = self.quoted(line, start)
            return value, row, end
        if first in "[{":
            return self.flow(row, start)
        found = _FLOW_PLAIN.match(line, start)
        if found is None:
            raise _NotQuick  # `[,]`, `{a: }`, an alias, a tag...
        return self.plain(found.group(0)), row, found.end()

    def flow_space(self, row: int, at: int) -> tuple[int, int]:
        """The next character in a flow collection, past spaces, comments and line breaks."""
        line = self.lines[row]
        while True:
            body = line[at:].lstrip(" ")
            if body and body[0] != "#":
                return row, len(line) - len(body)
            if body and len(body) == len(line) - at and at > 0 and line[at - 1] != " ":
                raise _NotQuick  # `[a,#b]`: ruamel reads a comment there, YAML does not
            row += 1
            if row == self.stop:
                raise _NotQuick  # never closed
            line, at = self.lines[row], 0


def parse_yaml(text: str, file: str | Path) -> Any:
    """Parse one YAML document; every mapping and list in it knows its position.

    Raises DiagnosticError (`yaml-syntax`, `duplicate-key`) with the place of the error.
    """
    with contextlib.suppress(_NotQuick):
        return _QuickReader(text).document()
    try:
        return _yaml().load(text)
    except YAMLError as exc:
        raise DiagnosticError([_syntax_diagnostic(exc, str(file))]) from exc


def load_yaml(path: str | Path) -> Any:
    """Read and parse a YAML file; a missing or unreadable file is a diagnostic too."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DiagnosticError([Diagnostic("file-not-found", "no such file", Span(file))]) from exc
    except IsADirectoryError as exc:
        raise DiagnosticError(
            [Diagnostic("file-unreadable", "is a folder, not a file", Span(file))]
        ) from exc
    except UnicodeDecodeError as exc:
        raise DiagnosticError(
            [Diagnostic("file-unreadable", f"not UTF-8 text ({exc.reason})", Span(file))]
        ) from exc
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise DiagnosticError(
            [Diagnostic("file-unreadable", f"cannot read: {reason}", Span(file))]
        ) from exc
    return parse_yaml(text, file)


def to_plain(node: Any) -> Any:
    """The same data as built-in Python types, which is what validation should see.

    ruamel's round-trip types (CommentedMap, ScalarFloat, quoted-string subclasses)
    carry formatting; pydantic and the code after it must not depend on them.
    """
    if isinstance(node, Mapping):
        return {to_plain(key): to_plain(value) for key, value in node.items()}
    if isinstance(node, list | tuple):
        return [to_plain(item) for item in node]
    if isinstance(node, bool) or node is None:
        return node
    if type(node).__name__ == "ScalarBoolean":
        return bool(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, dt.datetime):
        return dt.datetime(
            node.year,
            node.month,
            node.day,
            node.hour,
            node.minute,
            node.second,
            node.microsecond,
            node.tzinfo,
        )
    return node


@dataclass(frozen=True)
class _Walk:
    """How far a pydantic location could be followed into the loaded tree."""

    path: tuple[PathItem, ...]  # the steps that exist in the data
    key_pos: tuple[int, int]  # 1-based position of the last key (or list item) reached
    value_pos: tuple[int, int]  # 1-based position of its value
    at_key: bool  # the location named the key itself, not its value
    rest: tuple[PathItem, ...]  # steps that were not in the data (a missing key, say)


def _lc_pair(node: Any, step: PathItem) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Positions of the key and of the value for one step, 1-based, if recorded."""
    if isinstance(node, CommentedMap):
        try:
            k_line, k_col, v_line, v_col = node.lc.data[step]
        except (KeyError, TypeError, ValueError):
            return None  # a key merged in with `<<:` has no position of its own here
        key = (k_line + 1, k_col + 1)
        value = (v_line + 1, v_col + 1)
        if node.get(step) is None and v_line > k_line:
            value = key  # `key:` with nothing after it: the value's "place" is the next line
        return key, value
    if isinstance(node, CommentedSeq):
        try:
            line, col = node.lc.data[step]
        except (KeyError, TypeError, ValueError):
            return None
        return (line + 1, col + 1), (line + 1, col + 1)
    return None


def _root_pos(tree: Any) -> tuple[int, int]:
    if isinstance(tree, CommentedMap | CommentedSeq) and tree.lc.line is not None:
        return tree.lc.line + 1, (tree.lc.col or 0) + 1
    return 1, 1


def _walk(tree: Any, loc: YamlPath) -> _Walk:
    node = tree
    path: list[PathItem] = []
    key_pos = value_pos = _root_pos(tree)
    rest: list[PathItem] = []
    at_key = False
    for step in loc:
        if step == _KEY_MARKER:
            at_key = True
            continue
        found = False
        if isinstance(node, Mapping):
            try:
                found = step in node
            except TypeError:
                found = False
        elif (
            isinstance(node, list)
            and isinstance(step, int)
            and not isinstance(step, bool)
            and 0 <= step < len(node)
        ):
            found = True
        if not found:
            # Not data: a missing key, or a step pydantic adds for unions and
            # validators. Either way the nearest real parent is the place to point at.
            rest.append(step)
            continue
        pair = _lc_pair(node, step)
        if pair is not None:
            key_pos, value_pos = pair
        path.append(step)
        node = node[step]
    return _Walk(tuple(path), key_pos, value_pos, at_key, tuple(rest))


def position(tree: Any, path: YamlPath, *, at_key: bool = False) -> tuple[int, int]:
    """The 1-based (line, column) of the value at `path` in a tree from `load_yaml`.

    With `at_key`, or when `path` ends in pydantic's `"[key]"`, the position of the key
    instead. Steps that are not in the data are skipped, so an unknown path gives the
    nearest parent that exists (its key, which is where a reader looks for it).
    """
    walk = _walk(tree, path)
    if walk.at_key or at_key or walk.rest:
        return walk.key_pos
    return walk.value_pos


def span_at(tree: Any, path: YamlPath, file: str | Path, *, at_key: bool = False) -> Span:
    """A Span for `path` in `file`; see `position`."""
    line, col = position(tree, path, at_key=at_key)
    return Span(str(file), line, col)


def format_path(path: YamlPath) -> str:
    """`locations.voyager.capacity`, `rules[2].place`: the key path as a reader writes it."""
    out = ""
    for step in path:
        if isinstance(step, int) and not isinstance(step, bool):
            out += f"[{step}]"
        else:
            text = str(step)
            if text == "" or re.search(r"[\s.\[\]'\"]", text):
                text = repr(text)
            out += f".{text}" if out else text
    return out


# ---------------------------------------------------------------------------
# pydantic errors -> diagnostics


def _unwrap(tp: Any) -> Any:
    """The container or model type under Annotated and Optional wrappers."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin is typing.Union or origin is types.UnionType:
            members = [arg for arg in typing.get_args(tp) if arg is not type(None)]
            structured = [
                arg
                for arg in members
                if typing.get_origin(arg) is not None
                or (isinstance(arg, type) and issubclass(arg, BaseModel))
            ]
            if len(members) == 1:
                tp = members[0]
            elif structured:
                tp = structured[0]
            else:
                return tp
        else:
            return tp


def _model_at(model_cls: type[BaseModel], path: YamlPath) -> type[BaseModel] | None:
    """The model class that validates the mapping at `path`, if the types say."""
    tp: Any = model_cls
    for step in path:
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = next(
                (
                    info
                    for name, info in tp.model_fields.items()
                    if (info.alias or name) == step or name == step
                ),
                None,
            )
            if field is None:
                return None
            tp = field.annotation
        elif origin in (dict, Mapping, typing.Mapping):
            tp = typing.get_args(tp)[1]
        elif origin in (list, Sequence, typing.Sequence, tuple):
            tp = typing.get_args(tp)[0]
        else:
            return None
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    return None


def _keys_of(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"text {value!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dt.date):
        return f"the date {value.isoformat()}"
    return type(value).__name__


_EXPECTED_TYPE = {
    "string_type": "text",
    "string_sub_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "dataclass_type": "a mapping (key: value)",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "frozen_set_type": "a list",
    "none_required": "nothing",
    "date_type": "a date",
    "datetime_type": "a date and time",
}

_BOUNDS = {
    "greater_than_equal": ("ge", "at least"),
    "greater_than": ("gt", "more than"),
    "less_than_equal": ("le", "at most"),
    "less_than": ("lt", "less than"),
}


def _clean_message(msg: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if msg.startswith("Input should be "):
        msg = "expected " + msg[len("Input should be ") :]
    return msg


def _prefixed(where: str, text: str) -> str:
    return f"{where}: {text}" if where else text


def _error_to_diagnostic(
    error: Mapping[str, Any],
    tree: Any,
    file: str,
    model_cls: type[BaseModel],
) -> Diagnostic:
    kind = error["type"]
    loc = tuple(error.get("loc", ()))
    walk = _walk(tree, loc)
    where = format_path(walk.path)
    given = error.get("input")

    if kind == "missing":
        key = walk.rest[-1] if walk.rest else "?"
        line, col = walk.key_pos
        if where:
            message = f"{where}: missing required key {key!r}"
        else:
            message = f"missing required top-level key {key!r}"
        return Diagnostic("missing-key", message, Span(file, line, col))

    if kind == "extra_forbidden":
        key = walk.path[-1] if walk.path else (walk.rest[-1] if walk.rest else "?")
        parent = walk.path[:-1] if walk.path else ()
        line, col = walk.key_pos
        model = _model_at(model_cls, parent)
        allowed = sorted(_keys_of(model)) if model is not None else []
        parent_text = format_path(parent)
        message = f"unknown key {key!r} in {parent_text}" if parent_text else f"unknown key {key!r}"
        if allowed:
            message += f"; expected one of: {', '.join(allowed)}"
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else None
        return Diagnostic("unknown-key", message, Span(file, line, col), hint=hint)

    line, col = walk.key_pos if walk.at_key else walk.value_pos
    span = Span(file, line, col)

    if kind in _EXPECTED_TYPE:
        message = _prefixed(where, f"expected {_EXPECTED_TYPE[kind]}, got {_describe(given)}")
        return Diagnostic("wrong-type", message, span)

    if kind in _BOUNDS:
        ctx_key, words = _BOUNDS[kind]
        bound = (error.get("ctx") or {}).get(ctx_key)
        message = _prefixed(where, f"must be {words} {bound}, got {_describe(given)}")
        return Diagnostic("bad-value", message, span)

    return Diagnostic("bad-value", _prefixed(where, _clean_message(str(error["msg"]))), span)


def diagnostics_from_error(
    exc: ValidationError, tree: Any, file: str | Path, model_cls: type[BaseModel]
) -> list[Diagnostic]:
    """One Diagnostic per pydantic error, placed in the file via the loaded tree."""
    seen: set[tuple[str, str, int, int]] = set()
    out: list[Diagnostic] = []
    for error in exc.errors(include_url=False):
        diag = _error_to_diagnostic(error, tree, str(file), model_cls)
        span = diag.span or Span(str(file))
        key = (diag.code, diag.message, span.line, span.col)
        if key not in seen:
            seen.add(key)
            out.append(diag)
    return out


def check(
    model_cls: type[ModelT],
    data: Any,
    file: str | Path,
    *,
    context: Mapping[str, Any] | None = None,
) -> tuple[ModelT | None, list[Diagnostic]]:
    """Validate `data` (a tree from `load_yaml`) and return the model or the problems.

    For callers that gather diagnostics from several files before giving up.
    """
    try:
        model = model_cls.model_validate(to_plain(data), context=dict(context or {}))
    except ValidationError as exc:
        return None, diagnostics_from_error(exc, data, file, model_cls)
    return model, []


def validate(
    model_cls: type[ModelT],
    data: Any,
    file: str | Path,
    *,
    context: Mapping[str, Any] | None = None,
) -> ModelT:
    """Validate `data` (a tree from `load_yaml`) into `model_cls`.

    Raises DiagnosticError carrying every problem pydantic found, each at its place.
    """
    model, diagnostics = check(model_cls, data, file, context=context)
    if model is None:
        raise DiagnosticError(diagnostics)
    return model
