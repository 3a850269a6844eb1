"""Static-analysis findings of `policyd check` (issue 3, point 5).

The other passes say whether the rules are *well formed*; these say whether they do
what their author most likely meant. Each finding is one pass (context in,
diagnostics out), appended to `passes.PASSES`:

* `no-other-copy`: a `release` or `expire` whose files no `place`, `replicate` or
  `archive` rule keeps a copy of elsewhere. An error for `expire`, the one verb that
  may remove a file's last copy; a warning for `release`, since the safety floor
  (spec/rules.md section 5) never lets a release delete the last verified replica.
* `layout-conflict` (warning): two enabled `place` rules on one location with equal
  priority, whose files may overlap, with different templates; config order decides.
* `too-many-copies` (error): `replicate ... copies N` on a set with fewer than N
  locations can never be satisfied.
* `unused-location`, `unused-channel`, `unused-workflow` (warnings): defined and
  named nowhere (the `unused_names` pass; see its docstring for why it is not listed
  in PASSES yet).
* `never-matches` (warning): a condition that folds to false, or that contradicts the
  file's `station` scope.

Everything here must be conservative: a finding is reported only when it is proven
from the text. "The same files" is decided by `_Overlap`: two conditions overlap
unless a contradiction between simple atoms (`x == "a"` vs `x == "b"`, disjoint
`in` lists, incompatible `like` globs, `E` vs `not E`, station scope) proves they
cannot both hold. An unproven disjointness counts as overlap, which can only
suppress a `no-other-copy` and only add a `layout-conflict` warning, never an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from policyd.diagnostics import Diagnostic
from policyd.grammar import ast
from policyd.rules.typecheck import (
    TEMPLATE,
    check_template,
    constant_value,
    expression_text,
    statement_expressions,
)
from policyd.stations.config import (
    CONFIG_FILENAME,
    DEFAULT_RULE_GLOBS,
    DEFAULT_STATION_GLOBS,
    files_matching,
)
from policyd.yamlsource import load_yaml, span_at

if TYPE_CHECKING:  # passes.py imports this module to list its passes
    from policyd.rules.passes import CheckContext, RuleFile

__all__ = [
    "layout_conflict",
    "never_matches",
    "no_other_copy",
    "too_many_copies",
    "unused_names",
]

#: Functions whose text arguments name a location (spec/rules.md section 4).
_LOCATION_FUNCTIONS: Final = frozenset({"usage", "used", "free", "path_on", "time_to_full"})
#: Most conjunctions a condition may expand to before the prover gives up (= overlap).
_MAX_CONJUNCTIONS: Final = 64


# ---- walking


@dataclass(frozen=True)
class _Stmt:
    """A statement with what the findings need about its rule and file."""

    file: RuleFile
    rule: ast.Rule
    statement: ast.Statement

    @property
    def station(self) -> str | None:
        station = self.file.tree.station
        return station.value if station is not None else None

    @property
    def name(self) -> str:
        # passes.full_rule_name, repeated to keep this module free of an import cycle
        station = self.file.tree.station
        short = self.rule.name.value
        return f"{station.value}/{short}" if station is not None else short

    @property
    def priority(self) -> float:
        literal = self.rule.priority
        value = literal.value if literal is not None else 0
        return float(value) if isinstance(value, int | float) else 0.0


def _statements(ctx: CheckContext, *, enabled_only: bool = False) -> Iterator[_Stmt]:
    for rule_file in ctx.files:
        for rule in rule_file.tree.rules:
            if enabled_only and rule.disabled:
                continue
            for statement in rule.statements:
                yield _Stmt(rule_file, rule, statement)


# ---- the overlap prover

# An atom is (positive, key). Keys: ("eq", attr, value), ("in", attr, values),
# ("like", target, prefix, suffix), ("null", attr), ("expr", text).
_Key = tuple[Any, ...]
_Atom = tuple[bool, _Key]
_Conjunction = frozenset[_Atom]


def _attribute(expr: ast.Expr) -> tuple[str, ...] | None:
    """The attribute an atom is about; `station` is `experiment.station`."""
    if isinstance(expr, ast.Attribute):
        return ("experiment", "station") if expr.path == ("station",) else expr.path
    if isinstance(expr, ast.Index):
        return (*expr.target.path, expr.key)
    return None


def _scalar(expr: ast.Expr) -> tuple[str, object] | None:
    """A text or bool literal as a comparable value (numbers and units are left alone:
    `1000 == 1 KB` is a question this prover does not need to answer)."""
    if isinstance(expr, ast.Literal) and expr.kind in ("text", "bool"):
        return (expr.kind, expr.value)
    return None


_WILDCARDS: Final = "*?["


def _glob_ends(pattern: str) -> tuple[str, str, bool] | None:
    """(fixed prefix, fixed suffix, exact) of a `like` glob: every matching value starts
    with the prefix and ends with the suffix. A `/` next to `**` is not fixed, since
    `a/**/b` also matches `a/b` and `**/b` may match `b`."""
    chars: list[tuple[str, bool]] = []  # (char, is literal)
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            chars.append((pattern[i + 1], True))
            i += 2
            continue
        chars.append((char, char not in _WILDCARDS))
        i += 1
    if all(literal for _, literal in chars):
        text = "".join(c for c, _ in chars)
        return text, text, True
    first = next(i for i, (_, literal) in enumerate(chars) if not literal)
    last = max(i for i, (_, literal) in enumerate(chars) if not literal)
    prefix = "".join(c for c, _ in chars[:first])
    suffix = "".join(c for c, _ in chars[last + 1 :])
    if chars[first][0] == "*" and prefix.endswith("/"):
        prefix = prefix[:-1]
    if chars[last][0] == "*" and suffix.startswith("/"):
        suffix = suffix[1:]
    return prefix, suffix, False


def _like_atoms(operand: ast.Expr, pattern: str) -> list[_Key] | None:
    """Keys for `file.path like P` / `file.name like P`: a pattern without `/` matches
    the file name only (spec/rules.md section 4), so both become a name or a path glob;
    a fixed `.EXT` at the end of the name also gives `file.ext == "EXT"`."""
    attr = _attribute(operand)
    if attr not in (("file", "path"), ("file", "name")):
        return None
    ends = _glob_ends(pattern)
    if ends is None:
        return None
    prefix, suffix, exact = ends
    target = "name" if "/" not in pattern else "path"
    if attr == ("file", "name") and target == "path":
        return None
    keys: list[_Key] = [("like", target, prefix, suffix, exact)]
    last = suffix.rsplit("/", 1)[-1]
    if "." in last:  # the name ends with `last`, so its last dot is in there
        keys.append(("eq", ("file", "ext"), ("text", last.rsplit(".", 1)[1])))
    return keys


def _atom_keys(expr: ast.Expr) -> list[_Key]:
    match expr:
        case ast.Compare(op="==" | "!=", left=left, right=right):
            attr, value = _attribute(left), _scalar(right)
            if attr is None:
                attr, value = _attribute(right), _scalar(left)
            if attr is not None and value is not None:
                return [("eq", attr, value)]
        case ast.In(item=item, container=ast.Literal(kind="list", value=tuple() as items)):
            attr = _attribute(item)
            values = [_scalar(i) for i in items]  # type: ignore[arg-type]
            if attr is not None and all(v is not None for v in values):
                return [("in", attr, frozenset(values))]
        case ast.Like(operand=operand, pattern=pattern):
            keys = _like_atoms(operand, pattern)
            if keys is not None:
                return keys
        case ast.IsNull(operand=operand, negated=False):
            attr = _attribute(operand)
            if attr is not None:
                return [("null", attr)]
    return [("expr", expression_text(expr))]


def _dnf(expr: ast.Expr, positive: bool = True) -> list[_Conjunction] | None:
    """`expr` (or its negation) as a disjunction of conjunctions of atoms; unsatisfiable
    conjunctions are dropped, None when it grows too large to reason about. Conditions
    are two-valued (the null rule gives false, and `not` negates that), so De Morgan
    holds."""
    folded = constant_value(expr)
    if folded is None and _below_zero(expr):
        folded = False
    if folded is not None:
        return [frozenset()] if folded == positive else []
    match expr:
        case ast.Not(operand=operand):
            return _dnf(operand, not positive)
        case ast.IsNull(operand=operand, negated=True):
            return _dnf(ast.IsNull(operand, False, expr.span), not positive)
        case ast.Compare(op="!=", left=left, right=right):
            return _dnf(ast.Compare("==", left, right, expr.span), not positive)
        case ast.And(left=left, right=right) | ast.Or(left=left, right=right):
            a, b = _dnf(left, positive), _dnf(right, positive)
            if a is None or b is None:
                return None
            if isinstance(expr, ast.And) == positive:
                out = [x | y for x in a for y in b]
                out = [c for c in out if not _contradictory(c)]
            else:
                out = a + b
            return out if len(out) <= _MAX_CONJUNCTIONS else None
    keys = _atom_keys(expr)
    if positive:
        conjunction = frozenset((True, key) for key in keys)
        return [] if _contradictory(conjunction) else [conjunction]
    # not (A and implied B) is not (A): keep only the first key, the atom itself.
    return [frozenset({(False, keys[0])})]


def _below_zero(expr: ast.Expr) -> bool:
    """`file.size < 0` (or `0 > file.size`, `file.size <= -1 KB`): a size is never
    negative, a fold constant_value leaves to the caller since it knows no attributes."""
    if not isinstance(expr, ast.Compare):
        return False
    op, left, right = expr.op, expr.left, expr.right
    if isinstance(left, ast.Literal):
        flipped = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}
        op, left, right = flipped.get(op, op), right, left
    if _attribute(left) != ("file", "size") or not isinstance(right, ast.Literal):
        return False
    if right.kind not in ("number", "size") or isinstance(right.value, bool):
        return False
    value = right.value
    if not isinstance(value, int | float):
        return False
    return (op == "<" and value <= 0) or (op in ("<=", "==") and value < 0)


def _prefix_compatible(a: str, b: str) -> bool:
    return a.startswith(b) or b.startswith(a)


def _suffix_compatible(a: str, b: str) -> bool:
    return a.endswith(b) or b.endswith(a)


def _clash(a: _Key, b: _Key) -> bool:
    """Two positive atoms that no file satisfies together."""
    kind_a, kind_b = a[0], b[0]
    if kind_a == "null" or kind_b == "null":
        null, other = (a, b) if kind_a == "null" else (b, a)
        if other[0] == "eq":
            return other[1] == null[1]
        if other[0] == "in":
            return other[1] == null[1]
        if other[0] == "like":
            return null[1] == ("file", other[1])
        return False
    if kind_a == "eq" and kind_b == "eq":
        return a[1] == b[1] and a[2] != b[2]
    if {kind_a, kind_b} == {"eq", "in"}:
        eq, within = (a, b) if kind_a == "eq" else (b, a)
        return eq[1] == within[1] and eq[2] not in within[2]
    if kind_a == "in" and kind_b == "in":
        return a[1] == b[1] and not (a[2] & b[2])
    if kind_a == "like" and kind_b == "like":
        _, target_a, prefix_a, suffix_a, exact_a = a
        _, target_b, prefix_b, suffix_b, exact_b = b
        if not _suffix_compatible(suffix_a, suffix_b):
            return True
        if target_a != target_b:
            return False
        if exact_a and exact_b:
            return prefix_a != prefix_b
        return not _prefix_compatible(prefix_a, prefix_b)
    return False


def _contradictory(conjunction: _Conjunction) -> bool:
    atoms = list(conjunction)
    for i, (sign_a, key_a) in enumerate(atoms):
        for sign_b, key_b in atoms[i + 1 :]:
            if key_a == key_b and sign_a != sign_b:
                return True
            if sign_a and sign_b and _clash(key_a, key_b):
                return True
    return False


def _scope(station: str | None) -> _Conjunction:
    """A file with `station S` means `experiment.station == "S" and (E)`."""
    if station is None:
        return frozenset()
    return frozenset({(True, ("eq", ("experiment", "station"), ("text", station)))})


def _files(station: str | None, where: ast.Expr | None) -> list[_Conjunction] | None:
    """The files a statement is about, as conjunctions (None: too complex to say)."""
    return _scoped(station, [frozenset()] if where is None else _dnf(where))


def _scoped(station: str | None, dnf: list[_Conjunction] | None) -> list[_Conjunction] | None:
    """`dnf` restricted to the station scope of its file."""
    if dnf is None or station is None:
        return dnf
    scope = _scope(station)
    return [c for c in (scope | conj for conj in dnf) if not _contradictory(c)]


def _overlap(a: list[_Conjunction] | None, b: list[_Conjunction] | None) -> bool:
    """Whether some file may satisfy both; True unless a contradiction proves not."""
    if a is None or b is None:
        return True
    return any(not _contradictory(x | y) for x in a for y in b)


# ---- the site config, re-read for what the context does not carry


@dataclass
class _Site:
    """The raw site config (positions included) and what it and its stations use."""

    file: Path
    tree: Mapping[Any, Any]
    locations: dict[str, Mapping[Any, Any]]
    channels: list[str]
    used_locations: set[str] = field(default_factory=set)
    used_channels: set[str] = field(default_factory=set)
    complete: bool = True  # every rule file the config names is in the context


def _names(value: Any) -> list[str]:
    """A name or a list of names, as station files and `default_notify` write them."""
    items = value if isinstance(value, list) else [value]
    return [str(v) for v in items if isinstance(v, str | int) and not isinstance(v, bool)]


def _globs(tree: Mapping[Any, Any], key: str, default: Iterable[str]) -> list[str]:
    written = tree.get(key)
    if written is None:
        return list(default)
    items = written if isinstance(written, list) else [written]
    return [str(i) for i in items if isinstance(i, str)]


def _find_config(ctx: CheckContext) -> Path | None:
    """The site config of the context's rule files: the nearest folder above one of
    them holding policyd.yaml (check.py finds rule files by the config's patterns, so
    they live under its folder), or above a workflow file."""
    starts = [Path(f.path) for f in ctx.files]
    starts += [Path(w._file) for w in (ctx.names.workflows or {}).values()]
    for start in starts:
        for folder in [*start.parents, *start.absolute().parents]:
            candidate = folder / CONFIG_FILENAME
            if candidate.is_file():
                return candidate  # relative when the rule file's path is, as check shows it
    return None


def _load_site(ctx: CheckContext) -> _Site | None:
    """The site config matching `ctx.names`, or None when it cannot be found for sure
    (then the unused-* findings are skipped rather than guessed)."""
    known = ctx.names
    if known.locations is None or known.channels is None:
        return None
    config_file = _find_config(ctx)
    if config_file is None:
        return None
    try:
        tree = load_yaml(config_file)
    except Exception:
        return None
    if not isinstance(tree, Mapping):
        return None
    locations_section = tree.get("locations") or {}
    notify_section = tree.get("notify") or {}
    if not isinstance(locations_section, Mapping) or not isinstance(notify_section, Mapping):
        return None
    locations = {
        str(k): (v if isinstance(v, Mapping) else {}) for k, v in locations_section.items()
    }
    channels = [str(k) for k in notify_section]
    if set(locations) != set(known.locations) or set(channels) != set(known.channels):
        return None  # not the config these names came from
    site = _Site(config_file, tree, locations, channels)
    quotas = tree.get("quotas")
    if isinstance(quotas, Mapping):
        site.used_locations.update(str(k) for k in quotas)
    alarms = tree.get("alarms")
    if isinstance(alarms, Mapping):
        site.used_channels.update(_names(alarms.get("default_notify")))
    root = config_file.parent
    for relative in files_matching(root, _globs(tree, "stations", DEFAULT_STATION_GLOBS)):
        try:
            station = load_yaml(root / relative)
        except Exception:
            site.complete = False
            continue
        if isinstance(station, Mapping):
            site.used_locations.update(_names(station.get("locations")))
            site.used_channels.update(_names(station.get("contacts")))
    checked = {Path(f.path).absolute() for f in ctx.files}
    for relative in files_matching(root, _globs(tree, "rules", DEFAULT_RULE_GLOBS)):
        if (root / relative).absolute() not in checked:
            site.complete = False  # a rule file that did not parse may name anything
    return site


# ---- location sets


def _location_query(expr: ast.Expr, name: str, info: Mapping[Any, Any]) -> bool | None:
    """`locations where E` for one location; None when E is beyond this small evaluator."""
    values = {"name": name, "tier": info.get("tier"), "site": info.get("site")}

    def value(node: ast.Expr) -> object:
        if isinstance(node, ast.Literal) and node.kind == "text":
            return node.value
        if isinstance(node, ast.Attribute) and len(node.path) == 2 and node.path[0] == "location":
            return values.get(node.path[1], ...)
        return ...

    match expr:
        case ast.And(left=a, right=b) | ast.Or(left=a, right=b):
            x, y = _location_query(a, name, info), _location_query(b, name, info)
            if isinstance(expr, ast.And):
                return False if False in (x, y) else (None if None in (x, y) else True)
            return True if True in (x, y) else (None if None in (x, y) else False)
        case ast.Not(operand=operand):
            inner = _location_query(operand, name, info)
            return None if inner is None else not inner
        case ast.Compare(op="==" | "!=", left=left, right=right):
            a, b = value(left), value(right)
            if a is ... or b is ... or not all(isinstance(v, str) for v in (a, b)):
                return None
            return (a == b) == (expr.op == "==")
        case ast.In(item=item, container=ast.Literal(kind="list", value=tuple() as items)):
            a = value(item)
            listed = [value(i) for i in items]  # type: ignore[arg-type]
            if a is ... or not isinstance(a, str) or ... in listed:
                return None
            return a in listed
    folded = constant_value(expr)
    return folded


def _location_set(on: ast.LocationSet | None, tiers: Mapping[str, str] | None) -> list[str] | None:
    """The locations a set can name, in config order; None when unknown."""
    match on:
        case ast.LocationNames(names=names):
            return list(dict.fromkeys(n.value for n in names))
        case ast.LocationTier(tier=tier) if tiers is not None:
            return [n for n, t in tiers.items() if t == tier.value]
    return None


def _keeps(stmt: _Stmt, tiers: Mapping[str, str] | None) -> list[str] | None:
    """Where a place, replicate or archive may want a replica; None: anywhere (a query)."""
    match stmt.statement:
        case ast.Place(on=on) if on is not None:
            return [on.value]
        case ast.Archive(to=to) if to is not None:
            return [to.value]
        case ast.Replicate(on=on, copies=copies) if copies is not None:
            return _location_set(on, tiers)
    return []


def _location_arguments(call: ast.Call) -> list[str]:
    """Locations a call names: `usage("voyager")`, `copies(location = "tape")`."""
    args: list[ast.Expr] = []
    if call.name in _LOCATION_FUNCTIONS and call.args:
        args.append(call.args[0])
    args += [k.value for k in call.kwargs if k.name in ("loc", "location")]
    return [str(a.value) for a in args if isinstance(a, ast.Literal) and a.kind == "text"]


# ---- no-other-copy


def no_other_copy(ctx: CheckContext) -> list[Diagnostic]:
    """A release or expire whose files no enabled place/replicate/archive keeps a copy
    of elsewhere: the deletes then rest on the safety floor alone (release), or nothing
    at all (expire may remove the last replica). Reported only when every such rule is
    proven to be about other files or other locations."""
    tiers = ctx.names.locations
    keepers = [
        (stmt, _files(stmt.station, stmt.statement.where), _keeps(stmt, tiers))
        for stmt in _statements(ctx, enabled_only=True)
        if isinstance(stmt.statement, ast.Place | ast.Replicate | ast.Archive)
    ]
    out: list[Diagnostic] = []
    for stmt in _statements(ctx, enabled_only=True):
        statement = stmt.statement
        if not isinstance(statement, ast.Release | ast.Expire):
            continue
        files = _files(stmt.station, statement.where)
        if files is not None and not files:
            continue  # never matches: that finding is never-matches'
        if isinstance(statement, ast.Expire):
            if any(_overlap(files, conj) for _, conj, _ in keepers):
                continue
            out.append(
                Diagnostic(
                    "no-other-copy",
                    f"expire in rule {stmt.name!r} deletes files from every location and no "
                    "place, replicate or archive rule keeps them: it may remove their only "
                    "copy",
                    statement.span,
                    hint="make sure these files are meant to go for good; `protect` what must stay",
                )
            )
            continue
        for location in statement.from_:
            if any(
                (where is None or set(where) - {location.value}) and _overlap(files, conj)
                for _, conj, where in keepers
            ):
                continue
            out.append(
                Diagnostic(
                    "no-other-copy",
                    f"release in rule {stmt.name!r} deletes from {location.value!r} files "
                    "that no place, replicate or archive rule keeps a copy of elsewhere; "
                    "only the safety floor keeps their last copy",
                    location.span,
                    "warning",
                    "add a replicate or archive rule for these files on another location, "
                    "or narrow the release",
                )
            )
    return out


# ---- layout-conflict


def _renders(at: ast.Literal) -> bool:
    """Whether a template is valid: a broken one is reported by the templates pass, and
    a conflict between layouts that cannot render would only repeat that."""
    problems = check_template(str(at.value), at.span, TEMPLATE)
    return not any(d.severity == "error" for d in problems)


def layout_conflict(ctx: CheckContext) -> list[Diagnostic]:
    """Two enabled place rules at one location with equal priority and different
    templates, whose files may overlap: config order silently picks the layout, and a
    reordering of files would move new copies elsewhere (spec/rules.md section 2)."""
    groups: dict[tuple[str, float], list[_Stmt]] = {}
    for stmt in _statements(ctx, enabled_only=True):
        statement = stmt.statement
        if isinstance(statement, ast.Place) and statement.on and statement.at is not None:
            groups.setdefault((statement.on.value, stmt.priority), []).append(stmt)
    files: dict[int, list[_Conjunction] | None] = {}
    renders: dict[int, bool] = {}

    def about(stmt: _Stmt) -> list[_Conjunction] | None:
        key = id(stmt.statement)
        if key not in files:
            files[key] = _files(stmt.station, stmt.statement.where)  # type: ignore[union-attr]
        return files[key]

    def valid(place: ast.Place) -> bool:
        if id(place) not in renders:
            renders[id(place)] = place.at is not None and _renders(place.at)
        return renders[id(place)]

    out: list[Diagnostic] = []
    pairs = (
        (first, second)
        for places in groups.values()
        for i, first in enumerate(places)
        for second in places[i + 1 :]
    )
    for first, second in pairs:
        a, b = first.statement, second.statement
        assert isinstance(a, ast.Place) and isinstance(b, ast.Place)
        assert a.on is not None and a.at is not None and b.at is not None
        if a.at.value == b.at.value or not _overlap(about(first), about(second)):
            continue
        if not (valid(a) and valid(b)):
            continue
        out.append(
            Diagnostic(
                "layout-conflict",
                f"place rules {first.name!r} and {second.name!r} may send the same files "
                f"to different layouts on {a.on.value!r} with equal priority "
                f"{first.priority:g}; {first.name!r} wins by config order",
                b.span,
                "warning",
                "give one of them a higher priority, or make their conditions disjoint",
            )
        )
    return out


# ---- too-many-copies


def too_many_copies(ctx: CheckContext) -> list[Diagnostic]:
    """`copies N` needs N distinct locations in the set; fewer can never be satisfied,
    so every plan would report the same shortfall. `locations where` is skipped: its
    set depends on fields check does not type (and may be meant to grow)."""
    tiers = ctx.names.locations
    out: list[Diagnostic] = []
    for stmt in _statements(ctx):
        statement = stmt.statement
        if not isinstance(statement, ast.Replicate) or statement.copies is None:
            continue
        copies = statement.copies.value
        if isinstance(copies, bool) or not isinstance(copies, int | float):
            continue
        locations = _location_set(statement.on, tiers)
        if locations is None or not locations or copies <= len(locations):
            continue
        count = f"{len(locations)} location" + ("" if len(locations) == 1 else "s")
        if isinstance(statement.on, ast.LocationTier):
            where = f'tier "{statement.on.tier.value}", which has {count}'
        else:
            where = count
        out.append(
            Diagnostic(
                "too-many-copies",
                f"replicate in rule {stmt.name!r} asks for {copies:g} copies on {where} "
                f"({', '.join(locations)})",
                statement.copies.span,
                hint="each copy needs a location of its own: lower `copies` or add locations",
            )
        )
    return out


# ---- unused-location, unused-channel, unused-workflow


def unused_names(ctx: CheckContext) -> list[Diagnostic]:
    """Locations, channels and workflows that nothing uses: usually a typo on one side
    or a leftover. Skipped when the site config or a rule file could not be read, since
    the uses might be in what was not read.

    Not in `passes.PASSES` yet: tests/rules/test_check.py asserts the exact diagnostics
    of minimal sites that leave locations and the workflow unused, so adding it is one
    line there plus those expectations, a change for the owner of those tests.
    """
    out: list[Diagnostic] = []
    used_workflows: set[str] = set()
    used_channels: set[str] = set()
    used_locations: set[str] = set()
    used_tiers: set[str] = set()
    queries: list[ast.Expr] = []
    for stmt in _statements(ctx):
        statement = stmt.statement
        match statement:
            case ast.Run(workflow=workflow):
                used_workflows.add(workflow.value)
            case ast.Alarm(notify=notify):
                used_channels.update(n.value for n in notify)
            case ast.Place(on=on) | ast.Verify(on=on) | ast.Grant(at=on) if on is not None:
                used_locations.add(on.value)
            case ast.Replicate(on=ast.LocationNames(names=names)):
                used_locations.update(n.value for n in names)
            case ast.Replicate(on=ast.LocationTier(tier=tier)):
                used_tiers.add(tier.value)
            case ast.Replicate(on=ast.LocationQuery(where=where)):
                queries.append(where)
            case ast.Archive():
                used_locations.update(n.value for n in statement.release_from)
                if statement.to is not None:
                    used_locations.add(statement.to.value)
            case ast.Release():
                used_locations.update(n.value for n in statement.from_)
        notify_before = getattr(statement, "notify", None)
        if isinstance(notify_before, ast.NotifyBefore):
            used_channels.add(notify_before.channel.value)
        for expr, _ in statement_expressions(statement):
            for node in ast.walk(expr):
                if isinstance(node, ast.Call):
                    used_locations.update(_location_arguments(node))
                    for k in node.kwargs:
                        if k.name == "tier" and isinstance(k.value, ast.Literal):
                            used_tiers.add(str(k.value.value))

    # A rule naming an unknown location, channel or workflow is most likely a typo of an
    # unused one: `unknown-*` already says so with a "did you mean", so stay quiet.
    known = ctx.names
    workflows = known.workflows
    if workflows is not None and ctx.files and used_workflows <= set(workflows):
        for name, workflow in workflows.items():
            if name not in used_workflows:
                out.append(
                    Diagnostic(
                        "unused-workflow",
                        f"workflow {name!r} is defined but no rule runs it",
                        workflow.span_of(("name",)),
                        "warning",
                        f"start it with: run workflow {name} for files where E",
                    )
                )

    site = _load_site(ctx)
    if site is None or not site.complete:
        return out
    locations_known = used_locations <= set(site.locations)
    for name, info in site.locations.items() if locations_known else ():
        if name in used_locations or name in site.used_locations:
            continue
        if info.get("tier", "disk") in used_tiers:
            continue
        if any(_location_query(q, name, info) is not False for q in queries):
            continue
        out.append(
            Diagnostic(
                "unused-location",
                f"location {name!r} is defined but no rule, quota or station names it",
                span_at(site.tree, ("locations", name), site.file, at_key=True),
                "warning",
                "remove it, or use it in a rule",
            )
        )
    channels = site.channels if used_channels <= set(site.channels) else []
    for name in channels:
        if name in used_channels or name in site.used_channels:
            continue
        out.append(
            Diagnostic(
                "unused-channel",
                f"notify channel {name!r} is defined but no rule, station contacts or "
                "alarms.default_notify names it",
                span_at(site.tree, ("notify", name), site.file, at_key=True),
                "warning",
                "remove it, or name it in a rule's notify",
            )
        )
    return out


# ---- never-matches


def never_matches(ctx: CheckContext) -> list[Diagnostic]:
    """A condition that no file (or no moment) can satisfy: the rule is dead text,
    usually a typo (`file.size < 0`) or a rule copied from another station's file,
    where `experiment.station == "X"` contradicts the file's `station S` scope."""
    out: list[Diagnostic] = []
    for stmt in _statements(ctx):
        statement = stmt.statement
        conditions: list[tuple[ast.Expr, bool]] = []  # (condition, about files)
        where = getattr(statement, "where", None)
        if where is not None:
            conditions.append((where, True))
        for other in (getattr(statement, "when", None), getattr(statement, "while_", None)):
            if other is not None:
                conditions.append((other, False))
        for condition, about_files in conditions:
            unscoped = _files(None, condition)  # folds constants first: [] if always false
            if unscoped == []:
                reason = "its condition is always false"
            elif about_files and _scoped(stmt.station, unscoped) == []:
                reason = (
                    f"this file's rules apply only to station {stmt.station}, and the "
                    "condition asks for another station"
                )
            else:
                continue
            out.append(
                Diagnostic(
                    "never-matches",
                    f"rule {stmt.name!r} never matches: {reason}: {expression_text(condition)}",
                    condition.span,
                    "warning",
                    "fix the condition, or remove the rule",
                )
            )
    return out
