"""The checker of `policyd check`: an ordered list of named passes over parsed rule files.

Each pass is a small function that reads the shared `CheckContext` (every parsed rule
file plus the names the site config defines) and returns diagnostics; none stops the
others, so one run reports every mistake of every file, as issue 3 asks. Keeping the
passes as data (`PASSES`) means a new check is one function and one line, the order is
explicit (names before types, so the messages read in the order a person fixes them),
and a bug in one pass becomes an `internal-error` diagnostic instead of hiding the
findings of the rest.

Codes: duplicate-rule, unknown-location, unknown-tier, unknown-channel,
unknown-workflow, unknown-station (a warning), bad-name, missing-clause,
out-of-range, bad-threshold, plus typecheck.py's codes for expressions and templates
and workflows.py's undefined-variable.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Final

from policyd.diagnostics import Diagnostic, Severity, Span
from policyd.grammar import ast
from policyd.rules.findings import (
    layout_conflict,
    never_matches,
    no_other_copy,
    too_many_copies,
    unused_names,
)
from policyd.rules.signatures import FUNCTIONS
from policyd.rules.typecheck import (
    TEMPLATE,
    check_expression,
    check_template,
    expression_text,
    statement_expressions,
)
from policyd.rules.types import is_orderable
from policyd.rules.workflows import Workflow, check_variables
from policyd.stations.config import NAME_RE, parse_schedule

__all__ = [
    "PASSES",
    "CheckContext",
    "Pass",
    "RuleFile",
    "SiteNames",
    "full_rule_name",
    "run_passes",
]


@dataclass(frozen=True)
class RuleFile:
    """One parsed rule file: `path` as diagnostics show it, its text and its tree.

    The text is kept so that a pass can see how a value was written (a YAML template's
    opening quote shifts its columns by one).
    """

    path: str
    text: str
    tree: ast.File

    @property
    def is_yaml(self) -> bool:
        return self.path.lower().endswith((".yaml", ".yml"))

    @cached_property
    def lines(self) -> list[str]:
        """The text's lines, split once (passes look up a line per template)."""
        return self.text.splitlines()


@dataclass(frozen=True)
class SiteNames:
    """What the site config defines; None means "not known" (the config did not load),
    and then references of that kind are not checked rather than all reported."""

    locations: Mapping[str, str] | None = None  # name -> tier
    channels: Sequence[str] | None = None
    stations: Sequence[str] | None = None
    workflows: Mapping[str, Workflow] | None = None


@dataclass
class CheckContext:
    """Shared by every pass: the files in config order and the site's names."""

    files: list[RuleFile]
    names: SiteNames = field(default_factory=SiteNames)


PassFunction = Callable[[CheckContext], list[Diagnostic]]


@dataclass(frozen=True)
class Pass:
    name: str
    run: PassFunction
    description: str


def full_rule_name(file: ast.File, rule: ast.Rule) -> str:
    """`S/NAME` in a file with `station S`, `NAME` otherwise (spec/rules.md section 2)."""
    return f"{file.station.value}/{rule.name.value}" if file.station else rule.name.value


# ---- walking the trees


def _statements(ctx: CheckContext) -> Iterator[tuple[RuleFile, ast.Rule, ast.Statement]]:
    for rule_file in ctx.files:
        for rule in rule_file.tree.rules:
            for statement in rule.statements:
                yield rule_file, rule, statement


# ---- unique-names


def unique_names(ctx: CheckContext) -> list[Diagnostic]:
    """Full rule names are unique per site: `--rule`, plans and the ledger name rules by them."""
    first: dict[str, Span] = {}
    out: list[Diagnostic] = []
    for rule_file in ctx.files:
        for rule in rule_file.tree.rules:
            name = full_rule_name(rule_file.tree, rule)
            seen = first.get(name)
            if seen is None:
                first[name] = rule.name.span
                continue
            out.append(
                Diagnostic(
                    "duplicate-rule",
                    f"rule {name!r} is already defined at {seen}",
                    rule.name.span,
                    hint="full rule names (S/NAME in a file with `station S`) are unique "
                    "per site; rename one of them",
                )
            )
    return out


# ---- resolve-names


def _unknown(
    code: str,
    what: str,
    plural: str,
    name: str,
    known: Sequence[str],
    span: Span,
    severity: Severity = "error",
) -> Diagnostic:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    message = f"unknown {what} {name!r}"
    if close:
        message += f"; did you mean {close[0]!r}?"
    hint = (
        f"defined {plural}: {', '.join(known)}"
        if known
        else f"no {plural} are defined in the site config"
    )
    return Diagnostic(code, message, span, severity, hint)


class _Resolver:
    """Checks each name against the site's; one instance per run of the pass."""

    def __init__(self, names: SiteNames) -> None:
        self.names = names
        self.out: list[Diagnostic] = []
        locations = names.locations
        self.tiers: list[str] | None = (
            None if locations is None else list(dict.fromkeys(locations.values()))
        )

    def location(self, name: str, span: Span) -> None:
        known = self.names.locations
        if known is not None and name not in known:
            self.out.append(
                _unknown("unknown-location", "location", "locations", name, list(known), span)
            )

    def tier(self, name: str, span: Span) -> None:
        if self.tiers is not None and name not in self.tiers:
            self.out.append(
                _unknown("unknown-tier", "tier", "location tiers", name, self.tiers, span)
            )

    def channel(self, name: str, span: Span) -> None:
        known = self.names.channels
        if known is not None and name not in known:
            self.out.append(
                _unknown("unknown-channel", "notify channel", "notify channels", name, known, span)
            )

    def workflow(self, name: str, span: Span) -> None:
        known = self.names.workflows
        if known is not None and name not in known:
            self.out.append(
                _unknown("unknown-workflow", "workflow", "workflows", name, list(known), span)
            )

    def station(self, name: str, span: Span) -> None:
        """A station must be a well-formed name; an unknown one is only a warning, since a
        site may run rules for a beamline before it writes that beamline's station file."""
        if not NAME_RE.match(name):
            self.out.append(
                Diagnostic(
                    "bad-name",
                    f"{name!r} is not a station name",
                    span,
                    hint="a station name is letters, digits, _ and -",
                )
            )
            return
        known = self.names.stations
        if known is not None and name not in known:
            self.out.append(
                _unknown(
                    "unknown-station", "station", "stations", name, known, span, severity="warning"
                )
            )

    def expression(self, expr: ast.Expr) -> None:
        """String arguments that name things: `usage("LOC", station = "S")`, `copies(tier = "T")`.

        Literal-only parameters (signatures.Parameter.literal) exist so this can be done.
        """
        for node in ast.walk(expr):
            if not isinstance(node, ast.Call):
                continue
            function = FUNCTIONS.get(node.name)
            if function is None:
                continue  # unknown-function is the types pass's
            pairs = list(zip(function.positional, node.args, strict=False))
            keywords = {p.name: p for p in function.keywords}
            pairs += [(keywords[k.name], k.value) for k in node.kwargs if k.name in keywords]
            for parameter, argument in pairs:
                if not (
                    parameter.literal
                    and isinstance(argument, ast.Literal)
                    and argument.kind == "text"
                ):
                    continue
                value = str(argument.value)
                if parameter.name in ("loc", "location"):
                    self.location(value, argument.span)
                elif parameter.name == "station":
                    self.station(value, argument.span)
                elif parameter.name == "tier":
                    self.tier(value, argument.span)

    def location_set(self, locations: ast.LocationSet | None) -> None:
        match locations:
            case ast.LocationNames(names=names):
                for name in names:
                    self.location(name.value, name.span)
            case ast.LocationTier(tier=tier):
                self.tier(tier.value, tier.span)

    def statement(self, statement: ast.Statement) -> None:
        notify: ast.NotifyBefore | None = None
        match statement:
            case ast.Place(on=on) | ast.Verify(on=on):
                if on is not None:
                    self.location(on.value, on.span)
            case ast.Replicate(on=on):
                self.location_set(on)
            case ast.Archive():
                if statement.to is not None:
                    self.location(statement.to.value, statement.to.span)
                for name in statement.release_from:
                    self.location(name.value, name.span)
                notify = statement.notify
            case ast.Release():
                for name in statement.from_:
                    self.location(name.value, name.span)
                notify = statement.notify
            case ast.Expire():
                notify = statement.notify
            case ast.Alarm():
                for name in statement.notify:
                    self.channel(name.value, name.span)
            case ast.Grant(at=at):
                if at is not None:
                    self.location(at.value, at.span)
            case ast.Run(workflow=workflow):
                self.workflow(workflow.value, workflow.span)
        if notify is not None:
            self.channel(notify.channel.value, notify.channel.span)
        for expr, _ in statement_expressions(statement):
            self.expression(expr)


def resolve_names(ctx: CheckContext) -> list[Diagnostic]:
    """Every location, tier, channel, workflow and station a rule names exists in the site."""
    resolver = _Resolver(ctx.names)
    for rule_file in ctx.files:
        if rule_file.tree.station is not None:
            station = rule_file.tree.station
            resolver.station(station.value, station.span)
        for rule in rule_file.tree.rules:
            for statement in rule.statements:
                resolver.statement(statement)
    return resolver.out


# ---- required-clauses


#: Per verb: (clause, how the DSL writes the verb), spec/rules.md section 3.
_FORMS: Final = {
    "place": 'place files where E on LOC at "TEMPLATE"',
    "replicate": "replicate files where E copies N on LOCSET",
    "archive": "archive files where E to LOC",
    "release": "release files where E from LOC, ...",
    "alarm": "alarm when E notify CH, ...",
    "grant": "grant PERMS to PRINCIPALS on experiment directory at LOC",
    "run": "run workflow NAME for files where E",
    "verify": "verify files on LOC every D",
}
#: Per verb: the YAML keys section 3 requires.
_YAML_REQUIRED: Final = {
    "place": "where, on, at",
    "replicate": "where, copies, on",
    "archive": "where, to",
    "release": "where, from",
    "alarm": "when, notify",
    "grant": "perms, principals, at",
    "run": "workflow, where",
    "verify": "on, every",
}
#: The YAML key of a clause where it differs from the DSL's words.
_YAML_KEYS: Final = {("grant", "to"): "principals", ("run", "for"): "where"}


def _missing(statement: ast.Statement) -> list[str]:
    """The required clauses a statement lacks, in the order the spec lists them."""
    match statement:
        case ast.Place():
            return [c for c, v in (("on", statement.on), ("at", statement.at)) if v is None]
        case ast.Replicate():
            pairs = (("copies", statement.copies), ("on", statement.on))
            return [c for c, v in pairs if v is None]
        case ast.Archive():
            return ["to"] if statement.to is None else []
        case ast.Release():
            out = [] if statement.from_ else ["from"]
            if statement.when is not None and statement.until is None:
                out.append("until")
            if statement.until is not None and statement.when is None:
                out.append("when")
            return out
        case ast.Alarm():
            return [] if statement.notify else ["notify"]
        case ast.Grant():
            pairs2: tuple[tuple[str, object], ...] = (
                ("to", statement.principals or None),
                ("on", statement.on_directory or None),
                ("at", statement.at),
            )
            return [c for c, v in pairs2 if v is None]
        case ast.Run():
            return ["for"] if statement.where is None else []
        case ast.Verify():
            pairs3 = (("on", statement.on), ("every", statement.every))
            return [c for c, v in pairs3 if v is None]
    return []


def _verb(statement: ast.Statement) -> str:
    return type(statement).__name__.lower()


def required_clauses(ctx: CheckContext) -> list[Diagnostic]:
    """Each verb's required clauses (the grammar lets clauses come in any order, so it
    cannot require them; a `place` without `at` must still not reach the planner)."""
    out: list[Diagnostic] = []
    for rule_file, rule, statement in _statements(ctx):
        verb = _verb(statement)
        for clause in _missing(statement):
            if rule_file.is_yaml:
                key = _YAML_KEYS.get((verb, clause), clause)
                message = f"{verb} in rule {rule.name.value!r} is missing the key {key!r}"
                hint = f"{verb} needs the keys: " + _YAML_REQUIRED.get(verb, "where")
            else:
                message = f"{verb} in rule {rule.name.value!r} is missing its `{clause}` clause"
                hint = "write: " + _FORMS.get(verb, verb)
            if verb == "release" and clause in ("until", "when"):
                hint = 'a threshold release needs both: when usage("LOC") > 90% until 80%'
            out.append(Diagnostic("missing-clause", message, statement.span, hint=hint))
    return out


# ---- types


def types(ctx: CheckContext) -> list[Diagnostic]:
    """Every expression typed in the context of its clause (what it may see, bool or value)."""
    out: list[Diagnostic] = []
    for _, _, statement in _statements(ctx):
        for expr, context in statement_expressions(statement):
            t, problems = check_expression(expr, context)
            out += problems
            if (
                isinstance(statement, ast.Release)
                and statement.order_by is not None
                and expr is statement.order_by.expr
                and not problems
                and not is_orderable(t)
            ):
                out.append(
                    Diagnostic(
                        "type-mismatch",
                        f"cannot order files by {t}: {expression_text(expr)}",
                        expr.span,
                        hint="order by text, a number, size, duration, time or percent",
                    )
                )
    return out


# ---- templates


def templates(ctx: CheckContext) -> list[Diagnostic]:
    """`at` templates: known attributes, strftime formats, a path that stays relative.

    A site's place rules share a few layouts, and whether a template has a mistake
    depends on its text alone (the span only places the messages), so a text found
    clean once is not checked again.
    """
    out: list[Diagnostic] = []
    clean: set[str] = set()
    for rule_file, _, statement in _statements(ctx):
        if not isinstance(statement, ast.Place) or statement.at is None:
            continue
        at = statement.at
        text = str(at.value)
        if text in clean:
            continue
        found = check_template(
            text, at.span, TEMPLATE, text_offset=_quote_width(rule_file, at.span)
        )
        if not found:
            clean.add(text)
        out += found
    return out


def _quote_width(rule_file: RuleFile, span: Span) -> int:
    """1 when the template is written in quotes at `span` (always in the DSL), else 0."""
    if not rule_file.is_yaml:
        return 1
    lines = rule_file.lines
    if 0 < span.line <= len(lines):
        line = lines[span.line - 1]
        if 0 < span.col <= len(line) and line[span.col - 1] in "'\"":
            return 1
    return 0


# ---- workflow-variables


def workflow_variables(ctx: CheckContext) -> list[Diagnostic]:
    """A `run` rule's workflow may use only what the job will have: the rule's `with` keys
    among them, so this is checked per rule (each problem once, in the workflow file)."""
    workflows = ctx.names.workflows or {}
    out: dict[Diagnostic, None] = {}
    for rule_file, rule, statement in _statements(ctx):
        if not isinstance(statement, ast.Run):
            continue
        workflow = workflows.get(statement.workflow.value)
        if workflow is None:
            continue
        keys = [argument.name for argument in statement.with_]
        for diagnostic in check_variables(workflow, keys):
            name = full_rule_name(rule_file.tree, rule)
            hint = diagnostic.hint or ""
            extra = f"rule {name!r} ({statement.span}) starts it"
            out[replace(diagnostic, hint=f"{hint}; {extra}" if hint else extra)] = None
    return list(out)


# ---- literals


def _number(literal: ast.Literal | None) -> float | None:
    if literal is None or isinstance(literal.value, bool):
        return None
    return float(literal.value) if isinstance(literal.value, int | float) else None


def _percent_text(value: float) -> str:
    return f"{value * 100:g}%"


def _when_threshold(when: ast.Expr) -> float | None:
    """P in `X > P%` / `X >= P%` (or `P% < X`), the high mark of a threshold release."""
    if not isinstance(when, ast.Compare):
        return None
    if when.op in (">", ">=") and isinstance(when.right, ast.Literal):
        literal = when.right
    elif when.op in ("<", "<=") and isinstance(when.left, ast.Literal):
        literal = when.left
    else:
        return None
    return _number(literal) if literal.kind == "percent" else None


def literals(ctx: CheckContext) -> list[Diagnostic]:
    """Values that parse but cannot mean anything: 0 copies, a 150% sample, `every 0 s`,
    or a release whose low mark is not below its high mark."""
    out: list[Diagnostic] = []

    def error(code: str, message: str, span: Span, hint: str | None = None) -> None:
        out.append(Diagnostic(code, message, span, hint=hint))

    def positive(literal: ast.Literal | None, clause: str) -> None:
        value = _number(literal)
        if literal is not None and value is not None and value <= 0:
            error("out-of-range", f"`{clause}` needs a duration above 0", literal.span)

    def percent(literal: ast.Literal | None, clause: str) -> None:
        value = _number(literal)
        if literal is None or value is None:
            return
        if not 0 <= value <= 1:
            error(
                "out-of-range",
                f"`{clause}` is a percentage from 0% to 100%, not {_percent_text(value)}",
                literal.span,
            )
        elif value == 0 and clause == "sample":
            out.append(
                Diagnostic(
                    "out-of-range",
                    "`sample 0%` verifies nothing",
                    literal.span,
                    "warning",
                    "sample a share above 0%, or remove the rule",
                )
            )

    for rule_file in ctx.files:
        for rule in rule_file.tree.rules:
            if rule.schedule is not None and rule.schedule.kind == "duration":
                positive(rule.schedule, "schedule every")
            elif rule.schedule is not None and rule.schedule.kind == "text":
                try:
                    parse_schedule(rule.schedule.value)
                except ValueError as exc:
                    error("bad-schedule", str(exc), rule.schedule.span)
            for statement in rule.statements:
                notify = getattr(statement, "notify", None)
                if isinstance(notify, ast.NotifyBefore):
                    positive(notify.before, "notify ... before")
                match statement:
                    case ast.Replicate(copies=copies) if copies is not None:
                        count = _number(copies)
                        if count is not None and count < 1:
                            error(
                                "out-of-range",
                                f"`copies` needs at least 1, not {copies.value}",
                                copies.span,
                            )
                    case ast.Verify():
                        positive(statement.every, "every")
                        percent(statement.sample, "sample")
                    case ast.Alarm(for_=for_) if for_ is not None:
                        value = _number(for_)
                        if value is not None and value < 0:
                            error("out-of-range", "`for` cannot be negative", for_.span)
                    case ast.Release(until=until, when=when) if until is not None:
                        percent(until, "until")
                        high = _when_threshold(when) if when is not None else None
                        low = _number(until)
                        if high is not None and low is not None and low >= high:
                            error(
                                "bad-threshold",
                                f"`until {_percent_text(low)}` must be below the `when` "
                                f"threshold {_percent_text(high)}",
                                until.span,
                                hint="the release runs while usage is above the high mark "
                                "and stops at the low mark: when ... > 90% until 80%",
                            )
    return out


#: The checker, in order: names first, then structure, types, and values.
PASSES: Final[tuple[Pass, ...]] = (
    Pass("unique-names", unique_names, "full rule names are unique per site"),
    Pass("resolve-names", resolve_names, "locations, tiers, channels, workflows, stations exist"),
    Pass("required-clauses", required_clauses, "each verb has its required clauses"),
    Pass("types", types, "every expression is well typed in its clause"),
    Pass("templates", templates, "`at` templates render a safe relative path"),
    Pass("workflow-variables", workflow_variables, "a run rule's workflow has its variables"),
    Pass("literals", literals, "counts, percentages and durations are in range"),
    Pass("no-other-copy", no_other_copy, "a release or expire has its files kept elsewhere"),
    Pass("layout-conflict", layout_conflict, "equal-priority place rules agree on a layout"),
    Pass("too-many-copies", too_many_copies, "a replicate's set has enough locations"),
    Pass("never-matches", never_matches, "no condition is always false"),
    Pass("unused-names", unused_names, "every location, channel and workflow is used"),
)


def run_passes(ctx: CheckContext, passes: Sequence[Pass] = PASSES) -> list[Diagnostic]:
    """Every pass's diagnostics; a pass that fails is one `internal-error`, not a traceback."""
    out: list[Diagnostic] = []
    for check in passes:
        try:
            out += check.run(ctx)
        except Exception as exc:  # the promise of `check` is "never a traceback"
            span = Span(ctx.files[0].path) if ctx.files else None
            out.append(
                Diagnostic(
                    "internal-error",
                    f"internal error in check pass {check.name!r}: {type(exc).__name__}: {exc}",
                    span,
                )
            )
    return out
