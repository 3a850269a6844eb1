"""`policyd convert FILE --to yaml|dsl`: a rule file in the other form, losing nothing.

A beamline manager may keep rules as DSL or as YAML; moving a file from one to the
other by hand invites mistakes, so the converter parses with the same front end
`policyd check` uses and prints with `policyd.grammar.printers`. A file that does not
parse is not converted: its diagnostics are reported instead, as `check` would.
Comments are not carried over (spec/rules.md allows that).
"""

from __future__ import annotations

import sys
from pathlib import Path

from policyd.diagnostics import Diagnostic, Span, render_all
from policyd.grammar import ast
from policyd.grammar.dsl import parse_policy
from policyd.grammar.printers import lossy_points, to_dsl, to_yaml
from policyd.grammar.yaml_rules import parse_yaml_rules

__all__ = ["FORMS", "convert_command", "convert_file", "convert_text"]

#: The target forms `--to` accepts.
FORMS = ("yaml", "dsl")

_DSL_SUFFIXES = (".policy",)
_YAML_SUFFIXES = (".yaml", ".yml")


def convert_text(tree: ast.File, to: str) -> str:
    """`tree` printed in form `to` ("yaml" or "dsl")."""
    if to == "yaml":
        return to_yaml(tree)
    if to == "dsl":
        return to_dsl(tree)
    raise ValueError(f"unknown form {to!r}; expected one of {', '.join(FORMS)}")


def convert_file(path: Path, to: str) -> tuple[str | None, list[Diagnostic]]:
    """The file at `path` printed in form `to`, with warnings; or None and the errors.

    The input form comes from the extension (`.policy`, `.yaml`/`.yml`), as for
    `policyd check`. Converting a file to the form it is already in is allowed: it
    prints the file canonically (a formatter). Warnings (severity "warning") name what
    the target form cannot keep; the text is still produced.
    """
    file = str(path)
    if to not in FORMS:
        message = f"cannot convert to {to!r}; expected one of: {', '.join(FORMS)}"
        return None, [Diagnostic("convert-form", message, Span(file))]
    suffix = path.suffix.lower()
    if suffix not in (*_DSL_SUFFIXES, *_YAML_SUFFIXES):
        return None, [
            Diagnostic(
                "convert-input",
                f"cannot tell the form of {file}",
                Span(file),
                hint="a rule file ends in .policy (DSL) or .yaml/.yml (YAML)",
            )
        ]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return None, [Diagnostic("unreadable", f"cannot read {file}: {reason}", Span(file))]
    parse = parse_policy if suffix in _DSL_SUFFIXES else parse_yaml_rules
    tree, diagnostics = parse(text, file)
    if tree is None or any(d.severity == "error" for d in diagnostics):
        return None, diagnostics
    diagnostics = [*diagnostics, *lossy_points(tree, to)]
    if any(d.severity == "error" for d in diagnostics):
        return None, diagnostics
    return convert_text(tree, to), diagnostics


def convert_command(path: Path, to: str, out: Path | None = None) -> int:
    """Run `policyd convert`: the text to `out` (or stdout), diagnostics to stderr.

    Exit status 0 when the file was converted (warnings included), 1 when it was not;
    `out` is left untouched when there is nothing to write.
    """
    text, diagnostics = convert_file(path, to)
    if diagnostics:
        print(render_all(diagnostics), file=sys.stderr)
    if text is None:
        return 1
    if out is None:
        sys.stdout.write(text)
        return 0
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"{out}: error: cannot write: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
