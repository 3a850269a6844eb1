"""Every example of spec/rules.md section 1 parses to the rule it describes."""

from __future__ import annotations

import pytest

from policyd.diagnostics import Span
from policyd.grammar import ast
from policyd.grammar.dsl import parse_policy
from tests.grammar.helpers import names, sexpr

# spec/rules.md section 1, verbatim.
EXAMPLE = """\
# rules/8idi.policy - policies for beamline 8-ID-I
station 8IDI

rule layout
  place files where file.path like "*.h5" or file.path like "*.imm"
  on voyager
  at "{station}/{experiment.start:%Y-%m}/{experiment.name}/{file.path}"

rule two-copies
  replicate files where experiment.end is null or experiment.end > now - 180 days
  copies 2 on voyager, hpc

rule archive-raw
  archive files where age(experiment.end) > 90 days
  to tape
  then release from daq-8idi
  notify staff-8idi before 7 days
  schedule every 1 day

rule keep-published
  protect files where experiment.meta.doi is not null

rule make-room priority 10
  release files where file.path like "scratch/**" from voyager
  when usage("voyager") > 90% until 80%
  order by file.modified

rule quota
  alarm when usage("voyager", station = "8IDI") > 80% notify ops, staff-8idi severity warning
  alarm when time_to_full("voyager") < 120 days notify ops severity critical

rule access
  grant read, write to experiment.users on experiment directory at voyager
  while experiment.active or experiment.end > now - 30 days
  grant read to group "8idi-staff" on experiment directory at voyager

rule xpcs
  run workflow xpcs-8idi for files where file.path like "*.imm"
  with qmap = experiment.meta.qmap, outputRootDir = "/gdata/analysis/8idi"

rule fixity
  verify files on tape every 365 days sample 2%
"""

DAY = 86400.0


@pytest.fixture(scope="module")
def rules() -> dict[str, ast.Rule]:
    tree, diagnostics = parse_policy(EXAMPLE, "rules/8idi.policy")
    assert diagnostics == []
    assert tree is not None
    assert tree.station is not None and tree.station.value == "8IDI"
    return {rule.name.value: rule for rule in tree.rules}


def test_every_rule_in_order(rules: dict[str, ast.Rule]) -> None:
    assert list(rules) == [
        "layout", "two-copies", "archive-raw", "keep-published", "make-room",
        "quota", "access", "xpcs", "fixity",
    ]  # fmt: skip


def test_layout(rules: dict[str, ast.Rule]) -> None:
    (place,) = rules["layout"].statements
    assert isinstance(place, ast.Place)
    assert sexpr(place.where) == '(or (like file.path "*.h5") (like file.path "*.imm"))'
    assert place.on is not None and place.on.value == "voyager"
    assert place.at is not None
    assert place.at.value == "{station}/{experiment.start:%Y-%m}/{experiment.name}/{file.path}"


def test_two_copies(rules: dict[str, ast.Rule]) -> None:
    (replicate,) = rules["two-copies"].statements
    assert isinstance(replicate, ast.Replicate)
    assert sexpr(replicate.where) == (
        "(or (is-null experiment.end) (> experiment.end (- now duration:15552000.0)))"
    )
    assert replicate.copies is not None and replicate.copies.value == 2
    assert isinstance(replicate.on, ast.LocationNames)
    assert names(replicate.on.names) == ["voyager", "hpc"]


def test_archive_raw(rules: dict[str, ast.Rule]) -> None:
    rule = rules["archive-raw"]
    (archive,) = rule.statements
    assert isinstance(archive, ast.Archive)
    assert sexpr(archive.where) == "(> (age() experiment.end) duration:7776000.0)"
    assert archive.to is not None and archive.to.value == "tape"
    assert names(archive.release_from) == ["daq-8idi"]
    assert archive.notify is not None
    assert archive.notify.channel.value == "staff-8idi"
    assert archive.notify.before.value == 7 * DAY
    assert rule.schedule is not None
    assert (rule.schedule.kind, rule.schedule.value) == ("duration", DAY)


def test_keep_published(rules: dict[str, ast.Rule]) -> None:
    (protect,) = rules["keep-published"].statements
    assert isinstance(protect, ast.Protect)
    assert sexpr(protect.where) == "(is-not-null experiment.meta.doi)"


def test_make_room(rules: dict[str, ast.Rule]) -> None:
    rule = rules["make-room"]
    assert rule.priority is not None and rule.priority.value == 10
    (release,) = rule.statements
    assert isinstance(release, ast.Release)
    assert sexpr(release.where) == '(like file.path "scratch/**")'
    assert names(release.from_) == ["voyager"]
    assert release.when is not None
    assert sexpr(release.when) == '(> (usage() "voyager") percent:0.9)'
    assert release.until is not None and release.until.value == pytest.approx(0.8)
    assert release.order_by is not None
    assert sexpr(release.order_by.expr) == "file.modified"
    assert release.order_by.descending is False


def test_quota(rules: dict[str, ast.Rule]) -> None:
    first, second = rules["quota"].statements
    assert isinstance(first, ast.Alarm) and isinstance(second, ast.Alarm)
    assert sexpr(first.when) == '(> (usage() "voyager" station="8IDI") percent:0.8)'
    assert names(first.notify) == ["ops", "staff-8idi"]
    assert first.severity == "warning"
    assert sexpr(second.when) == '(< (time_to_full() "voyager") duration:10368000.0)'
    assert names(second.notify) == ["ops"]
    assert second.severity == "critical"


def test_access(rules: dict[str, ast.Rule]) -> None:
    first, second = rules["access"].statements
    assert isinstance(first, ast.Grant) and isinstance(second, ast.Grant)
    assert first.perms == ("read", "write")
    assert [p.kind for p in first.principals] == ["experiment-users"]
    assert first.on_directory
    assert first.at is not None and first.at.value == "voyager"
    assert first.while_ is not None
    assert sexpr(first.while_) == (
        "(or experiment.active (> experiment.end (- now duration:2592000.0)))"
    )
    assert second.perms == ("read",)
    (group,) = second.principals
    assert group.kind == "group" and group.name is not None and group.name.value == "8idi-staff"
    assert second.while_ is None


def test_xpcs(rules: dict[str, ast.Rule]) -> None:
    (run,) = rules["xpcs"].statements
    assert isinstance(run, ast.Run)
    assert run.workflow.value == "xpcs-8idi"
    assert run.where is not None and sexpr(run.where) == '(like file.path "*.imm")'
    assert [(k.name, sexpr(k.value)) for k in run.with_] == [
        ("qmap", "experiment.meta.qmap"),
        ("outputRootDir", '"/gdata/analysis/8idi"'),
    ]


def test_fixity(rules: dict[str, ast.Rule]) -> None:
    (verify,) = rules["fixity"].statements
    assert isinstance(verify, ast.Verify)
    assert verify.where is None
    assert verify.on is not None and verify.on.value == "tape"
    assert verify.every is not None and verify.every.value == 365 * DAY
    assert verify.sample is not None and verify.sample.value == pytest.approx(0.02)


def test_spans_point_at_the_source(rules: dict[str, ast.Rule]) -> None:
    rule = rules["two-copies"]
    assert rule.name.span == Span("rules/8idi.policy", 9, 6, 9, 16)
    (replicate,) = rule.statements
    assert isinstance(replicate, ast.Replicate)
    assert replicate.span.line == 10 and replicate.span.col == 3
    assert isinstance(replicate.where, ast.Or)
    # `experiment.end > now - 180 days`, the right operand of the `or`
    assert replicate.where.right.span == Span("rules/8idi.policy", 10, 51, 10, 82)
