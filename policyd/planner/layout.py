"""Rendering path templates (`at "{station}/{experiment.start:%Y-%m}/{file.path}"`) per file.

A template is parsed once per plan into literal runs and placeholders, each placeholder
an attribute lowered to the IR and evaluated by the Python backend on the file's row,
so a template reads exactly the values a `where` does. A rendered path must stay
inside its location (spec/rules.md section 4): a null value, a `..` or empty segment,
a leading `/` or a NUL make it an error for that file, never a path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo

from policyd.grammar.dsl import parse_expression
from policyd.rules import ir
from policyd.rules.pyeval import Row, compile_python
from policyd.rules.signatures import ATTRIBUTES
from policyd.rules.typecheck import scan_placeholder, split_format
from policyd.rules.types import TIME

DEFAULT_LAYOUT = "{station}/{experiment.name}/{file.path}"
#: Without a station the default's first segment would be empty (docs/config.md).
NO_STATION_LAYOUT = "{experiment.name}/{file.path}"


class TemplateError(Exception):
    """A template that cannot be rendered for one file; the message says why."""


@dataclass(frozen=True)
class _Placeholder:
    text: str
    value: Callable[[Row], object]
    fmt: str | None
    is_time: bool
    uses_file: bool
    reads_file: bool  # its value may differ between files of one experiment
    field: str | None  # the field it is, when it is one bare field


Part = str | _Placeholder


class Template:
    def __init__(self, text: str, tz: tzinfo) -> None:
        self.text = text
        self.tz = tz
        self.reads_file_meta = False  # whether a placeholder reads file.meta
        self.parts = self._parse(text)
        # The leading parts that read only the experiment render once per experiment
        # (a plan renders a template per copy, and most copies share an experiment).
        lead = 0
        while lead < len(self.parts) and not _reads_file(self.parts[lead]):
            lead += 1
        self.lead, self.rest = self.parts[:lead], self.parts[lead:]
        self.leads: dict[object, str] = {}
        # A rest that is one bare field, as `{file.path}` in most layouts: a text value
        # is appended as it is (what _text makes of it), without the general loop.
        only = self.rest[0] if len(self.rest) == 1 else None
        self.bare_field = (
            only.field if isinstance(only, _Placeholder) and only.fmt is None else None
        )

    def _parse(self, text: str) -> list[Part]:
        parts: list[Part] = []
        i = 0
        while i < len(text):
            start = text.find("{", i)
            if start < 0:
                parts.append(text[i:])
                break
            if start > i:
                parts.append(text[i:start])
            end = scan_placeholder(text, start)
            if end < 0:
                raise TemplateError(f"unclosed {{ in template {text!r}")
            inner, fmt = split_format(text[start + 1 : end])
            expr, problems = parse_expression(inner.strip(), "<template>")
            if expr is None or problems:
                raise TemplateError(f"bad placeholder {{{inner}}} in template {text!r}")
            node = ir.lower_value(expr, ir.Bindings(0.0, self.tz))
            self.reads_file_meta = self.reads_file_meta or reads_file_meta(node)
            name = ".".join(getattr(expr, "path", ()))
            info = ATTRIBUTES.get(name)
            parts.append(
                _Placeholder(
                    inner,
                    compile_python(node),
                    fmt,
                    info is not None and info.type == TIME,
                    inner.strip().startswith("file."),
                    not all(_experiment_only(n) for n in ir.walk(node)),
                    node.name if isinstance(node, ir.Field) else None,
                )
            )
            i = end + 1
        return parts

    def _text(self, part: _Placeholder, row: Row) -> str:
        value = part.value(row)
        if value is None:
            raise TemplateError(f"{{{part.text}}} is null")
        if part.is_time and isinstance(value, int | float):
            moment = datetime.fromtimestamp(value, self.tz)
            return moment.strftime(part.fmt) if part.fmt else moment.isoformat()
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(value)

    def render(self, row: Row, *, upto_file: bool = False) -> str:
        """The path for `row`; with `upto_file`, only up to (not including) the first
        segment that uses a `file.` attribute: the experiment directory."""
        if upto_file:
            return self._render(self.parts, row, [], upto_file=True)
        experiment = row.get("experiment.id")
        lead = self.leads.get(experiment) if experiment is not None else None
        if lead is None:
            lead = "".join(self._piece(part, row) for part in self.lead)
            if experiment is not None:
                self.leads[experiment] = lead
        if self.bare_field is not None:
            value = row.get(self.bare_field)
            if type(value) is str:
                return check_path(lead + value)
        return self._render(self.rest, row, [lead], upto_file=False)

    def _piece(self, part: Part, row: Row) -> str:
        return part if isinstance(part, str) else self._text(part, row)

    def _render(self, parts: list[Part], row: Row, out: list[str], *, upto_file: bool) -> str:
        for part in parts:
            if isinstance(part, str):
                out.append(part)
            elif upto_file and part.uses_file:
                rendered = "".join(out)
                return check_path(rendered.rsplit("/", 1)[0] if "/" in rendered else "")
            else:
                out.append(self._text(part, row))
        return check_path("".join(out))


def _reads_file(part: Part) -> bool:
    return isinstance(part, _Placeholder) and part.reads_file


def reads_file_meta(node: ir.Node) -> bool:
    """Whether evaluating `node` in Python reads the file's metadata."""
    return any(isinstance(n, ir.Meta) and n.scope == "file" for n in ir.walk(node))


def _experiment_only(node: ir.Node) -> bool:
    """Whether an IR node's value is the same for every file of an experiment."""
    match node:
        case ir.Field(name=name):
            return name.startswith("experiment.")
        case ir.Meta(scope=scope):
            return scope == "experiment"
        case ir.Copies() | ir.PathOn():
            return False
    return True


def check_path(path: str) -> str:
    """`path` when it stays relative and inside its location, else a TemplateError. A
    plan checks a path per copy: a path with none of the characters a problem needs
    passes with a few substring tests; the rest are read segment by segment."""
    if path and not (
        "\x00" in path or ".." in path or "//" in path or path[0] == "/" or path[-1] == "/"
    ):
        return path
    return _check_segments(path)


def _check_segments(path: str) -> str:
    if "\x00" in path:
        raise TemplateError("the rendered path holds a NUL character")
    if path.startswith("/"):
        raise TemplateError(f"the rendered path {path!r} is absolute")
    for segment in path.split("/"):
        if segment == "":
            raise TemplateError(f"the rendered path {path!r} has an empty segment")
        if segment == "..":
            raise TemplateError(f"the rendered path {path!r} leaves its location (..)")
    return path
