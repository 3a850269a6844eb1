"""Print a rule AST back as text: canonical DSL (`to_dsl`) and YAML (`to_yaml`).

`policyd convert` moves rules between the two forms a beamline manager may keep them
in, and the contract (spec/rules.md) is that it loses nothing but comments: parsing
the printed text with `parse_policy` or `parse_yaml_rules` gives back the AST that was
printed, spans aside. So every literal is printed in a form the grammar reads back to
the very same value (sizes and durations in an exact unit, percentages exactly,
strings with only the two escapes the DSL knows), and every name is quoted where the
DSL would not read it bare.

Expressions are printed by `policyd.rules.typecheck.expression_text`, the same
function that quotes expressions in diagnostics, so that a message and a converted
file show an expression the same way.

What the target form cannot say is listed by `lossy_points`, not hidden: the YAML
form has no grant without `on experiment directory`, no cron text that reads like a
duration, and no way to keep a `"quoted"` name that needs no quotes; a DSL string
cannot hold a line break (a YAML `at:` template can).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Iterator
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import SingleQuotedScalarString

from policyd.diagnostics import Diagnostic
from policyd.grammar import ast
from policyd.grammar.dsl import RESERVED_WORDS
from policyd.rules.typecheck import expression_text, quote

__all__ = ["dsl_name", "lossy_points", "needs_quotes", "to_dsl", "to_yaml"]

# policy.lark's NAME: what may be written bare in a clause position.
_BARE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*")
# yaml_rules reads a `schedule:` string that looks like this as a duration.
_DURATION_LIKE = re.compile(r"\s*[0-9.]+\s*[A-Za-z]*\s*")
# A principal written `user:NAME` needs NAME to start with a visible character.
_PRINCIPAL_NAME = re.compile(r"\S")
# A string written plain in YAML: nothing an emitter or a reader could take for syntax
# (flow indicators, `#`, `: `, quotes, a leading indicator, trailing space). Anything
# else is single-quoted. ruamel still quotes a plain-looking `null`, `true` or `12`.
_YAML_PLAIN = re.compile(r"[A-Za-z0-9_(](?:[A-Za-z0-9_.()+<>=!%/* \-]|:(?=[A-Za-z0-9_.\-]))*")
# What ends a DSL string (and what reading a file turns into a line end).
_DSL_LINE_BREAK = re.compile(r"[\r\n]")
# A flow list longer than this (as text) is written one item per line.
_FLOW_WIDTH = 60

_DSL_INDENT = "  "


def needs_quotes(value: str) -> bool:
    """True when the DSL reads `value` as a name only between quotes."""
    return _BARE_NAME.fullmatch(value) is None or value in RESERVED_WORDS


def dsl_name(name: ast.Name) -> str:
    """A name as the DSL writes it: quoted when it was, or when it must be.

    Keeping the quotes the author wrote (`on "voyager"`) makes DSL -> DSL exact; a
    name that needs quotes (`"tier"`, `"a b"`) always gets them.
    """
    return quote(name.value) if name.quoted or needs_quotes(name.value) else name.value


def _int_text(literal: ast.Literal) -> str:
    """`copies 2`, `priority -5`: whole numbers as written."""
    return str(literal.value)


# ---- DSL


def _names(names: Iterable[ast.Name]) -> str:
    return ", ".join(dsl_name(n) for n in names)


def _location_set(locations: ast.LocationSet) -> str:
    match locations:
        case ast.LocationNames(names=names):
            return _names(names)
        case ast.LocationTier(tier=tier):
            return f"tier {dsl_name(tier)}"
        case ast.LocationQuery(where=where):
            return f"locations where {expression_text(where)}"
    raise TypeError(f"not a location set: {locations!r}")


def _principal(principal: ast.Principal) -> str:
    if principal.kind == "experiment-users" or principal.name is None:
        return "experiment.users"
    return f"{principal.kind} {dsl_name(principal.name)}"


def _notify_before(notify: ast.NotifyBefore) -> str:
    return f"notify {dsl_name(notify.channel)} before {expression_text(notify.before)}"


def _statement_lines(statement: ast.Statement) -> tuple[str, list[str]]:
    """The verb's head and its clauses, one per line, in the spec's order."""
    clauses: list[str] = []
    add = clauses.append
    match statement:
        case ast.Place(where=where, on=on, at=at):
            head = f"place files where {expression_text(where)}"
            if on is not None:
                add(f"on {dsl_name(on)}")
            if at is not None:
                add(f"at {quote(str(at.value))}")
        case ast.Replicate(where=where, copies=copies, on=on):
            head = f"replicate files where {expression_text(where)}"
            if copies is not None:
                add(f"copies {_int_text(copies)}")
            if on is not None:
                add(f"on {_location_set(on)}")
        case ast.Archive(where=where, to=to, release_from=release_from, notify=notify):
            head = f"archive files where {expression_text(where)}"
            if to is not None:
                add(f"to {dsl_name(to)}")
            if release_from:
                add(f"then release from {_names(release_from)}")
            if notify is not None:
                add(_notify_before(notify))
        case ast.Release():
            head = f"release files where {expression_text(statement.where)}"
            if statement.from_:
                add(f"from {_names(statement.from_)}")
            if statement.when is not None:
                add(f"when {expression_text(statement.when)}")
            if statement.until is not None:
                add(f"until {expression_text(statement.until)}")
            if statement.order_by is not None:
                direction = " desc" if statement.order_by.descending else ""
                add(f"order by {expression_text(statement.order_by.expr)}{direction}")
            if statement.notify is not None:
                add(_notify_before(statement.notify))
        case ast.Expire(where=where, notify=notify):
            head = f"expire files where {expression_text(where)}"
            if notify is not None:
                add(_notify_before(notify))
        case ast.Protect(where=where):
            head = f"protect files where {expression_text(where)}"
        case ast.Alarm():
            head = f"alarm when {expression_text(statement.when)}"
            if statement.clear_when is not None:
                add(f"clear when {expression_text(statement.clear_when)}")
            if statement.notify:
                add(f"notify {_names(statement.notify)}")
            if statement.severity is not None:
                add(f"severity {statement.severity}")
            if statement.for_ is not None:
                add(f"for {expression_text(statement.for_)}")
        case ast.Grant():
            head = "grant " + ", ".join(statement.perms)
            if statement.principals:
                add("to " + ", ".join(_principal(p) for p in statement.principals))
            if statement.on_directory:
                add("on experiment directory")
            if statement.at is not None:
                add(f"at {dsl_name(statement.at)}")
            if statement.while_ is not None:
                add(f"while {expression_text(statement.while_)}")
        case ast.Run(workflow=workflow, where=where, with_=with_):
            head = f"run workflow {dsl_name(workflow)}"
            if where is not None:
                add(f"for files where {expression_text(where)}")
            if with_:
                add("with " + ", ".join(f"{a.name} = {expression_text(a.value)}" for a in with_))
        case ast.Verify(where=where, on=on, every=every, sample=sample):
            head = "verify files"
            if where is not None:
                add(f"where {expression_text(where)}")
            if on is not None:
                add(f"on {dsl_name(on)}")
            if every is not None:
                add(f"every {expression_text(every)}")
            if sample is not None:
                add(f"sample {expression_text(sample)}")
        case _:
            raise TypeError(f"not a statement: {statement!r}")
    return head, clauses


def _schedule_text(schedule: ast.Literal) -> str:
    if schedule.kind == "duration":
        return f"schedule every {expression_text(schedule)}"
    return f"schedule {quote(str(schedule.value))}"


def _rule_lines(rule: ast.Rule) -> Iterator[str]:
    head = f"rule {dsl_name(rule.name)}"
    if rule.priority is not None:
        head += f" priority {_int_text(rule.priority)}"
    yield head
    # With several statements (alarm, grant) each one's clauses sit under its head.
    clause_indent = _DSL_INDENT * (2 if len(rule.statements) > 1 else 1)
    for statement in rule.statements:
        verb, clauses = _statement_lines(statement)
        yield _DSL_INDENT + verb
        yield from (clause_indent + clause for clause in clauses)
    if rule.schedule is not None:
        yield _DSL_INDENT + _schedule_text(rule.schedule)
    if rule.disabled:
        yield _DSL_INDENT + "disabled"


def to_dsl(file: ast.File) -> str:
    """The file as canonical DSL: one clause per line, a blank line between rules."""
    blocks: list[str] = []
    if file.station is not None:
        blocks.append(f"station {dsl_name(file.station)}")
    blocks.extend("\n".join(_rule_lines(rule)) for rule in file.rules)
    return "\n\n".join(blocks) + "\n" if blocks else ""


# ---- YAML


def _scalar(value: str) -> str:
    """A YAML string value: plain when surely safe, else single-quoted.

    ruamel's own choice of a plain style is not always one its parser reads back
    (`[?0]` in a flow list), so only a conservative set of strings is left plain.
    """
    if _YAML_PLAIN.fullmatch(value) and not value.endswith(" "):
        return value
    return SingleQuotedScalarString(value)


def _expression(expr: ast.Expr) -> str:
    """An expression (or a literal clause value) as a YAML string, in DSL syntax."""
    return _scalar(expression_text(expr))


def _flow(items: list[Any]) -> CommentedSeq:
    """A list, in flow style `[a, b]` when it is short enough to read on one line."""
    seq = CommentedSeq(items)
    if len(", ".join(str(i) for i in items)) <= _FLOW_WIDTH:
        seq.fa.set_flow_style()
    return seq


def _flow_map(**values: Any) -> CommentedMap:
    mapping = CommentedMap(values)
    mapping.fa.set_flow_style()
    return mapping


def _yaml_names(names: Iterable[ast.Name]) -> CommentedSeq:
    return _flow([_scalar(n.value) for n in names])


def _yaml_principal(principal: ast.Principal) -> Any:
    if principal.kind == "experiment-users" or principal.name is None:
        return "experiment.users"
    name = principal.name.value
    if _PRINCIPAL_NAME.match(name):
        return _scalar(f"{principal.kind}:{name}")
    # `user:` followed by nothing or by spaces would lose them; the mapping form keeps all.
    return _flow_map(**{principal.kind: _scalar(name)})


def _yaml_notify_before(notify: ast.NotifyBefore) -> CommentedMap:
    return _flow_map(channel=_scalar(notify.channel.value), before=_expression(notify.before))


def _yaml_statement(statement: ast.Statement) -> CommentedMap:
    """A statement's clauses as a mapping, in the same order as the DSL prints them."""
    out = CommentedMap()
    match statement:
        case ast.Place(where=where, on=on, at=at):
            out["where"] = _expression(where)
            if on is not None:
                out["on"] = _scalar(on.value)
            if at is not None:
                out["at"] = _scalar(str(at.value))
        case ast.Replicate(where=where, copies=copies, on=on):
            out["where"] = _expression(where)
            if copies is not None:
                out["copies"] = copies.value
            match on:
                case ast.LocationNames(names=(single,)):
                    out["on"] = _scalar(single.value)
                case ast.LocationNames(names=names):
                    out["on"] = _yaml_names(names)
                case ast.LocationTier(tier=tier):
                    out["on"] = _flow_map(tier=_scalar(tier.value))
                case ast.LocationQuery(where=query):
                    out["on"] = _flow_map(where=_expression(query))
        case ast.Archive(where=where, to=to, release_from=release_from, notify=notify):
            out["where"] = _expression(where)
            if to is not None:
                out["to"] = _scalar(to.value)
            if release_from:
                out["release_from"] = _yaml_names(release_from)
            if notify is not None:
                out["notify_before"] = _yaml_notify_before(notify)
        case ast.Release():
            out["where"] = _expression(statement.where)
            if statement.from_:
                out["from"] = _yaml_names(statement.from_)
            if statement.when is not None:
                out["when"] = _expression(statement.when)
            if statement.until is not None:
                out["until"] = _expression(statement.until)
            if statement.order_by is not None:
                order = _flow_map(expr=_expression(statement.order_by.expr))
                if statement.order_by.descending:
                    order["desc"] = True
                out["order_by"] = order
            if statement.notify is not None:
                out["notify_before"] = _yaml_notify_before(statement.notify)
        case ast.Expire(where=where, notify=notify):
            out["where"] = _expression(where)
            if notify is not None:
                out["notify_before"] = _yaml_notify_before(notify)
        case ast.Protect(where=where):
            out["where"] = _expression(where)
        case ast.Alarm():
            out["when"] = _expression(statement.when)
            if statement.clear_when is not None:
                out["clear_when"] = _expression(statement.clear_when)
            if statement.notify:
                out["notify"] = _yaml_names(statement.notify)
            if statement.severity is not None:
                out["severity"] = statement.severity
            if statement.for_ is not None:
                out["for"] = _expression(statement.for_)
        case ast.Grant():
            out["perms"] = _flow(list(statement.perms))
            if statement.principals:
                out["principals"] = _flow([_yaml_principal(p) for p in statement.principals])
            if statement.at is not None:
                out["at"] = _scalar(statement.at.value)
            if statement.while_ is not None:
                out["while"] = _expression(statement.while_)
        case ast.Run(workflow=workflow, where=where, with_=with_):
            out["workflow"] = _scalar(workflow.value)
            if where is not None:
                out["where"] = _expression(where)
            if with_:
                out["with"] = CommentedMap((a.name, _expression(a.value)) for a in with_)
        case ast.Verify(where=where, on=on, every=every, sample=sample):
            if where is not None:
                out["where"] = _expression(where)
            if on is not None:
                out["on"] = _scalar(on.value)
            if every is not None:
                out["every"] = _expression(every)
            if sample is not None:
                out["sample"] = _expression(sample)
        case _:
            raise TypeError(f"not a statement: {statement!r}")
    return out


_VERB_KEYS: dict[type, str] = {
    ast.Place: "place",
    ast.Replicate: "replicate",
    ast.Archive: "archive",
    ast.Release: "release",
    ast.Expire: "expire",
    ast.Protect: "protect",
    ast.Alarm: "alarm",
    ast.Grant: "grant",
    ast.Run: "run",
    ast.Verify: "verify",
}


def _yaml_rule(rule: ast.Rule) -> CommentedMap:
    out = CommentedMap()
    out["name"] = _scalar(rule.name.value)
    if rule.priority is not None:
        out["priority"] = rule.priority.value
    if rule.schedule is not None:
        if rule.schedule.kind == "duration":
            out["schedule"] = _expression(rule.schedule)
        else:
            # Quoted, so that a cron text is never read back as a number or a date.
            out["schedule"] = SingleQuotedScalarString(str(rule.schedule.value))
    if rule.disabled:
        out["disabled"] = True
    if rule.statements:
        verb = _VERB_KEYS[type(rule.statements[0])]
        if verb in ("alarm", "grant"):
            out[verb] = CommentedSeq(_yaml_statement(s) for s in rule.statements)
        else:
            out[verb] = _yaml_statement(rule.statements[0])
    return out


def _dumper() -> YAML:
    yaml = YAML(typ="rt")
    # Written without a %YAML directive (as spec/rules.md section 6 shows the form), and
    # read back as YAML 1.2 by parse_yaml_rules; the emitter quotes by 1.2's rules.
    yaml.indent(mapping=2, sequence=4, offset=2)
    # Never fold a long expression over lines: one value, one line, as in the DSL.
    yaml.width = 1 << 16
    return yaml


def to_yaml(file: ast.File) -> str:
    """The file in the YAML form of spec/rules.md section 6 (`version: 1`, `rules:`)."""
    top = CommentedMap()
    top["version"] = 1
    if file.station is not None:
        top["station"] = _scalar(file.station.value)
    top["rules"] = CommentedSeq(_yaml_rule(rule) for rule in file.rules)
    if not file.rules:
        top["rules"].fa.set_flow_style()
    stream = io.StringIO()
    _dumper().dump(top, stream)
    return stream.getvalue()


# ---- what a form cannot say


def lossy_points(file: ast.File, to: str) -> list[Diagnostic]:
    """What printing `file` in form `to` ("dsl" or "yaml") cannot keep, as diagnostics.

    Warnings name what the YAML form cannot say, the text being still useful: a grant
    without `on experiment directory` (YAML grants always apply there) and a cron
    schedule that reads like a duration (`schedule "5 days"`). A name quoted where no
    quotes are needed (`on "voyager"`) also comes back unquoted, but it is the same
    name, so that one is not reported. Errors name what cannot be printed at all: a
    DSL string ends on its line, so a YAML template or cron text holding a line break
    (`at: "a\\nb"`) has no DSL form.
    """
    out: list[Diagnostic] = []
    for rule in file.rules:
        texts = [rule.schedule] if rule.schedule and rule.schedule.kind == "text" else []
        for statement in rule.statements:
            if isinstance(statement, ast.Place) and statement.at is not None:
                texts.append(statement.at)
            if to == "yaml" and isinstance(statement, ast.Grant) and not statement.on_directory:
                out.append(
                    Diagnostic(
                        "convert-lossy",
                        "this grant has no 'on experiment directory'; in YAML every grant "
                        "applies to the experiment directory",
                        statement.span,
                        severity="warning",
                    )
                )
        schedule = rule.schedule
        if (
            to == "yaml"
            and schedule is not None
            and schedule.kind == "text"
            and _DURATION_LIKE.fullmatch(str(schedule.value))
        ):
            out.append(
                Diagnostic(
                    "convert-lossy",
                    f"the schedule text {quote(str(schedule.value))} reads as a duration in YAML",
                    schedule.span,
                    severity="warning",
                )
            )
        if to == "dsl":
            out.extend(
                Diagnostic(
                    "convert-impossible",
                    "this text holds a line break, which a DSL string cannot hold",
                    text.span,
                    hint="write the text on one line",
                )
                for text in texts
                if _DSL_LINE_BREAK.search(str(text.value))
            )
    return out
