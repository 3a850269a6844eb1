"""Errors as data: every problem policyd reports about an input is a Diagnostic.

A Diagnostic names where it is (file, line, column) so that a person can go straight
to the mistake; commands collect all of them and render them sorted, the way a
compiler does, instead of stopping at the first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Span:
    """A place in a source file; line and col are 1-based, 0 means unknown."""

    file: str
    line: int = 0
    col: int = 0
    end_line: int = 0
    end_col: int = 0

    def __str__(self) -> str:
        if self.line <= 0:
            return self.file
        if self.col <= 0:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    span: Span | None = None
    severity: Severity = "error"
    hint: str | None = None

    def sort_key(self) -> tuple[str, int, int, str]:
        span = self.span or Span("")
        return (span.file, span.line, span.col, self.message)

    def render(self, source_line: str | None = None) -> str:
        """`FILE:LINE:COL: error: MESSAGE`, then the source line with a caret, then the hint."""
        where = f"{self.span}: " if self.span else ""
        lines = [f"{where}{self.severity}: {self.message}"]
        if source_line is not None and self.span and self.span.col > 0:
            lines.append("  " + source_line.rstrip("\n"))
            lines.append("  " + " " * (self.span.col - 1) + "^")
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class DiagnosticError(Exception):
    """Raised when an input cannot be used; carries every problem found in it."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return "\n".join(d.render() for d in sorted_diagnostics(self.diagnostics))


def sorted_diagnostics(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    return sorted(diagnostics, key=Diagnostic.sort_key)


def render_all(diagnostics: Iterable[Diagnostic]) -> str:
    """Render with the offending source line under each message, reading each file once."""
    cache: dict[str, list[str]] = {}
    out = []
    for diag in sorted_diagnostics(diagnostics):
        source_line = None
        if diag.span and diag.span.line > 0:
            if diag.span.file not in cache:
                try:
                    with open(diag.span.file, encoding="utf-8", errors="replace") as fh:
                        cache[diag.span.file] = fh.readlines()
                except OSError:
                    cache[diag.span.file] = []
            lines = cache[diag.span.file]
            if diag.span.line <= len(lines):
                source_line = lines[diag.span.line - 1]
        out.append(diag.render(source_line))
    return "\n".join(out)
