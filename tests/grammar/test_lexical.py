"""The lexical corners of spec/rules.md sections 2 and 4, as tables."""

from __future__ import annotations

import pytest

from policyd.diagnostics import Span
from policyd.grammar import ast
from policyd.grammar.dsl import parse_expression, parse_policy
from tests.grammar.helpers import names, sexpr

TIB = 2**40


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # `-` inside an expression is always a subtraction
        ("a-b", "(- a b)"),
        ("a - b", "(- a b)"),
        ("now-1d", "(- now duration:86400.0)"),
        # numbers, negative numbers, decimals
        ("42", "42"),
        ("-3", "-3"),
        ("1.5", "1.5"),
        ("- x", "(neg x)"),
        ("-(2)", "-2"),
        # sizes, with or without a space, decimal and binary, any case
        ("10GB", "size:10000000000"),
        ("10 GB", "size:10000000000"),
        ("10 gb", "size:10000000000"),
        ("1.5 TiB", f"size:{int(1.5 * TIB)}"),
        ("1.5TiB", f"size:{int(1.5 * TIB)}"),
        ("512 B", "size:512"),
        # durations in every spelling family
        ("90 days", "duration:7776000.0"),
        ("90days", "duration:7776000.0"),
        ("1.5 h", "duration:5400.0"),
        ("30 s", "duration:30.0"),
        ("2 sec", "duration:2.0"),
        ("1 second", "duration:1.0"),
        ("15 min", "duration:900.0"),
        ("3 minutes", "duration:180.0"),
        ("2 hours", "duration:7200.0"),
        ("1 d", "duration:86400.0"),
        ("2 w", "duration:1209600.0"),
        ("1 week", "duration:604800.0"),
        ("6 months", "duration:15552000.0"),
        ("1 y", "duration:31536000.0"),
        ("2 years", "duration:63072000.0"),
        # percentages are fractions
        ("80%", "percent:0.8"),
        ("2.5 %", "percent:0.025"),
        # times: a date, a date and time with an offset
        ("2026-01-31", "time:'2026-01-31'"),
        ("2026-01-31T12:00:00Z", "time:'2026-01-31T12:00:00Z'"),
        ("now - 2026-01-01", "(- now time:'2026-01-01')"),
        # text escapes
        (r'"say \"hi\" \\ bye"', r'"say \"hi\" \\ bye"'),
        (r'"a\d+"', r'"a\\d+"'),
        # constants and lists
        ("true", "true"),
        ("false", "false"),
        ("null", "null"),
        ("[]", "[]"),
        ('["h5", "tif"]', '["h5", "tif"]'),
        # attributes, including keys that are not identifiers and reserved words after a dot
        ("file.path", "file.path"),
        ("file.meta.sample", "file.meta.sample"),
        ('file.meta["beam-energy"]', 'file.meta["beam-energy"]'),
        ("location.tier", "location.tier"),
        ("station", "station"),
        ("experiment.name", "experiment.name"),
        ("now", "now"),
        # functions with positional and keyword arguments; `copies` is also a function
        ("copies()", "(copies())"),
        ('copies(tier = "tape")', '(copies() tier="tape")'),
        ('copies(location = "x")', '(copies() location="x")'),
        ('usage("voyager", station = "8IDI")', '(usage() "voyager" station="8IDI")'),
        ('usage("daq-8idi")', '(usage() "daq-8idi")'),
        # precedence, loosest first: or; and; not; comparisons; + -; unary -
        ("a or b and c", "(or a (and b c))"),
        ("a and b or c", "(or (and a b) c)"),
        ("not a or b", "(or (not a) b)"),
        ("not a == b", "(not (== a b))"),
        ("not not a", "(not (not a))"),
        ("a + b - c", "(- (+ a b) c)"),
        ("-a + b", "(+ (neg a) b)"),
        ("a == b + 1", "(== a (+ b 1))"),
        ("(a or b) and c", "(and (or a b) c)"),
        # the other comparisons
        ('file.ext in ["h5", "tif"]', '(in file.ext ["h5", "tif"])'),
        ('"d64944" in experiment.users', '(in "d64944" experiment.users)'),
        ('file.name like "*.h5"', '(like file.name "*.h5")'),
        ('file.name matches "^a.*$"', '(matches file.name "^a.*$")'),
        ("experiment.end is null", "(is-null experiment.end)"),
        ("experiment.end is not null", "(is-not-null experiment.end)"),
        ("not (experiment.end > now)", "(not (> experiment.end now))"),
        ("a != b", "(!= a b)"),
        ("a <= b", "(<= a b)"),
        ("a >= b", "(>= a b)"),
        # comments end at the end of the line
        ("a # the first\n or b", "(or a b)"),
    ],
)
def test_expression(text: str, expected: str) -> None:
    expr, diagnostics = parse_expression(text, "e")
    assert diagnostics == []
    assert expr is not None
    assert sexpr(expr) == expected


def _only_rule(text: str) -> ast.Rule:
    tree, diagnostics = parse_policy(text, "t.policy")
    assert diagnostics == []
    assert tree is not None
    (rule,) = tree.rules
    return rule


@pytest.mark.parametrize(
    ("text", "rule_name", "location"),
    [
        # names in clause positions may hold `-` and start with a digit
        ("rule a-b place files where true on daq-8idi", "a-b", "daq-8idi"),
        ("rule 2bm-raw place files where true on 2BM", "2bm-raw", "2BM"),
        ("rule x_1 place files where true on 8idi_daq", "x_1", "8idi_daq"),
        # a reserved word is a name when quoted
        ('rule "place" place files where true on "tier"', "place", "tier"),
        ('rule "two words" place files where true on "on"', "two words", "on"),
    ],
)
def test_names_in_clauses(text: str, rule_name: str, location: str) -> None:
    rule = _only_rule(text)
    assert rule.name.value == rule_name
    (place,) = rule.statements
    assert isinstance(place, ast.Place)
    assert place.on is not None and place.on.value == location


def test_a_name_with_a_dash_ends_a_where_only_at_a_keyword() -> None:
    rule = _only_rule("rule r release files where a-b > 0 from daq-8idi, hpc-2")
    (release,) = rule.statements
    assert isinstance(release, ast.Release)
    assert sexpr(release.where) == "(> (- a b) 0)"
    assert names(release.from_) == ["daq-8idi", "hpc-2"]


@pytest.mark.parametrize(
    ("text", "code", "message"),
    [
        (
            "rule tier protect files where true",
            "reserved-word",
            "'tier' is a reserved word and cannot be a name",
        ),
        (
            "rule r place files where true on tier",
            "reserved-word",
            "'tier' is a reserved word and cannot be a name",
        ),
        (
            "rule r protect files where files > 1",
            "reserved-word",
            "'files' is a reserved word and cannot be an attribute",
        ),
        (
            "rule r place files where true onvoyager",
            "unexpected-token",
            "unexpected 'onvoyager'; expected one of: an operator, at, disabled, on, rule, schedule, end of file",
        ),
        (
            "Rule r protect files where true",
            "unexpected-token",
            "unexpected 'Rule'; expected one of: rule, station, end of file; did you mean 'rule'?",
        ),
        ("rule r protect files where x > 10 GiGs", "unknown-unit", "unknown unit 'GiGs'"),
    ],
)
def test_lexical_mistakes(text: str, code: str, message: str) -> None:
    tree, diagnostics = parse_policy(text, "t.policy")
    assert tree is None
    assert [(d.code, d.message) for d in diagnostics] == [(code, message)]


def test_a_unit_is_a_whole_word() -> None:
    """`5 sample` is the number 5 and the keyword `sample`, not 5 seconds and `ample`."""
    rule = _only_rule("rule r verify files where x > 5 sample 2% on tape every 1 d")
    (verify,) = rule.statements
    assert isinstance(verify, ast.Verify)
    assert verify.where is not None and sexpr(verify.where) == "(> x 5)"
    assert verify.sample is not None and verify.sample.value == pytest.approx(0.02)


def test_clauses_in_any_order_give_the_same_rule() -> None:
    ordered = _only_rule(
        'rule r release files where x from daq when usage("daq") > 90% until 80% '
        "order by file.size desc notify ops before 1 w"
    )
    shuffled = _only_rule(
        "rule r release files where x notify ops before 1 w order by file.size desc "
        'until 80% when usage("daq") > 90% from daq'
    )
    for rule in (ordered, shuffled):
        (release,) = rule.statements
        assert isinstance(release, ast.Release)
        assert names(release.from_) == ["daq"]
        assert release.when is not None and sexpr(release.when) == '(> (usage() "daq") percent:0.9)'
        assert release.until is not None and release.until.value == pytest.approx(0.8)
        assert release.order_by is not None and release.order_by.descending
        assert release.notify is not None and release.notify.channel.value == "ops"


def test_rule_options_before_and_after_the_verb() -> None:
    rule = _only_rule('rule r priority -2 disabled protect files where true schedule "0 3 * * *"')
    assert rule.priority is not None and rule.priority.value == -2
    assert rule.disabled
    assert rule.schedule is not None and (rule.schedule.kind, rule.schedule.value) == (
        "text",
        "0 3 * * *",
    )


@pytest.mark.parametrize(
    ("text", "station"),
    [
        ("rule r protect files where true", None),
        ("station 8IDI\nrule r protect files where true", "8IDI"),
        ("# comment first\nstation 2-BM-A # trailing\nrule r protect files where true", "2-BM-A"),
        ('station "rule"\nrule r protect files where true', "rule"),
        ("station 8IDI", "8IDI"),
    ],
)
def test_station_line(text: str, station: str | None) -> None:
    tree, diagnostics = parse_policy(text, "t.policy")
    assert diagnostics == []
    assert tree is not None
    assert (tree.station.value if tree.station else None) == station


def test_location_sets() -> None:
    rule = _only_rule(
        'rule r replicate files where true copies 2 on locations where location.tier == "disk"'
    )
    (replicate,) = rule.statements
    assert isinstance(replicate, ast.Replicate)
    assert isinstance(replicate.on, ast.LocationQuery)
    assert sexpr(replicate.on.where) == '(== location.tier "disk")'
    rule = _only_rule('rule r replicate files where true on tier "disk" copies 3')
    (replicate,) = rule.statements
    assert isinstance(replicate, ast.Replicate)
    assert isinstance(replicate.on, ast.LocationTier)
    assert replicate.on.tier.value == "disk"


def test_principals() -> None:
    rule = _only_rule(
        'rule r grant read to user "d64944", group "8idi-staff", experiment.users '
        "at voyager on experiment directory"
    )
    (grant,) = rule.statements
    assert isinstance(grant, ast.Grant)
    assert [(p.kind, p.name.value if p.name else None) for p in grant.principals] == [
        ("user", "d64944"),
        ("group", "8idi-staff"),
        ("experiment-users", None),
    ]


def test_line_ends_and_byte_order_mark() -> None:
    tree, diagnostics = parse_policy(
        "\ufeffstation 8IDI\r\nrule r\r\n\tprotect files where x\r\n", "t.policy"
    )
    assert diagnostics == []
    assert tree is not None
    assert tree.station is not None and tree.station.span == Span("t.policy", 1, 9, 1, 13)
    (rule,) = tree.rules
    assert rule.statements[0].span.line == 3


def test_an_empty_file_has_no_rules() -> None:
    tree, diagnostics = parse_policy("# nothing yet\n", "t.policy")
    assert diagnostics == []
    assert tree is not None and tree.rules == () and tree.station is None


def test_expression_offsets_place_errors_in_the_yaml_file() -> None:
    # A YAML value starting at line 12, column 15.
    expr, diagnostics = parse_expression("file.size >", "r.yaml", line_offset=11, col_offset=14)
    assert expr is None
    (diagnostic,) = diagnostics
    assert diagnostic.span == Span("r.yaml", 12, 26, 12, 26)
    # on the value's second line the column is the line's own
    expr, diagnostics = parse_expression("a or\n  b ==", "r.yaml", line_offset=11, col_offset=14)
    (diagnostic,) = diagnostics
    assert (diagnostic.span.line, diagnostic.span.col) == (13, 7)
    expr, diagnostics = parse_expression("a or b", "r.yaml", line_offset=11, col_offset=14)
    assert expr is not None and expr.span == Span("r.yaml", 12, 15, 12, 21)
