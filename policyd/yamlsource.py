"""YAML input that remembers where everything came from.

Config and rule files are written by hand and reviewed in git, so a mistake in one
must be reported at its line and column, like a compiler error, and every mistake in
the file at once rather than one per run. This module is the one place that reads
YAML for policyd: it parses with ruamel.yaml's round-trip loader (which keeps the
position of every key and value) as YAML 1.2 (so `on:` and `no:` stay text), runs
pydantic validation on the result, and turns each pydantic error into a
`Diagnostic` pointing into the file. It knows nothing about what the files mean.
"""

from __future__ import annotations

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


def parse_yaml(text: str, file: str | Path) -> Any:
    """Parse one YAML document; every mapping and list in it knows its position.

    Raises DiagnosticError (`yaml-syntax`, `duplicate-key`) with the place of the error.
    """
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
