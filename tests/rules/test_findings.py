"""The static-analysis findings of `policyd check` (issue 3, point 5), on minimal repos.

Each finding fires with its exact message at its exact place, and stays quiet on the
near miss that a careless implementation would flag (disjoint conditions, copies equal
to the location count, names that are used). examples/aps has no finding at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from policyd.diagnostics import Diagnostic
from policyd.rules import check
from policyd.rules.check import check_site
from policyd.rules.findings import unused_names
from policyd.rules.passes import PASSES, CheckContext, Pass, run_passes
from tests.rules.test_check import CONFIG, site_with_rules, write

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "aps"
FINDINGS = {"no-other-copy", "layout-conflict", "too-many-copies", "never-matches"}
UNUSED = {"unused-location", "unused-channel", "unused-workflow"}


@pytest.fixture
def with_unused_names(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """check_site with the unused-names pass too (it is not in PASSES yet, see its
    docstring), so that its findings are tested the way `policyd check` would run it."""

    def passes(ctx: CheckContext) -> list[Diagnostic]:
        return run_passes(ctx, (*PASSES, Pass("unused-names", unused_names, "")))

    monkeypatch.setattr(check, "run_passes", passes)
    yield


def findings(
    root: Path, rules: dict[str, str] | None = None, kinds: set[str] = FINDINGS
) -> list[tuple[str, str, str]]:
    """(place relative to root, severity, code: message) of every finding of `kinds`
    (the minimal repos leave locations unused; those findings are tested apart)."""
    if rules is not None:
        site_with_rules(root, rules)
    out = []
    for d in check_site([root]).diagnostics:
        if d.code not in kinds:
            continue
        assert d.span is not None
        place = f"{Path(d.span.file).relative_to(root)}:{d.span.line}:{d.span.col}"
        out.append((place, d.severity, f"{d.code}: {d.message}"))
    return out


# ---- no-other-copy


def test_an_expire_nothing_keeps_is_an_error(tmp_path: Path) -> None:
    rules = {"r.policy": 'rule purge\n  expire files where file.path like "tmp/**"\n'}
    assert findings(tmp_path, rules) == [
        (
            "rules/r.policy:2:3",
            "error",
            "no-other-copy: expire in rule 'purge' deletes files from every location and no "
            "place, replicate or archive rule keeps them: it may remove their only copy",
        )
    ]


def test_a_keeper_of_other_files_does_not_count(tmp_path: Path) -> None:
    rules = {
        "r.policy": """\
        rule purge
          expire files where file.path like "*.tmp"
        rule keep
          replicate files where file.ext in ["h5", "tif"] copies 1 on voyager
        """
    }
    assert [code for _, _, code in findings(tmp_path, rules)] == [
        "no-other-copy: expire in rule 'purge' deletes files from every location and no "
        "place, replicate or archive rule keeps them: it may remove their only copy"
    ]


@pytest.mark.parametrize(
    "keeper",
    [
        "replicate files where file.size > 1 GB copies 1 on voyager",
        'place files where true on voyager at "{file.path}"',
        "archive files where age(file.created) > 1 day to tape",
        'replicate files where true copies 1 on locations where location.tier == "disk"',
    ],
)
def test_an_expire_with_an_overlapping_keeper_is_quiet(tmp_path: Path, keeper: str) -> None:
    rules = {
        "r.policy": f'rule purge\n  expire files where file.path like "*.tmp"\nrule k\n  {keeper}\n'
    }
    assert findings(tmp_path, rules) == []


def test_a_release_kept_only_where_it_deletes_is_a_warning(tmp_path: Path) -> None:
    rules = {
        "r.policy": """\
        station 8IDI
        rule tidy
          release files where true from daq-8idi, voyager
        rule keep
          place files where file.ext == "h5" on voyager at "{file.path}"
        """
    }
    # daq-8idi's files are kept on voyager; voyager's are kept nowhere else.
    assert findings(tmp_path, rules) == [
        (
            "rules/r.policy:3:43",
            "warning",
            "no-other-copy: release in rule '8IDI/tidy' deletes from 'voyager' files that no "
            "place, replicate or archive rule keeps a copy of elsewhere; only the safety "
            "floor keeps their last copy",
        )
    ]


def test_station_scope_decides_which_keepers_count(tmp_path: Path) -> None:
    release = "station 8IDI\nrule tidy\n  release files where true from daq-8idi\n"
    other_station = 'station 1ID\nrule keep\n  place files where true on voyager at "{file.path}"\n'
    rules = {"a.policy": release, "b.policy": other_station}
    assert [place for place, _, _ in findings(tmp_path / "a", rules)] == ["rules/a.policy:3:33"]
    site_wide = 'rule keep\n  place files where true on voyager at "{file.path}"\n'
    assert findings(tmp_path / "b", {"a.policy": release, "b.policy": site_wide}) == []


def test_a_disabled_release_or_keeper_does_nothing(tmp_path: Path) -> None:
    disabled_release = "rule tidy\n  release files where true from voyager\n  disabled\n"
    assert findings(tmp_path / "a", {"r.policy": disabled_release}) == []
    rules = {
        "r.policy": "rule tidy\n  release files where true from daq-8idi\n"
        'rule keep\n  place files where true on voyager at "{file.path}"\n  disabled\n'
    }
    assert [code.split(":")[0] for _, _, code in findings(tmp_path / "b", rules)] == [
        "no-other-copy"
    ]


# ---- layout-conflict


def test_equal_priority_layouts_on_one_location_conflict(tmp_path: Path) -> None:
    rules = {
        "a.policy": 'rule a\n  place files where file.path like "*.h5" on voyager at "a/{file.path}"\n',
        "b.policy": 'rule b\n  place files where file.ext in ["h5", "tif"] on voyager at "b/{file.path}"\n',
    }
    assert findings(tmp_path, rules) == [
        (
            "rules/b.policy:2:3",
            "warning",
            "layout-conflict: place rules 'a' and 'b' may send the same files to different "
            "layouts on 'voyager' with equal priority 0; 'a' wins by config order",
        )
    ]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ('file.path like "*.h5"', 'file.path like "*.imm"'),
        ('file.ext in ["h5", "tif"]', 'file.ext in ["imm", "bin"]'),
        ('file.ext in ["h5", "tif"]', 'file.name like "*.imm"'),
        ('file.path like "raw/**"', 'file.path like "proc/**"'),
        ('file.path like "raw/**"', 'not (file.path like "raw/**")'),
        ('experiment.meta.detector == "FCCD"', 'experiment.meta.detector == "Lambda"'),
    ],
)
def test_disjoint_place_rules_do_not_conflict(tmp_path: Path, first: str, second: str) -> None:
    rules = {
        "r.policy": f'rule a\n  place files where {first} on voyager at "a/{{file.path}}"\n'
        f'rule b\n  place files where {second} on voyager at "b/{{file.path}}"\n'
    }
    assert findings(tmp_path, rules) == []


@pytest.mark.parametrize(
    "second",
    [
        'rule b priority 1\n  place files where true on voyager at "b/{file.path}"\n',
        'rule b\n  place files where true on hpc at "b/{file.path}"\n',
        'rule b\n  place files where true on voyager at "a/{file.path}"\n',
        'station 1ID\nrule b\n  place files where true on voyager at "b/{file.path}"\n',
    ],
)
def test_priority_location_template_or_station_keep_layouts_apart(
    tmp_path: Path, second: str
) -> None:
    first = 'station 8IDI\nrule a\n  place files where true on voyager at "a/{file.path}"\n'
    assert findings(tmp_path, {"a.policy": first, "b.policy": second}) == []


# ---- too-many-copies


def test_more_copies_than_locations_is_an_error(tmp_path: Path) -> None:
    rules = {
        "r.policy": "rule r\n  replicate files where true copies 3 on voyager, hpc\n"
        'rule t\n  replicate files where true copies 2 on tier "tape"\n'
    }
    assert findings(tmp_path, rules) == [
        (
            "rules/r.policy:2:30",
            "error",
            "too-many-copies: replicate in rule 'r' asks for 3 copies on 2 locations "
            "(voyager, hpc)",
        ),
        (
            "rules/r.policy:4:30",
            "error",
            "too-many-copies: replicate in rule 't' asks for 2 copies on tier \"tape\", which "
            "has 1 location (tape)",
        ),
    ]


@pytest.mark.parametrize(
    "replicate",
    [
        "replicate files where true copies 2 on voyager, hpc",
        'replicate files where true copies 1 on tier "tape"',
        'replicate files where true copies 9 on locations where location.tier == "disk"',
    ],
)
def test_copies_within_the_set_are_fine(tmp_path: Path, replicate: str) -> None:
    assert findings(tmp_path, {"r.policy": f"rule r\n  {replicate}\n"}) == []


# ---- never-matches


def test_constant_false_conditions_never_match(tmp_path: Path) -> None:
    rules = {
        "r.policy": """\
        station 8IDI
        rule a
          protect files where file.size < 0
        rule b
          protect files where false
        rule c
          alarm when 1 > 2 notify ops
        rule d
          protect files where experiment.station == "1ID" and file.size > 1 GB
        rule e
          protect files where station == "8IDI" and file.size > 1 GB
        """
    }
    assert findings(tmp_path, rules) == [
        (
            "rules/r.policy:3:23",
            "warning",
            "never-matches: rule '8IDI/a' never matches: its condition is always false: "
            "file.size < 0",
        ),
        (
            "rules/r.policy:5:23",
            "warning",
            "never-matches: rule '8IDI/b' never matches: its condition is always false: false",
        ),
        (
            "rules/r.policy:7:14",
            "warning",
            "never-matches: rule '8IDI/c' never matches: its condition is always false: 1 > 2",
        ),
        (
            "rules/r.policy:9:23",
            "warning",
            "never-matches: rule '8IDI/d' never matches: this file's rules apply only to "
            "station 8IDI, and the condition asks for another station: "
            'experiment.station == "1ID" and file.size > 1 GB',
        ),
    ]


def test_a_station_condition_in_a_site_wide_file_can_match(tmp_path: Path) -> None:
    rules = {"r.policy": 'rule d\n  protect files where experiment.station == "1ID"\n'}
    assert findings(tmp_path, rules) == []


# ---- unused-location, unused-channel, unused-workflow


def test_unused_names_are_warned_at_their_definition(
    tmp_path: Path, with_unused_names: None
) -> None:
    config = CONFIG.replace("notify:\n", "notify:\n  pager: {email: pager@example.org}\n")
    site_with_rules(tmp_path, {"r.policy": "rule r\n  verify files on voyager every 1 day\n"})
    write(tmp_path, {"policyd.yaml": config})
    assert findings(tmp_path, kinds=UNUSED) == [
        (
            "policyd.yaml:7:3",
            "warning",
            "unused-location: location 'hpc' is defined but no rule, quota or station names it",
        ),
        (
            "policyd.yaml:8:3",
            "warning",
            "unused-location: location 'tape' is defined but no rule, quota or station names it",
        ),
        (
            "policyd.yaml:10:3",
            "warning",
            "unused-channel: notify channel 'pager' is defined but no rule, station contacts "
            "or alarms.default_notify names it",
        ),
        (
            "workflows/xpcs.yaml:1:7",
            "warning",
            "unused-workflow: workflow 'xpcs-8idi' is defined but no rule runs it",
        ),
    ]


def test_every_kind_of_use_counts(tmp_path: Path, with_unused_names: None) -> None:
    config = CONFIG.replace("notify:\n", "quotas:\n  hpc: {8IDI: 1 TB}\nnotify:\n  pager: {}\n")
    config += "alarms: {default_notify: [pager]}\n"
    rules = {
        "r.policy": """\
        rule r
          alarm when usage("voyager") > 90% or free("tape") < 1 TB notify ops
        rule x
          run workflow xpcs-8idi for files where true with qmap = 1, outputRootDir = "o"
        """
    }
    site_with_rules(tmp_path, rules)
    write(tmp_path, {"policyd.yaml": config})
    assert findings(tmp_path, kinds=UNUSED) == []


def test_a_typo_is_not_also_an_unused_name(tmp_path: Path, with_unused_names: None) -> None:
    rules = {"r.policy": "rule r\n  verify files on voyagr every 1 day\n"}
    site_with_rules(tmp_path, rules)
    assert findings(tmp_path, kinds={"unused-location"}) == []


# ---- the example repository


def test_the_examples_have_no_finding(with_unused_names: None) -> None:
    assert check_site([EXAMPLES]).diagnostics == []
