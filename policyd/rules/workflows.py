"""Workflow files: the APS DM processing-service format, loaded, checked and made safe to run.

A `run` rule starts a workflow on every matching file, unattended, so a workflow that
cannot work (a misspelt variable, a regex that defines nothing, a condition the runner
cannot evaluate) must be reported by `policyd check` at its line and column, before a
beamline's worth of jobs fail at 3 a.m. Workflows keep the DM service's own shape
(spec/rules.md section 8) so that a definition exported from the DM (its JSON, with the
`id`, `userAccount`, `version` keys it adds) loads as it is, and policyd's files can go
back to the DM unchanged.

The DM evaluates `runIf` and `repeatUntil` with Python's `eval` after substituting
variables; variables come from file names and command output, so that would let a file
called `__import__("os").system(...)` run code. Here they go through a small parser of
the condition language (literals, comparisons, `in`, `and`, `or`, `not`, parentheses)
and an evaluator that can do nothing else (`parse_condition`, `evaluate_condition`).

What this module gives the runner (issue 5): `Workflow.stages` already in run order,
`Stage.output_patterns()`/`Stage.extract_variables(stdout)`, `substitute_command` (values
shell-quoted), `render_condition` + `parse_condition` + `evaluate_condition` (or
`condition_holds` for all three), and the variable names every job has.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import shlex
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
)
from pydantic_core import PydanticCustomError
from ruamel.yaml.comments import CommentedMap

from policyd.diagnostics import Diagnostic, DiagnosticError, Span
from policyd.stations.config import files_matching
from policyd.yamlsource import check, load_yaml, position, to_plain

__all__ = [
    "ALWAYS_DEFINED",
    "RUN_RULE_VARIABLES",
    "ConditionError",
    "Node",
    "Stage",
    "VariableReference",
    "Workflow",
    "check_variables",
    "condition_holds",
    "evaluate_condition",
    "load_workflow_data",
    "load_workflow_file",
    "load_workflows",
    "natural_key",
    "parse_condition",
    "render_condition",
    "substitute_command",
    "variable_references",
]

#: Defined in every job: the job id and the current stage's key (spec section 8).
ALWAYS_DEFINED: Final = ("id", "stage")
#: Defined in every job a `run` rule starts, next to the rule's `with` keys.
RUN_RULE_VARIABLES: Final = (
    "experimentName",
    "experimentFilePath",
    "fileSize",
    "md5Sum",
    "station",
    "filePath",
)

#: `$name` or `${name}`; the DM substitutes exactly these forms.
_VARIABLE_RE: Final = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def natural_key(text: str) -> tuple[tuple[tuple[int, int, str], ...], str]:
    """Sort key that reads digit runs as numbers, so `2-x` runs before `10-x`.

    The DM runs stages in this order; plain string order would run `10-x` second. The
    raw text breaks ties (`01-a` and `1-a`) so the order never depends on dict order.
    """
    parts: list[tuple[int, int, str]] = []
    for piece in re.findall(r"[0-9]+|[^0-9]+", text):
        if piece[0].isdigit():  # by length, then digits: numeric order without int()
            digits = piece.lstrip("0")
            parts.append((0, len(digits), digits))
        else:
            parts.append((1, 0, piece))
    return tuple(parts), text


@dataclass(frozen=True)
class VariableReference:
    """One `$name`/`${name}` in a text, with where it starts in that text (0-based)."""

    name: str
    start: int
    text: str  # as written, `$x` or `${x}`


def variable_references(text: str) -> list[VariableReference]:
    """Every `$name`/`${name}` in `text`, in order; what the checker and runner look for."""
    return [
        VariableReference(m.group("braced") or m.group("bare"), m.start(), m.group(0))
        for m in _VARIABLE_RE.finditer(text)
    ]


def substitute_command(text: str, variables: Mapping[str, object]) -> str:
    """`text` with each known `$name`/`${name}` replaced by its value, shell-quoted.

    Quoting is what makes a file named `a; rm -rf x` harmless in `/bin/sh -c`. Unknown
    names are left as written (the shell then sees them, as with the DM service).
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        if name not in variables:
            return match.group(0)
        return shlex.quote(str(variables[name]))

    return _VARIABLE_RE.sub(replace, text)


# ---------------------------------------------------------------------------
# the condition language


class ConditionError(ValueError):
    """A condition that is not in the safe language, or cannot be evaluated.

    `offset` is 0-based into the condition text (-1 when no place applies), so the
    checker can point at the column in the workflow file.
    """

    def __init__(self, message: str, offset: int = -1) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


Value = str | int | float | bool | None | list["Value"]


@dataclass(frozen=True)
class Lit:
    value: Value
    offset: int


@dataclass(frozen=True)
class ListLit:
    items: tuple[Node, ...]
    offset: int


@dataclass(frozen=True)
class Var:
    """A bare `$name` in a condition not yet substituted (only with allow_variables)."""

    name: str
    offset: int


@dataclass(frozen=True)
class Neg:
    operand: Node
    offset: int


@dataclass(frozen=True)
class Not:
    operand: Node
    offset: int


@dataclass(frozen=True)
class BoolOp:
    op: Literal["and", "or"]
    operands: tuple[Node, ...]
    offset: int


CompareOp = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not in"]


@dataclass(frozen=True)
class Compare:
    """`a < b <= c` as in Python: each pair holds, left to right."""

    left: Node
    ops: tuple[tuple[CompareOp, Node], ...]
    offset: int


Node = Lit | ListLit | Var | Neg | Not | BoolOp | Compare

_MAX_DEPTH: Final = 64  # deeper nesting is an error, not a RecursionError
_KEYWORDS: Final = {"and", "or", "not", "in"}
_CONSTANTS: Final[dict[str, Value]] = {
    "True": True,
    "False": False,
    "None": None,
    "true": True,
    "false": False,
    "null": None,
}
_ESCAPES: Final = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r", "0": "\0"}
_NUMBER_RE: Final = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS: Final = ("==", "!=", "<=", ">=", "<", ">", "(", ")", "[", "]", ",", "-")


@dataclass(frozen=True)
class _Token:
    kind: Literal["str", "num", "const", "kw", "op", "var", "end"]
    value: Any
    offset: int


def _tokens(text: str, allow_variables: bool) -> list[_Token]:
    out: list[_Token] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch in "\"'":
            start = i
            i += 1
            chars: list[str] = []
            while True:
                if i >= n:
                    raise ConditionError("text opened here is never closed", start)
                c = text[i]
                if c == ch:
                    i += 1
                    break
                if c == "\\" and i + 1 < n:
                    nxt = text[i + 1]
                    chars.append(_ESCAPES.get(nxt, "\\" + nxt))
                    i += 2
                    continue
                chars.append(c)
                i += 1
            out.append(_Token("str", "".join(chars), start))
            continue
        number = _NUMBER_RE.match(text, i)
        if number:
            raw = number.group(0)
            if _NAME_RE.match(text, number.end()):
                raise ConditionError(f"{raw + text[number.end()]!r}... is not a number", i)
            try:
                value: int | float = float(raw) if any(c in raw for c in ".eE") else int(raw)
            except ValueError as exc:  # more digits than Python converts
                raise ConditionError("number is too long", i) from exc
            out.append(_Token("num", value, i))
            i = number.end()
            continue
        name = _NAME_RE.match(text, i)
        if name:
            word = name.group(0)
            if word in _KEYWORDS:
                out.append(_Token("kw", word, i))
            elif word in _CONSTANTS:
                out.append(_Token("const", _CONSTANTS[word], i))
            else:
                raise ConditionError(
                    f"unknown name {word!r}: a condition holds only literals "
                    '("text", numbers, True, False, None), comparisons, in, and, or, not',
                    i,
                )
            i = name.end()
            continue
        if ch == "$":
            ref = _VARIABLE_RE.match(text, i)
            if ref is None:
                raise ConditionError("'$' must start a variable name", i)
            var = ref.group("braced") or ref.group("bare")
            if not allow_variables:
                raise ConditionError(f"variable ${var} was not substituted", i)
            out.append(_Token("var", var, i))
            i = ref.end()
            continue
        for op in _OPERATORS:
            if text.startswith(op, i):
                out.append(_Token("op", op, i))
                i += len(op)
                break
        else:
            if ch == "=":
                raise ConditionError("'=' is not a comparison; use '=='", i)
            raise ConditionError(f"unexpected character {ch!r}", i)
    out.append(_Token("end", None, n))
    return out


class _Parser:
    """Recursive descent over the tokens; precedence as in Python: or < and < not < compare."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def is_(self, kind: str, value: Any = None) -> bool:
        token = self.peek()
        return token.kind == kind and (value is None or token.value == value)

    def expect(self, value: str) -> _Token:
        if not self.is_("op", value):
            raise ConditionError(f"expected {value!r} {self.where()}", self.peek().offset)
        return self.take()

    def where(self) -> str:
        token = self.peek()
        if token.kind == "end":
            return "but the condition ends"
        if token.kind == "str":
            return "before the text"
        return f"before {str(token.value)!r}"

    def nest(self) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise ConditionError(f"nested more than {_MAX_DEPTH} deep", self.peek().offset)

    def condition(self) -> Node:
        node = self.or_()
        if not self.is_("end"):
            raise ConditionError(f"unexpected {str(self.peek().value)!r}", self.peek().offset)
        return node

    def or_(self) -> Node:
        self.nest()
        start = self.peek().offset
        operands = [self.and_()]
        while self.is_("kw", "or"):
            self.take()
            operands.append(self.and_())
        self.depth -= 1
        return operands[0] if len(operands) == 1 else BoolOp("or", tuple(operands), start)

    def and_(self) -> Node:
        start = self.peek().offset
        operands = [self.not_()]
        while self.is_("kw", "and"):
            self.take()
            operands.append(self.not_())
        return operands[0] if len(operands) == 1 else BoolOp("and", tuple(operands), start)

    def not_(self) -> Node:
        if self.is_("kw", "not"):
            token = self.take()
            self.nest()
            node = Not(self.not_(), token.offset)
            self.depth -= 1
            return node
        return self.compare()

    def compare_op(self) -> CompareOp | None:
        token = self.peek()
        if token.kind == "op" and token.value in ("==", "!=", "<", "<=", ">", ">="):
            self.take()
            return token.value  # type: ignore[no-any-return]
        if self.is_("kw", "in"):
            self.take()
            return "in"
        following = self.tokens[self.pos + 1] if self.pos + 1 < len(self.tokens) else None
        if (
            self.is_("kw", "not")
            and following is not None
            and following.kind == "kw"
            and following.value == "in"
        ):
            self.pos += 2
            return "not in"
        return None

    def compare(self) -> Node:
        left = self.primary()
        ops: list[tuple[CompareOp, Node]] = []
        while (op := self.compare_op()) is not None:
            ops.append((op, self.primary()))
        return Compare(left, tuple(ops), left.offset) if ops else left

    def primary(self) -> Node:
        token = self.peek()
        if token.kind in ("str", "num", "const"):
            self.take()
            return Lit(token.value, token.offset)
        if token.kind == "var":
            self.take()
            return Var(token.value, token.offset)
        if token.kind == "op" and token.value == "-":
            self.take()
            operand = self.peek()
            if operand.kind not in ("num", "var"):
                raise ConditionError("'-' must come before a number", token.offset)
            self.take()
            if operand.kind == "num":
                return Lit(-operand.value, token.offset)
            return Neg(Var(operand.value, operand.offset), token.offset)
        if token.kind == "op" and token.value == "(":
            self.take()
            node = self.or_()
            self.expect(")")
            return node
        if token.kind == "op" and token.value == "[":
            self.take()
            self.nest()
            items: list[Node] = []
            while not self.is_("op", "]"):
                items.append(self.or_())
                if not self.is_("op", ","):
                    break
                self.take()
            self.expect("]")
            self.depth -= 1
            return ListLit(tuple(items), token.offset)
        if token.kind == "end":
            raise ConditionError("expected a value, but the condition ends", token.offset)
        raise ConditionError(f"expected a value {self.where()}", token.offset)


def parse_condition(text: str, *, allow_variables: bool = False) -> Node:
    """Parse a `runIf`/`repeatUntil` condition into a tree; raise ConditionError if not safe.

    The runner parses after substituting variables (`render_condition`), so a `$name`
    left in the text is an error. The checker passes `allow_variables=True` to check a
    condition as written in the workflow file, where bare `$count` stands for a value.
    Raises nothing but ConditionError, whatever the text.
    """
    if not isinstance(text, str):
        raise ConditionError("a condition must be text")
    return _Parser(_tokens(text, allow_variables)).condition()


def _kind(value: Value) -> str:
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    return "a list"


def _compare(op: CompareOp, left: Value, right: Value, offset: int) -> bool:
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    if op in ("in", "not in"):
        if isinstance(right, str):
            if not isinstance(left, str):
                raise ConditionError(f"'in' text needs text on its left, got {_kind(left)}", offset)
            found = left in right
        elif isinstance(right, list):
            found = left in right
        else:
            raise ConditionError(
                f"'in' needs text or a list on its right, got {_kind(right)}", offset
            )
        return found if op == "in" else not found
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (left, right))
    texts = isinstance(left, str) and isinstance(right, str)
    if not (numbers or texts):
        raise ConditionError(f"cannot order {_kind(left)} and {_kind(right)} with {op!r}", offset)
    a: Any = left
    b: Any = right
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


def _evaluate(node: Node) -> Value:
    if isinstance(node, Lit):
        return node.value
    if isinstance(node, ListLit):
        return [_evaluate(item) for item in node.items]
    if isinstance(node, Var):
        raise ConditionError(f"variable ${node.name} was not substituted", node.offset)
    if isinstance(node, Neg):
        value = _evaluate(node.operand)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConditionError(f"cannot negate {_kind(value)}", node.offset)
        return -value
    if isinstance(node, Not):
        return not _evaluate(node.operand)
    if isinstance(node, BoolOp):
        for operand in node.operands:
            result = bool(_evaluate(operand))
            if node.op == "and" and not result:
                return False
            if node.op == "or" and result:
                return True
        return node.op == "and"
    left = _evaluate(node.left)
    for op, right_node in node.ops:
        right = _evaluate(right_node)
        if not _compare(op, left, right, right_node.offset):
            return False
        left = right
    return True


def evaluate_condition(tree: Node) -> bool:
    """True or false, by Python's rules of truth, for a tree from `parse_condition`.

    Comparisons that Python would refuse (`"a" < 1`) raise ConditionError rather than
    TypeError, so the runner has one error to turn into a failed stage.
    """
    return bool(_evaluate(tree))


def render_condition(text: str, variables: Mapping[str, object]) -> str:
    """Substitute variables into a condition so that the result parses as the DM meant it.

    Inside a quoted literal (`"$filePath"`) the value is escaped for that literal, so a
    file name with a quote cannot end the literal early. Outside one, a value that reads
    as a number goes in as a number and anything else as a quoted text literal, so a
    value can never become an operator. Unknown names stay as written (and then fail to
    parse, which is the honest outcome).
    """
    out: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote is not None and ch == "\\" and i + 1 < len(text):
            out.append(text[i : i + 2])
            i += 2
            continue
        if ch in "\"'":
            if quote is None:
                quote = ch
            elif quote == ch:
                quote = None
        if ch == "$":
            match = _VARIABLE_RE.match(text, i)
            if match is not None:
                name = match.group("braced") or match.group("bare")
                if name in variables:
                    value = str(variables[name])
                    if quote is not None:
                        out.append(value.replace("\\", "\\\\").replace(quote, "\\" + quote))
                    elif re.fullmatch(r"-?" + _NUMBER_RE.pattern, value):
                        out.append(value)
                    else:
                        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
                        out.append(f'"{escaped}"')
                    i = match.end()
                    continue
        out.append(ch)
        i += 1
    return "".join(out)


def condition_holds(text: str, variables: Mapping[str, object]) -> bool:
    """Substitute, parse and evaluate in one step; raises ConditionError only."""
    return evaluate_condition(parse_condition(render_condition(text, variables)))


# ---------------------------------------------------------------------------
# the model


def _seconds(value: Any) -> int | float:
    """A positive, finite number of seconds, as the DM writes it (no units: the DM's shape)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("float_type", "Input should be a number of seconds")
    if not math.isfinite(value) or value <= 0:
        raise PydanticCustomError("greater_than", "Input should be greater than 0", {"gt": 0})
    return value


Seconds = Annotated[int | float, PlainValidator(_seconds, json_schema_input_type=float)]


class Stage(BaseModel):
    """One stage of a workflow, in the DM's camelCase keys.

    Keys the DM adds to a stage (its job records carry `childProcesses`,
    `nCompletedChildProcesses`, ...) are kept, so a definition round-trips unchanged.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    command: StrictStr
    working_dir: StrictStr | None = Field(default=None, alias="workingDir")
    timeout: Seconds | None = None
    output_variable_regex_list: list[StrictStr] = Field(
        default_factory=list, alias="outputVariableRegexList"
    )
    run_if: StrictStr | None = Field(default=None, alias="runIf")
    parallel_exec: StrictBool = Field(default=False, alias="parallelExec")
    repeat_period: Seconds | None = Field(default=None, alias="repeatPeriod")
    repeat_until: StrictStr | None = Field(default=None, alias="repeatUntil")
    max_repeats: Annotated[StrictInt, Field(ge=1)] | None = Field(default=None, alias="maxRepeats")

    @field_validator("command")
    @classmethod
    def _command_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("command is empty; a stage must run something")
        return value

    def output_patterns(self) -> list[re.Pattern[str]]:
        """The compiled `outputVariableRegexList` (a loaded workflow has checked them)."""
        return [re.compile(pattern) for pattern in self.output_variable_regex_list]

    def output_variables(self) -> list[str]:
        """Names this stage defines for later stages: the named groups of its regexes."""
        names: list[str] = []
        for pattern in self.output_variable_regex_list:
            try:
                groups = re.compile(pattern).groupindex
            except re.error:
                continue
            names.extend(name for name in groups if name not in names)
        return names

    def extract_variables(self, stdout: str) -> dict[str, str]:
        """Variables found in the stage's output: each regex searched, each named group
        that took part in the match kept (a later regex wins, as in the DM)."""
        found: dict[str, str] = {}
        for pattern in self.output_patterns():
            match = pattern.search(stdout)
            if match is None:
                continue
            found.update({k: v for k, v in match.groupdict().items() if v is not None})
        return found


class Workflow(BaseModel):
    """A DM processing workflow; `stages` is in run order (natural order of its keys)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: StrictStr
    owner: StrictStr
    description: StrictStr | None = None
    stages: dict[StrictStr, Stage]

    # Where the definition came from, for diagnostics raised after loading
    # (`check_variables`, duplicate names); not part of the data.
    _file: str = PrivateAttr(default="<workflow>")
    _tree: Any = PrivateAttr(default=None)
    _lines: list[str] = PrivateAttr(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("name is empty; `run workflow NAME` needs one")
        return value

    @field_validator("stages")
    @classmethod
    def _ordered(cls, value: dict[str, Stage]) -> dict[str, Stage]:
        if not value:
            raise ValueError("a workflow needs at least one stage")
        return {key: value[key] for key in sorted(value, key=natural_key)}

    @property
    def file(self) -> str:
        """The file (or label) it was loaded from."""
        return self._file

    def stage_items(self) -> list[tuple[str, Stage]]:
        """(key, stage) in run order."""
        return list(self.stages.items())

    def to_dm(self) -> dict[str, Any]:
        """The DM service's JSON shape, with every key it was given (and no defaults added)."""
        return self.model_dump(by_alias=True, exclude_unset=True)

    def span_of(
        self, path: Iterable[str | int], offset: int | None = None, token: str = ""
    ) -> Span:
        """Where `path` (and, inside its text, `offset`/`token`) is in the source file."""
        return _span(self, tuple(path), offset, token)


# ---------------------------------------------------------------------------
# positions inside scalars


def _span(workflow: Workflow, path: tuple[str | int, ...], offset: int | None, token: str) -> Span:
    file = workflow._file
    tree = workflow._tree
    if not isinstance(tree, CommentedMap):
        return Span(file)
    line, col = position(tree, path)
    lines = workflow._lines
    if offset is None or not (0 < line <= len(lines)):
        return Span(file, line, col)
    value = _value_at(tree, path)
    if not isinstance(value, str):
        return Span(file, line, col)
    raw = lines[line - 1]
    start = col - 1
    if start < len(raw) and raw[start] in "\"'":
        start += 1
    if raw[start : start + len(value)] == value:  # written on one line without escapes
        return Span(file, line, start + offset + 1)
    if token:  # folded, escaped or multi-line: find the same occurrence of the token
        nth = value[:offset].count(token)
        text = "\n".join(lines[line - 1 :])
        at = col - 1
        for _ in range(nth + 1):
            at = text.find(token, at)
            if at < 0:
                return Span(file, line, col)
            at += 1
        at -= 1
        before = text[:at]
        found_line = line + before.count("\n")
        found_col = at - (before.rfind("\n") + 1) + 1
        return Span(file, found_line, found_col)
    return Span(file, line, col)


def _value_at(tree: Any, path: tuple[str | int, ...]) -> Any:
    node = tree
    for step in path:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return None
    return node


# ---------------------------------------------------------------------------
# checks


_STAGE_KEYS: Final = tuple(info.alias or name for name, info in Stage.model_fields.items())
_WORKFLOW_KEYS: Final = tuple(info.alias or name for name, info in Workflow.model_fields.items())


def _regex_diagnostics(workflow: Workflow) -> Iterator[Diagnostic]:
    for key, stage in workflow.stage_items():
        for index, pattern in enumerate(stage.output_variable_regex_list):
            path = ("stages", key, "outputVariableRegexList", index)
            where = f"stage {key!r}: outputVariableRegexList[{index}]"
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                offset = exc.pos if exc.pos is not None else None
                yield Diagnostic(
                    "bad-regex",
                    f"{where}: invalid regular expression: {exc.msg}",
                    workflow.span_of(path, offset),
                )
                continue
            if not compiled.groupindex:
                yield Diagnostic(
                    "bad-regex",
                    f"{where}: the regular expression has no named group, "
                    "so it defines no variable",
                    workflow.span_of(path),
                    hint="name what it captures: (?P<outputDir>.*)",
                )


def _condition_diagnostics(workflow: Workflow) -> Iterator[Diagnostic]:
    for key, stage in workflow.stage_items():
        for field, text in (("runIf", stage.run_if), ("repeatUntil", stage.repeat_until)):
            if text is None:
                continue
            try:
                parse_condition(text, allow_variables=True)
            except ConditionError as exc:
                offset = exc.offset if exc.offset >= 0 else None
                yield Diagnostic(
                    "bad-condition",
                    f"stage {key!r}: {field}: {exc.message}",
                    workflow.span_of(("stages", key, field), offset),
                    hint="conditions hold literals, comparisons, in, and, or, not and "
                    'parentheses, e.g. \'"mda" in "$filePath"\'',
                )


def _repeat_diagnostics(workflow: Workflow) -> Iterator[Diagnostic]:
    for key, stage in workflow.stage_items():
        if (stage.repeat_period is None) == (stage.repeat_until is None):
            if stage.max_repeats is not None and stage.repeat_period is None:
                yield Diagnostic(
                    "repeat-needs-until",
                    f"stage {key!r}: maxRepeats without repeatPeriod and repeatUntil "
                    "repeats nothing",
                    workflow.span_of(("stages", key, "maxRepeats")),
                    severity="warning",
                )
            continue
        have, missing = (
            ("repeatPeriod", "repeatUntil")
            if stage.repeat_until is None
            else ("repeatUntil", "repeatPeriod")
        )
        yield Diagnostic(
            "repeat-needs-until",
            f"stage {key!r}: {have} needs {missing}: a stage repeats every repeatPeriod "
            "seconds until repeatUntil holds",
            workflow.span_of(("stages", key, have), None),
        )


def _suspicious_keys(workflow: Workflow) -> Iterator[Diagnostic]:
    """Extra keys are kept for the DM's sake, but `runif` is more likely a typo than DM data."""
    groups: list[tuple[tuple[str | int, ...], Mapping[str, Any] | None, tuple[str, ...]]] = [
        ((), workflow.model_extra, _WORKFLOW_KEYS)
    ]
    groups += [
        (("stages", key), stage.model_extra, _STAGE_KEYS) for key, stage in workflow.stage_items()
    ]
    for path, extra, known in groups:
        for name in extra or {}:
            lowered = {k.lower(): k for k in known}
            close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.8)
            if close:
                where = f"stage {path[1]!r}: " if path else ""
                yield Diagnostic(
                    "suspicious-key",
                    f"{where}unknown key {name!r} is kept but not used",
                    _key_span(workflow, (*path, name)),
                    severity="warning",
                    hint=f"did you mean {lowered[close[0]]!r}?",
                )


def _key_span(workflow: Workflow, path: tuple[str | int, ...]) -> Span:
    if isinstance(workflow._tree, CommentedMap):
        line, col = position(workflow._tree, path, at_key=True)
        return Span(workflow._file, line, col)
    return Span(workflow._file)


def check_variables(workflow: Workflow, extra_variables: Iterable[str] = ()) -> list[Diagnostic]:
    """`undefined-variable` for each `$name` a stage uses before anything defines it.

    A stage may use the job's variables (`id`, `stage`), a run rule's (`filePath`, ...),
    `extra_variables` (the rule's `with` keys) and the named groups of earlier stages'
    regexes. `repeatUntil` is evaluated after its own stage ran, so it may also use that
    stage's groups; `command`, `workingDir` and `runIf` may not. Called by the rule
    checker once per `run` rule, because only the rule knows its `with` keys.
    """
    defined: set[str] = set(ALWAYS_DEFINED) | set(RUN_RULE_VARIABLES) | set(extra_variables)
    later: dict[str, str] = {}
    for key, stage in reversed(workflow.stage_items()):
        for name in stage.output_variables():
            later[name] = key
    out: list[Diagnostic] = []
    for key, stage in workflow.stage_items():
        own = stage.output_variables()
        for name in own:
            if later.get(name) == key:
                del later[name]
        fields: list[tuple[str, str | None, set[str]]] = [
            ("command", stage.command, defined),
            ("workingDir", stage.working_dir, defined),
            ("runIf", stage.run_if, defined),
            ("repeatUntil", stage.repeat_until, defined | set(own)),
        ]
        for field, text, known in fields:
            for ref in variable_references(text or ""):
                if ref.name in known:
                    continue
                out.append(_undefined(workflow, key, field, ref, later, known, own))
        defined |= set(own)
    return out


def _undefined(
    workflow: Workflow,
    key: str,
    field: str,
    ref: VariableReference,
    later: Mapping[str, str],
    known: set[str],
    own: list[str],
) -> Diagnostic:
    message = f"stage {key!r}: {field} uses ${ref.name}, which is not defined before this stage"
    if ref.name in own:
        hint = "this stage defines it, but only once it has run (its repeatUntil may use it)"
    elif ref.name in later:
        hint = f"stage {later[ref.name]!r} defines it, but runs later"
    else:
        close = difflib.get_close_matches(ref.name, sorted(known), n=1, cutoff=0.75)
        hint = (
            f"did you mean ${close[0]}?"
            if close
            else "variables come from earlier stages' outputVariableRegexList named groups, "
            "the job (id, stage, filePath, ...) or the run rule's `with`"
        )
    span = workflow.span_of(("stages", key, field), ref.start, ref.text)
    return Diagnostic("undefined-variable", message, span, hint=hint)


# ---------------------------------------------------------------------------
# loading


def load_workflow_data(
    data: Any, file: str | Path = "<workflow>", *, lines: list[str] | None = None
) -> tuple[Workflow | None, list[Diagnostic]]:
    """Validate a workflow given as data: the DM service's JSON, or a tree from `load_yaml`.

    With a tree from `load_yaml` (and the file's `lines`), diagnostics carry line and
    column; with a plain dict they name the file only. Variables are not checked here
    (see `check_variables`): only a `run` rule knows which `with` keys a job gets.
    Never raises.
    """
    file = str(file)
    try:
        workflow, diagnostics = check(Workflow, data, file)
    except Exception as exc:  # a validator bug must not hide the file's problems
        return None, [Diagnostic("bad-value", f"cannot read workflow: {exc}", Span(file))]
    if workflow is None:
        return None, diagnostics
    workflow._file = file
    workflow._tree = data if isinstance(data, CommentedMap) else None
    workflow._lines = list(lines or [])
    problems = [
        *_regex_diagnostics(workflow),
        *_condition_diagnostics(workflow),
        *_repeat_diagnostics(workflow),
        *_suspicious_keys(workflow),
    ]
    if any(d.severity == "error" for d in problems):
        return None, problems
    return workflow, problems


def load_workflow_file(path: str | Path) -> tuple[Workflow | None, list[Diagnostic]]:
    """Load a workflow file: YAML 1.2, or the DM's own JSON (`.json`). Never raises.

    JSON must be valid JSON; it is then read by the YAML parser too (JSON is YAML 1.2),
    which keeps the positions, except where that parser refuses it (tabs in odd places).
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, [Diagnostic("file-not-found", "no such file", Span(file))]
    except UnicodeDecodeError as exc:
        return None, [Diagnostic("file-unreadable", f"not UTF-8 text ({exc.reason})", Span(file))]
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return None, [Diagnostic("file-unreadable", f"cannot read: {reason}", Span(file))]
    data: Any = None
    if file.lower().endswith(".json"):
        # Strict JSON first: the YAML parser would take `"owner": }` as a null owner.
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            where = Span(file, exc.lineno, exc.colno)
            return None, [Diagnostic("json-syntax", f"invalid JSON: {exc.msg}", where)]
        except RecursionError:
            return None, [Diagnostic("json-syntax", "invalid JSON: nested too deep", Span(file))]
    try:
        tree = load_yaml(path)
    except DiagnosticError as exc:
        duplicates = [d for d in exc.diagnostics if d.code == "duplicate-key"]
        if data is None or duplicates:  # JSON keeps the last of two keys; say so
            return None, duplicates or list(exc.diagnostics)
        return load_workflow_data(data, file)  # valid JSON YAML cannot read: no positions
    except RecursionError:
        return None, [Diagnostic("yaml-syntax", "invalid YAML: nested too deep", Span(file))]
    if data is not None and to_plain(tree) != data:  # never expected; trust the JSON reader
        return load_workflow_data(data, file)
    return load_workflow_data(tree, file, lines=text.splitlines())


def load_workflows(
    config_root: str | Path, paths: Iterable[str | Path]
) -> tuple[dict[str, Workflow], list[Diagnostic]]:
    """Every workflow the site config names, by name, and every problem in any of them.

    `paths` are files or glob patterns relative to `config_root` (the config's
    `workflows:` list, or `SiteConfig.workflow_files()`). A name defined twice is an
    error at the second definition (`duplicate-workflow`); the first one is kept, so
    that one mistake does not hide the problems of rules that use the name.
    """
    root = Path(config_root)
    files: list[Path] = []
    diagnostics: list[Diagnostic] = []
    for item in paths:
        text = str(item)
        if any(c in text for c in "*?["):
            matched = files_matching(root, [text])
            files.extend(root / m for m in matched if root / m not in files)
        else:
            candidate = Path(item) if Path(item).is_absolute() else root / item
            if candidate not in files:
                files.append(candidate)
    workflows: dict[str, Workflow] = {}
    for file in files:
        workflow, problems = load_workflow_file(file)
        diagnostics.extend(problems)
        if workflow is None:
            continue
        first = workflows.get(workflow.name)
        if first is not None:
            diagnostics.append(
                Diagnostic(
                    "duplicate-workflow",
                    f"workflow {workflow.name!r} is already defined in {first.span_of(('name',))}",
                    workflow.span_of(("name",)),
                    hint="workflow names are unique per site; rename one of them",
                )
            )
            continue
        workflows[workflow.name] = workflow
    return workflows, diagnostics
