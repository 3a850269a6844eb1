"""`policyd convert` is lossless: printing a rule AST in either form and parsing it back
gives the same AST (spans aside), for the spec's examples and for generated rules.

The generated ASTs are *canonical*: the shape the two front ends produce. A name's
`quoted` is True exactly where the DSL needs quotes (and always for `tier`, `user` and
`group` names, which YAML reads as quoted, as the spec writes them); `-3` is a number
literal, never a Unary over 3; grants apply `on experiment directory` (YAML has no
other form). See printers.lossy_points for what the YAML form cannot say.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyd.diagnostics import Span
from policyd.grammar import ast
from policyd.grammar.convert import convert_command, convert_file
from policyd.grammar.dsl import RESERVED_WORDS, parse_policy
from policyd.grammar.printers import lossy_points, needs_quotes, to_dsl, to_yaml
from policyd.grammar.yaml_rules import parse_yaml_rules
from policyd.units import BINARY_SIZE_UNITS, DECIMAL_SIZE_UNITS, DURATION_UNITS, MAX_SIZE
from tests.grammar.test_examples import EXAMPLE
from tests.grammar.test_yaml_rules import SECTION_6, shape


def same(a: ast.File, b: ast.File) -> bool:
    """Equal ignoring spans, and strict about value types (3 is not 3.0)."""
    return repr(shape(a)) == repr(shape(b))


def from_dsl(text: str) -> ast.File:
    tree, diagnostics = parse_policy(text, "rules.policy")
    assert [d.render() for d in diagnostics] == [], text
    assert tree is not None
    return tree


def from_yaml(text: str) -> ast.File:
    tree, diagnostics = parse_yaml_rules(text, "rules.yaml")
    assert [d.render() for d in diagnostics] == [], text
    assert tree is not None
    return tree


# ---- the spec's examples


def test_section_1_to_yaml_and_back() -> None:
    tree = from_dsl(EXAMPLE)
    assert same(from_yaml(to_yaml(tree)), tree)
    assert same(from_dsl(to_dsl(tree)), tree)


def test_section_6_to_dsl_and_back() -> None:
    tree = from_yaml(SECTION_6)
    assert same(from_dsl(to_dsl(tree)), tree)
    assert same(from_yaml(to_yaml(tree)), tree)


# ---- golden canonical output

GOLDEN_DSL_IN = """\
station 2BM   # a comment is not kept
rule "on" priority -5 schedule "0 3 * * *"
  release files where file.path like "scratch/**" and file.size >= 1536GiB from daq-2bm, "tier"
  when usage("daq-2bm", station = "2BM") > 90% until 80% order by file.modified desc
  notify "ops team" before 168 hours
rule quota alarm when free("voyager") < 10 TB notify ops for 90min
  alarm when time_to_full("voyager") < 2 days clear when not (free("voyager") < 20 TB) notify ops severity critical
"""

GOLDEN_YAML_OUT = """\
version: 1
station: 2BM
rules:
  - name: on
    priority: -5
    schedule: '0 3 * * *'
    release:
      where: 'file.path like "scratch/**" and file.size >= 1.5 TiB'
      from: [daq-2bm, tier]
      when: 'usage("daq-2bm", station = "2BM") > 90%'
      until: 80%
      order_by: {expr: file.modified, desc: true}
      notify_before: {channel: ops team, before: 7 days}
  - name: quota
    alarm:
      - when: 'free("voyager") < 10 TB'
        notify: [ops]
        for: 90 min
      - when: 'time_to_full("voyager") < 2 days'
        clear_when: 'not free("voyager") < 20 TB'
        notify: [ops]
        severity: critical
"""

GOLDEN_YAML_IN = """\
version: 1
rules:
  - name: xpcs
    disabled: true
    run: {workflow: xpcs-8idi, where: 'file.ext in ["imm", "h5"]',
          with: {qmap: 'experiment.meta["q-map"]', root: '"/gdata/a \\\\ \\"b\\""', n: -3}}
  - name: copies
    replicate: {where: copies(tier = "tape") < 1, copies: 2, on: {tier: disk}}
  - name: access
    grant:
      - {perms: [read], principals: [experiment.users, user:d64944, group:8idi-staff], at: voyager}
"""

GOLDEN_DSL_OUT = """\
rule xpcs
  run workflow xpcs-8idi
  for files where file.ext in ["imm", "h5"]
  with qmap = experiment.meta["q-map"], root = "/gdata/a \\\\ \\"b\\"", n = -3
  disabled

rule "copies"
  replicate files where copies(tier = "tape") < 1
  copies 2
  on tier "disk"

rule access
  grant read
  to experiment.users, user "d64944", group "8idi-staff"
  on experiment directory
  at voyager
"""


def test_golden_dsl_to_yaml() -> None:
    tree = from_dsl(GOLDEN_DSL_IN)
    assert to_yaml(tree) == GOLDEN_YAML_OUT
    assert same(from_yaml(GOLDEN_YAML_OUT), tree)


def test_golden_yaml_to_dsl() -> None:
    tree = from_yaml(GOLDEN_YAML_IN)
    assert to_dsl(tree) == GOLDEN_DSL_OUT
    assert same(from_dsl(GOLDEN_DSL_OUT), tree)


def test_canonical_output_is_a_fixed_point() -> None:
    """Printing what was printed changes nothing: a formatter's promise."""
    for text in (GOLDEN_DSL_OUT, to_dsl(from_dsl(EXAMPLE))):
        assert to_dsl(from_dsl(text)) == text
    for text in (GOLDEN_YAML_OUT, to_yaml(from_yaml(SECTION_6))):
        assert to_yaml(from_yaml(text)) == text


def test_long_lists_are_block_lists() -> None:
    locations = ", ".join(f"daq-station-{n}" for n in range(8))
    tree = from_dsl(f"rule a\n  release files where true from {locations}\n")
    text = to_yaml(tree)
    assert "      from:\n        - daq-station-0\n" in text
    assert same(from_yaml(text), tree)


def test_empty_file() -> None:
    empty = from_dsl("# nothing yet\n")
    assert to_dsl(empty) == ""
    assert to_yaml(empty) == "version: 1\nrules: []\n"
    assert same(from_yaml(to_yaml(empty)), empty)


# ---- what YAML cannot say is reported, not hidden


def test_grant_without_directory_is_a_warning() -> None:
    tree = from_dsl("rule a\n  grant read to user x at voyager\n")
    (warning,) = lossy_points(tree, "yaml")
    assert warning.severity == "warning" and warning.code == "convert-lossy"
    assert warning.span is not None and (warning.span.line, warning.span.col) == (2, 3)
    assert lossy_points(tree, "dsl") == []


def test_cron_text_that_reads_as_a_duration_is_a_warning() -> None:
    tree = from_dsl('rule a schedule "5 days"\n  protect files where true\n')
    assert [d.code for d in lossy_points(tree, "yaml")] == ["convert-lossy"]


def test_a_line_break_in_a_template_cannot_become_dsl(tmp_path: Path) -> None:
    source = tmp_path / "a.yaml"
    source.write_text(
        'version: 1\nrules:\n  - name: a\n    place: {where: "true", at: "x\\ny"}\n',
        encoding="utf-8",
    )
    text, diagnostics = convert_file(source, "dsl")
    assert text is None
    assert [(d.code, d.severity) for d in diagnostics] == [("convert-impossible", "error")]
    assert convert_file(source, "yaml")[0] is not None


# ---- the command


def test_convert_file_by_extension(tmp_path: Path) -> None:
    policy = tmp_path / "8idi.policy"
    policy.write_text(EXAMPLE, encoding="utf-8")
    text, diagnostics = convert_file(policy, "yaml")
    assert diagnostics == [] and text is not None
    yml = tmp_path / "8idi.yml"
    yml.write_text(text, encoding="utf-8")
    back, diagnostics = convert_file(yml, "dsl")
    assert diagnostics == [] and back is not None
    assert same(from_dsl(back), from_dsl(EXAMPLE))


def test_convert_file_reports_parse_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.policy"
    bad.write_text("rule a\n  protect files where file.size >> 1\n", encoding="utf-8")
    text, diagnostics = convert_file(bad, "yaml")
    assert text is None and diagnostics and diagnostics[0].span is not None
    assert diagnostics[0].span.file == str(bad) and diagnostics[0].span.line == 2
    for path, to, code in [
        (tmp_path / "rules.txt", "yaml", "convert-input"),
        (bad, "json", "convert-form"),
        (tmp_path / "missing.yaml", "dsl", "unreadable"),
    ]:
        text, diagnostics = convert_file(path, to)
        assert text is None and [d.code for d in diagnostics] == [code]


def test_convert_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "a.yaml"
    source.write_text(GOLDEN_YAML_IN, encoding="utf-8")
    assert convert_command(source, "dsl", None) == 0
    assert capsys.readouterr().out == GOLDEN_DSL_OUT
    out = tmp_path / "a.policy"
    assert convert_command(source, "dsl", out) == 0
    assert out.read_text(encoding="utf-8") == GOLDEN_DSL_OUT
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - name: a\n    protect: {wher: x}\n", encoding="utf-8")
    assert convert_command(bad, "dsl", tmp_path / "never.policy") == 1
    captured = capsys.readouterr()
    assert captured.out == "" and f"{bad}:4:15: error: unknown key 'wher'" in captured.err
    assert not (tmp_path / "never.policy").exists()


# ---- the property: any canonical AST survives both forms

SPAN = Span("generated")
_IDENT_START = string.ascii_letters + "_"
_IDENT_REST = _IDENT_START + string.digits
_TEXT_CHARS = st.characters(blacklist_categories=("Cc", "Cs", "Cf", "Co", "Cn", "Zl", "Zp"))

idents = st.builds(
    lambda head, rest: head + rest,
    st.sampled_from(_IDENT_START),
    st.text(_IDENT_REST, max_size=6),
).map(lambda s: s + "_" if s in RESERVED_WORDS else s)
texts = st.text(st.one_of(st.sampled_from("\"\\ */#:,[]{}%'-"), _TEXT_CHARS), max_size=10)
# Names that need quotes (reserved words, spaces, quotes, leading `-`) and names that do not.
name_values = st.one_of(
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,8}", fullmatch=True),
    st.sampled_from(sorted(RESERVED_WORDS)),
    st.text(_TEXT_CHARS, min_size=1, max_size=8),
    st.sampled_from(['a "b"', "c\\d", " lead", "-x", "a b", "yes", "on", "null", "1.5", "#x"]),
)


def names(quoted: bool | None = None) -> st.SearchStrategy[ast.Name]:
    """A name as both front ends build it: `quoted` where the DSL needs quotes."""
    return name_values.map(
        lambda v: ast.Name(v, needs_quotes(v) if quoted is None else quoted, SPAN)
    )


def lit(kind: ast.LiteralKind, value: object) -> ast.Literal:
    return ast.Literal(kind, value, SPAN)


_SIZE_FACTORS = sorted({*DECIMAL_SIZE_UNITS.values(), *BINARY_SIZE_UNITS.values()})
_DURATION_FACTORS = sorted(set(DURATION_UNITS.values()))

sizes = st.one_of(
    st.integers(0, MAX_SIZE),
    st.builds(
        lambda n, f: min(n * f, MAX_SIZE), st.integers(0, 4096), st.sampled_from(_SIZE_FACTORS)
    ),
    st.builds(lambda n, f: n * f // 2, st.integers(0, 999), st.sampled_from(_SIZE_FACTORS)),
).map(lambda v: lit("size", v))
durations = st.one_of(
    st.floats(0, 1e12, allow_nan=False, allow_infinity=False),
    st.builds(lambda n, f: float(n * f), st.integers(0, 1000), st.sampled_from(_DURATION_FACTORS)),
    st.builds(lambda n, f: n * f / 10, st.integers(0, 1000), st.sampled_from(_DURATION_FACTORS)),
).map(lambda v: lit("duration", v))
percents = st.one_of(
    st.floats(0, 10, allow_nan=False, allow_infinity=False),
    st.integers(0, 10000).map(lambda n: n / 100),
).map(lambda v: lit("percent", v))
# Floats whose repr is positional: expression_text prints numbers with repr (see below).
floats = st.builds(lambda m, d: m / 10**d, st.integers(-(10**15), 10**15), st.integers(0, 4))
numbers = st.one_of(st.integers(-(10**20), 10**20), floats).map(lambda v: lit("number", v))
times = st.builds(
    lambda date, clock, zone: lit("time", date + clock + (zone if clock else "")),
    st.dates().map(lambda d: d.isoformat()),
    st.sampled_from(["", "T12:00", "T23:59:59", "T00:00:00.5", "T08:30:15.123456"]),
    st.sampled_from(["", "Z", "+05:30", "-08:00"]),
)
scalars = st.one_of(
    texts.map(lambda v: lit("text", v)),
    numbers,
    sizes,
    durations,
    percents,
    times,
    st.booleans().map(lambda v: lit("bool", v)),
    st.just(lit("null", None)),
)
attributes = st.builds(
    lambda head, tail: ast.Attribute((head, *tail), SPAN),
    st.one_of(idents, st.sampled_from(["station", "experiment", "now", "file"])),
    st.lists(st.one_of(idents, st.sampled_from(["users", "meta", "where", "in"])), max_size=3),
)
indexes = st.builds(lambda target, key: ast.Index(target, key, SPAN), attributes, texts)
leaves = st.one_of(scalars, attributes, indexes)


def negate(operand: ast.Expr) -> ast.Expr:
    """`-E` as the parser builds it: the minus of a number is folded into the literal."""
    if isinstance(operand, ast.Literal) and operand.kind == "number":
        return lit("number", -operand.value)  # type: ignore[operator]
    return ast.Unary("-", operand, SPAN)


def compound(children: st.SearchStrategy[ast.Expr]) -> st.SearchStrategy[ast.Expr]:
    """One level of every operator, function call and list over `children`."""
    kwargs = st.lists(
        st.builds(
            lambda n, v: ast.KeywordArgument(n, v, SPAN),
            st.one_of(idents, st.sampled_from(["station", "tier"])),
            children,
        ),
        max_size=2,
        unique_by=lambda k: k.name,
    )
    return st.one_of(
        st.lists(children, max_size=3).map(lambda items: lit("list", tuple(items))),
        st.builds(
            lambda n, a, k: ast.Call(n, tuple(a), tuple(k), SPAN),
            st.one_of(idents, st.just("copies")),
            st.lists(children, max_size=2),
            kwargs,
        ),
        st.builds(negate, children),
        st.builds(
            lambda op, a, b: ast.Binary(op, a, b, SPAN),
            st.sampled_from(["+", "-"]),
            children,
            children,
        ),
        st.builds(
            lambda op, a, b: ast.Compare(op, a, b, SPAN),
            st.sampled_from(["==", "!=", "<", "<=", ">", ">="]),
            children,
            children,
        ),
        st.builds(lambda e, p: ast.Like(e, p, SPAN), children, texts),
        st.builds(lambda e, p: ast.Matches(e, p, SPAN), children, texts),
        st.builds(lambda a, b: ast.In(a, b, SPAN), children, children),
        st.builds(lambda e, n: ast.IsNull(e, n, SPAN), children, st.booleans()),
        st.builds(lambda a, b: ast.And(a, b, SPAN), children, children),
        st.builds(lambda a, b: ast.Or(a, b, SPAN), children, children),
        st.builds(lambda e: ast.Not(e, SPAN), children),
    )


exprs: st.SearchStrategy[ast.Expr] = st.recursive(leaves, compound, max_leaves=8)


def opt(strategy: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.none() | strategy


def name_tuple(min_size: int = 0) -> st.SearchStrategy[tuple[ast.Name, ...]]:
    return st.lists(names(), min_size=min_size, max_size=3).map(tuple)


notify_befores = st.builds(lambda c, d: ast.NotifyBefore(c, d, SPAN), names(), durations)
location_sets = st.one_of(
    name_tuple(1).map(lambda ns: ast.LocationNames(ns, SPAN)),
    names(quoted=True).map(lambda n: ast.LocationTier(n, SPAN)),
    exprs.map(lambda e: ast.LocationQuery(e, SPAN)),
)
principals = st.one_of(
    st.just(ast.Principal("experiment-users", None, SPAN)),
    st.builds(
        lambda kind, n: ast.Principal(kind, n, SPAN),
        st.sampled_from(["user", "group"]),
        names(quoted=True),
    ),
)
with_args = st.lists(
    st.builds(lambda n, v: ast.KeywordArgument(n, v, SPAN), idents, exprs),
    max_size=3,
    unique_by=lambda k: k.name,
).map(tuple)

single_statements = st.one_of(
    st.builds(
        lambda w, on, at: ast.Place(w, on, at, SPAN),
        exprs,
        opt(names()),
        opt(texts.map(lambda t: lit("text", t))),
    ),
    st.builds(
        lambda w, c, on: ast.Replicate(w, c, on, SPAN),
        exprs,
        opt(st.integers(0, 9).map(lambda n: lit("number", n))),
        opt(location_sets),
    ),
    st.builds(
        lambda w, to, rf, nb: ast.Archive(w, to, rf, nb, SPAN),
        exprs,
        opt(names()),
        name_tuple(),
        opt(notify_befores),
    ),
    st.builds(
        lambda w, f, when, until, order, nb: ast.Release(w, f, when, until, order, nb, SPAN),
        exprs,
        name_tuple(),
        opt(exprs),
        opt(percents),
        opt(st.builds(lambda e, d: ast.OrderBy(e, d, SPAN), exprs, st.booleans())),
        opt(notify_befores),
    ),
    st.builds(lambda w, nb: ast.Expire(w, nb, SPAN), exprs, opt(notify_befores)),
    st.builds(lambda w: ast.Protect(w, SPAN), exprs),
    st.builds(lambda wf, w, args: ast.Run(wf, w, args, SPAN), names(), opt(exprs), with_args),
    st.builds(
        lambda w, on, every, sample: ast.Verify(w, on, every, sample, SPAN),
        opt(exprs),
        opt(names()),
        opt(durations),
        opt(percents),
    ),
)
alarms = st.builds(
    lambda w, cw, n, sev, f: ast.Alarm(w, cw, n, sev, f, SPAN),
    exprs,
    opt(exprs),
    name_tuple(),
    opt(st.sampled_from(["info", "warning", "critical"])),
    opt(durations),
)
grants = st.builds(
    lambda perms, ps, at, w: ast.Grant(tuple(perms), tuple(ps), True, at, w, SPAN),
    st.lists(st.sampled_from(["read", "write"]), min_size=1, max_size=2),
    st.lists(principals, max_size=3),
    opt(names()),
    opt(exprs),
)
statement_groups = st.one_of(
    single_statements.map(lambda s: (s,)),
    st.lists(alarms, min_size=1, max_size=3).map(tuple),
    st.lists(grants, min_size=1, max_size=3).map(tuple),
)
schedules = st.one_of(
    durations,
    st.sampled_from(["0 3 * * *", "*/15 * * * *", "@daily", "it's 5"]).map(
        lambda t: lit("text", t)
    ),
)
rules = st.builds(
    lambda n, p, ss, sch, dis: ast.Rule(n, p, ss, sch, dis, SPAN),
    names(),
    opt(st.integers(-100, 100).map(lambda n: lit("number", n))),
    statement_groups,
    opt(schedules),
    st.booleans(),
)
files = st.builds(
    lambda station, rs: ast.File(station, tuple(rs), SPAN),
    opt(names()),
    st.lists(rules, max_size=3),
)


# Hypothesis sometimes prints the recursive strategy (megabytes of nested lambdas) and
# warns about the size of that text; it says nothing about the test.
@pytest.mark.filterwarnings("ignore:Generating overly large repr")
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(files)
def test_every_generated_file_survives_both_forms(tree: ast.File) -> None:
    assert lossy_points(tree, "yaml") == []
    dsl_text = to_dsl(tree)
    assert same(from_dsl(dsl_text), tree), dsl_text
    yaml_text = to_yaml(tree)
    assert same(from_yaml(yaml_text), tree), yaml_text


def test_floats_that_repr_would_write_in_exponent_form() -> None:
    tree = from_dsl("rule a\n  protect files where x > 0.00001 and y < 10000000000000000.0\n")
    assert same(from_dsl(to_dsl(tree)), tree)


def test_generated_names_cover_quoting() -> None:
    """The strategy's fixed names include each reason to quote, so the property sees them."""
    assert needs_quotes("on") and needs_quotes("a b") and needs_quotes("-x")
    assert not needs_quotes("daq-8idi") and not needs_quotes("2BM")
