"""`policyd check`: a whole config repository checked in one run, every mistake located."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from policyd.diagnostics import Diagnostic
from policyd.rules.check import check_command, check_site, render_check
from tests.grammar.test_examples import EXAMPLE

CONFIG = """\
site: aps
timezone: America/Chicago
catalog: sqlite:///catalog.db
locations:
  daq-8idi: {url: "file:///data/8idi", tier: daq, site: 8idi, capacity: 20 TB}
  voyager:  {url: "file:///gdata/dm", tier: disk, site: aps, capacity: 1.5 PB, parallel: 8}
  hpc:      {url: "sftp://dm@hpc.example.org/scratch/dm", tier: hpc, site: alcf, capacity: 200 TB}
  tape:     {url: "globus://ENDPOINT-UUID/archive", tier: tape, site: aps, capacity: 10 PB}
notify:
  ops: {email: dm-admin@example.org}
  staff-8idi: {webhook: "https://chat.example.org/hooks/8idi"}
rules: ["rules/*.policy", "rules/*.yaml"]
workflows: ["workflows/*.yaml"]
stations: ["stations/*.yaml"]
"""

STATION_8IDI = """\
name: 8IDI
description: XPCS
contacts: [staff-8idi]
locations: [daq-8idi]
"""

STATION_1ID = "name: 1ID\ncontacts: [ops]\n"

WORKFLOW = """\
name: xpcs-8idi
owner: 8idi
stages:
  01-stage:
    command: "stage-input.sh $filePath $outputRootDir"
    outputVariableRegexList: ["Created processing output dir: (?P<outputDir>.*)"]
  02-process:
    command: "xpcs-correlate $filePath --qmap $qmap --out $outputDir"
"""

# spec/rules.md section 6, for another station (so that its names do not clash).
YAML_RULES = """\
version: 1
station: 1ID
rules:
  - name: layout
    place:
      where: 'file.path like "*.h5" or file.path like "*.imm"'
      on: voyager
      at: "{station}/{experiment.start:%Y-%m}/{experiment.name}/{file.path}"
  - name: two-copies
    replicate: {where: "experiment.end is null or experiment.end > now - 180 days", copies: 2, on: [voyager, hpc]}
  - name: archive-raw
    schedule: 1 day
    archive: {where: "age(experiment.end) > 90 days", to: tape, release_from: [daq-8idi],
              notify_before: {channel: staff-8idi, before: 7 days}}
  - name: make-room
    priority: 10
    release: {where: 'file.path like "scratch/**"', from: [voyager],
              when: 'usage("voyager") > 90%', until: 80%, order_by: {expr: file.modified}}
  - name: quota
    alarm:
      - {when: 'usage("voyager", station = "8IDI") > 80%', notify: [ops, staff-8idi], severity: warning}
  - name: access
    grant:
      - {perms: [read, write], principals: [experiment.users], at: voyager,
         while: "experiment.active or experiment.end > now - 30 days"}
"""


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def good_site(root: Path, **extra: str) -> Path:
    files = {
        "policyd.yaml": CONFIG,
        "stations/8idi.yaml": STATION_8IDI,
        "stations/1id.yaml": STATION_1ID,
        "workflows/xpcs.yaml": WORKFLOW,
        "rules/8idi.policy": EXAMPLE,
        "rules/1id.yaml": YAML_RULES,
    }
    files.update(extra)
    return write(root, files)


def site_with_rules(root: Path, rules: dict[str, str]) -> Path:
    """The good site's config, stations and workflow, with only `rules`."""
    write(
        root,
        {
            "policyd.yaml": CONFIG,
            "stations/8idi.yaml": STATION_8IDI,
            "stations/1id.yaml": STATION_1ID,
            "workflows/xpcs.yaml": WORKFLOW,
        },
    )
    (root / "rules").mkdir(exist_ok=True)
    return write(root, {f"rules/{k}": textwrap.dedent(v) for k, v in rules.items()})


def codes(diagnostics: list[Diagnostic]) -> list[str]:
    return [d.code for d in diagnostics]


def besides_unused(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """The small test site defines names some tests do not use; those warnings are
    tested in test_findings.py, not here."""
    return [d for d in diagnostics if not d.code.startswith("unused-")]


def first_lines(output: str) -> list[str]:
    """The `FILE:LINE:COL: severity: MESSAGE` lines of a rendering."""
    return [line for line in output.splitlines() if not line.startswith(" ") and ": " in line]


# ---- a good repository


def test_the_spec_rules_in_both_forms_check_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    good_site(tmp_path / "site")
    monkeypatch.chdir(tmp_path)
    result = check_site(["site"])
    assert result.diagnostics == []
    assert sorted(result.files) == sorted(
        [
            "site/policyd.yaml",
            "site/stations/1id.yaml",
            "site/stations/8idi.yaml",
            "site/workflows/xpcs.yaml",
            "site/rules/8idi.policy",
            "site/rules/1id.yaml",
        ]
    )
    assert check_command(["site"]) == 0
    assert capsys.readouterr().out == "0 errors, 0 warnings in 6 files\n"


def test_no_path_uses_the_usual_config_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good_site(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POLICYD_CONFIG", raising=False)
    assert check_site([]).diagnostics == []
    monkeypatch.chdir(tmp_path / "rules")
    monkeypatch.setenv("POLICYD_CONFIG", str(tmp_path))
    assert check_site([]).diagnostics == []


def test_a_config_file_path_works_like_its_folder(tmp_path: Path) -> None:
    good_site(tmp_path)
    assert check_site([tmp_path / "policyd.yaml"]).diagnostics == []


def test_check_needs_no_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unreachable = "postgresql+psycopg2://nobody@127.0.0.1:9/nowhere?connect_timeout=1"
    monkeypatch.setenv("POLICYD_CATALOG", unreachable)
    good_site(tmp_path, **{"policyd.yaml": CONFIG.replace("sqlite:///catalog.db", unreachable)})
    result = check_site([tmp_path])
    assert result.diagnostics == []
    assert not (tmp_path / "catalog.db").exists()


# ---- the "Done when" repository


BAD_DSL = """\
station 8IDI

rule layout
  place files where file.size > 90 days
  on voyagr
  at "{station}/{file.path}"

rule archive-raw
  archive files where file.szie > 10 GB
  to tape

rule verify-tape
  verify files on tape sample 2%

rule xpcs
  run workflow xpcs for files where file.path like "*.imm"
"""

BAD_YAML = """\
version: 1
station: 8IDI
rules:
  - name: layout
    place:
      where: 'file.path like "*.h5"'
      on: voyager
  - name: quota
    alarm:
      - {when: 'usage("voyagr") > 80%', notify: [ops]}
"""

BAD_KEY_YAML = """\
version: 1
rules:
  - name: tidy
    expire:
      wher: 'file.size > 1 GB'
"""


def test_every_mistake_of_every_file_is_located(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    site_with_rules(
        tmp_path / "site",
        {"8idi.policy": BAD_DSL, "more.yaml": BAD_YAML, "tidy.yaml": BAD_KEY_YAML},
    )
    monkeypatch.chdir(tmp_path)
    assert check_command(["site"]) == 1
    output = capsys.readouterr().out
    assert first_lines(output) == [
        "site/rules/8idi.policy:4:21: error: cannot compare size with duration: "
        "file.size > 90 days",
        "site/rules/8idi.policy:5:6: error: unknown location 'voyagr'; did you mean 'voyager'?",
        "site/rules/8idi.policy:9:23: error: unknown attribute file.szie",
        "site/rules/8idi.policy:13:3: error: verify in rule 'verify-tape' is missing its "
        "`every` clause",
        "site/rules/8idi.policy:16:16: error: unknown workflow 'xpcs'; did you mean 'xpcs-8idi'?",
        "site/rules/more.yaml:4:11: error: rule '8IDI/layout' is already defined at "
        "site/rules/8idi.policy:3:6",
        "site/rules/more.yaml:5:5: error: place in rule 'layout' is missing the key 'at'",
        "site/rules/more.yaml:10:23: error: unknown location 'voyagr'; did you mean 'voyager'?",
        "site/rules/tidy.yaml:5:7: error: unknown key 'wher' in 'expire'; did you mean 'where'?",
    ]
    assert output.splitlines()[-1] == "9 errors, 0 warnings in 7 files"
    # The source line and a caret under the column follow each message.
    assert "    place files where file.size > 90 days\n                      ^\n" in output
    assert "  hint: did you mean file.size?" in output


def test_json_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site_with_rules(tmp_path, {"8idi.policy": BAD_DSL})
    assert check_command([tmp_path], "json") == 1
    items = json.loads(capsys.readouterr().out)
    assert items[0] == {
        "code": "type-mismatch",
        "severity": "error",
        "message": "cannot compare size with duration: file.size > 90 days",
        "file": str(tmp_path / "rules" / "8idi.policy"),
        "line": 4,
        "col": 21,
        "hint": items[0]["hint"],
    }
    assert [i["code"] for i in items] == [
        "type-mismatch",
        "unknown-location",
        "unknown-attribute",
        "missing-clause",
        "unknown-workflow",
    ]
    assert render_check(check_site([tmp_path]), "json") == json.dumps(items, indent=2)


# ---- station scoping and full names


def test_same_short_name_in_different_stations_does_not_clash(tmp_path: Path) -> None:
    rules = {
        "a.policy": "station 8IDI\nrule tidy\n  protect files where file.size > 1 GB\n",
        "b.policy": "station 1ID\nrule tidy\n  protect files where file.size > 1 GB\n",
        "c.policy": "rule tidy\n  protect files where file.size > 1 GB\n",
    }
    site_with_rules(tmp_path, rules)
    assert besides_unused(check_site([tmp_path]).diagnostics) == []


def test_same_full_name_clashes_across_files(tmp_path: Path) -> None:
    rules = {
        "a.policy": "station 8IDI\nrule tidy\n  protect files where file.size > 1 GB\n",
        "b.policy": "station 8IDI\n\nrule tidy\n  protect files where file.size > 1 GB\n",
        "c.policy": "rule tidy\n  protect files where true\nrule tidy\n  protect files where true\n",
    }
    site_with_rules(tmp_path, rules)
    found = besides_unused(check_site([tmp_path]).diagnostics)
    assert [(d.code, d.span and (Path(d.span.file).name, d.span.line)) for d in found] == [
        ("duplicate-rule", ("b.policy", 3)),
        ("duplicate-rule", ("c.policy", 3)),
    ]
    assert (
        found[0].message == f"rule '8IDI/tidy' is already defined at {tmp_path}/rules/a.policy:2:6"
    )


def test_unknown_station_is_a_warning(tmp_path: Path) -> None:
    site_with_rules(tmp_path, {"a.policy": "station 9BM\nrule t\n  protect files where true\n"})
    result = check_site([tmp_path])
    assert [(d.code, d.severity) for d in besides_unused(result.diagnostics)] == [
        ("unknown-station", "warning")
    ]
    assert result.ok


# ---- the passes, one finding each


@pytest.mark.parametrize(
    ("rule", "code", "message"),
    [
        (
            'place files where true on voyager at "{station}/{file.path}"\n  schedule every 1 day',
            None,
            None,
        ),
        ("place files where true on voyager", "missing-clause", "missing its `at` clause"),
        ('place files where true at "{file.path}"', "missing-clause", "missing its `on` clause"),
        ("replicate files where true on voyager", "missing-clause", "`copies` clause"),
        ("replicate files where true copies 2", "missing-clause", "`on` clause"),
        ("archive files where true", "missing-clause", "`to` clause"),
        ("release files where true", "missing-clause", "`from` clause"),
        (
            'release files where true from voyager when usage("voyager") > 90%',
            "missing-clause",
            "`until` clause",
        ),
        ("release files where true from voyager until 80%", "missing-clause", "`when` clause"),
        ("alarm when true", "missing-clause", "`notify` clause"),
        ("grant read on experiment directory at voyager", "missing-clause", "`to` clause"),
        ("grant read to experiment.users at voyager", "missing-clause", "`on` clause"),
        ("grant read to experiment.users on experiment directory", "missing-clause", "`at`"),
        ('run workflow xpcs-8idi with qmap = 1, outputRootDir = "o"', "missing-clause", "`for`"),
        ("verify files every 1 day", "missing-clause", "`on` clause"),
        ("verify files on tape", "missing-clause", "`every` clause"),
        ("replicate files where true copies 0 on voyager", "out-of-range", "at least 1"),
        ("verify files on tape every 1 day sample 150%", "out-of-range", "not 150%"),
        ("verify files on tape every 0 days", "out-of-range", "`every` needs a duration"),
        (
            'release files where true from voyager when usage("voyager") > 80% until 90%',
            "bad-threshold",
            "`until 90%` must be below the `when` threshold 80%",
        ),
        ('replicate files where true copies 1 on tier "dsk"', "unknown-tier", "'disk'?"),
        ('alarm when usage("tape") > 1% notify opps', "unknown-channel", "did you mean 'ops'?"),
        ("archive files where true to tape notify stuff before 1 day", "unknown-channel", None),
        ('protect files where copies(tier = "tap") < 2', "unknown-tier", "'tape'?"),
        ('protect files where used("hpc", station = "8 IDI") > 1 GB', "bad-name", None),
        ("alarm when file.size > 1 GB notify ops", "attribute-not-here", None),
        (
            "grant read to experiment.users on experiment directory at voyager while file.size > 0",
            "attribute-not-here",
            None,
        ),
        (
            "replicate files where true copies 1 on locations where file.size > 0",
            "attribute-not-here",
            None,
        ),
        ("release files where true from hpc order by file.size > 0", "type-mismatch", "order"),
        (
            'run workflow xpcs-8idi for files where file.size with qmap = 1, outputRootDir = "o"',
            "not-a-condition",
            None,
        ),
        ('place files where true on voyager at "/{file.path}"', "bad-template", "relative"),
        ('place files where true on voyager at "{file.szie}"', "unknown-attribute", None),
    ],
)
def test_each_pass_finds_its_mistake(
    tmp_path: Path, rule: str, code: str | None, message: str | None
) -> None:
    site_with_rules(tmp_path, {"r.policy": f"rule r\n  {rule}\n"})
    found = [d for d in check_site([tmp_path]).diagnostics if d.severity == "error"]
    if code is None:
        assert found == []
        return
    assert codes(found) == [code], found
    assert found[0].span is not None and found[0].span.line == 2
    if message:
        assert message in found[0].message


def test_yaml_template_columns_point_at_the_placeholder(tmp_path: Path) -> None:
    rules = """\
    version: 1
    rules:
      - name: quoted
        place: {where: "true", on: voyager, at: "{file.szie}"}
      - name: plain
        place:
          where: "true"
          on: voyager
          at: x/{file.szie}
    """
    site_with_rules(tmp_path, {"t.yaml": rules})
    found = besides_unused(check_site([tmp_path]).diagnostics)
    assert [(d.code, d.span and (d.span.line, d.span.col)) for d in found] == [
        ("unknown-attribute", (4, 47)),
        ("unknown-attribute", (9, 14)),
    ]


def test_a_repeated_template_is_reported_wherever_it_is_wrong(tmp_path: Path) -> None:
    """Templates found clean are not checked again; a wrong one is, at each place."""
    rules = """\
    rule a place files where true on voyager at "{station}/{file.path}"
    rule b place files where true on voyager at "{file.szie}/{file.path}"
    rule c place files where true on voyager at "{station}/{file.path}"
    rule d place files where true on voyager at "{file.szie}/{file.path}"
    """
    site_with_rules(tmp_path, {"t.policy": rules})
    found = besides_unused(check_site([tmp_path]).diagnostics)
    assert [(d.code, d.span and (d.span.line, d.span.col)) for d in found] == [
        ("unknown-attribute", (2, 47)),
        ("unknown-attribute", (4, 47)),
    ]


def test_run_rule_with_keys_feed_the_workflow_variables(tmp_path: Path) -> None:
    rules = {
        "r.policy": """\
        rule xpcs
          run workflow xpcs-8idi for files where true with qmap = experiment.meta.qmap
        """
    }
    site_with_rules(tmp_path, rules)
    found = besides_unused(check_site([tmp_path]).diagnostics)
    assert codes(found) == ["undefined-variable"]
    assert found[0].span is not None and found[0].span.file.endswith("xpcs.yaml")
    assert "$outputRootDir" in found[0].message
    assert found[0].hint is not None and "rule 'xpcs'" in found[0].hint


# ---- a broken config, odd inputs: diagnostics, never a traceback


def test_config_errors_do_not_stop_the_rule_checks(tmp_path: Path) -> None:
    config = CONFIG.replace("site: aps\n", "site: aps\nsafety: {min_copise: 2}\n")
    good_site(tmp_path, **{"policyd.yaml": config})
    write(tmp_path, {"rules/x.policy": "rule x\n  archive files where true to tap\n"})
    found = check_site([tmp_path]).diagnostics
    assert codes(found) == ["unknown-key", "unknown-location"]
    assert "did you mean 'tape'?" in found[1].message


def test_a_bad_rule_pattern_keeps_the_others(tmp_path: Path) -> None:
    config = CONFIG.replace('rules: ["rules/*.policy"', 'rules: ["../x", "rules/*.policy"')
    good_site(tmp_path, **{"policyd.yaml": config})
    write(tmp_path, {"rules/x.policy": "rule x\n  archive files where true to tap\n"})
    found = check_site([tmp_path]).diagnostics
    assert [(d.code, d.span and Path(d.span.file).name) for d in found] == [
        ("bad-value", "policyd.yaml"),
        ("unknown-location", "x.policy"),
    ]


def test_a_folder_without_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_command([tmp_path]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{tmp_path}: error: no policyd.yaml in this folder",
        "  hint: a folder given to check is a config repository with its site config",
        "1 error, 0 warnings in 0 files",
    ]


def test_rule_files_given_as_paths_are_checked_too(tmp_path: Path) -> None:
    good_site(tmp_path / "site")
    loose = write(tmp_path, {"extra.policy": "rule x\n  archive files where true to tap\n"})
    result = check_site([tmp_path / "site", loose / "extra.policy"])
    assert codes(result.diagnostics) == ["unknown-location"]
    assert str(tmp_path / "extra.policy") in result.files


@pytest.mark.parametrize(
    "files",
    [
        {},
        {"policyd.yaml": "site: [\n"},
        {"policyd.yaml": "- just a list\n"},
        {"policyd.yaml": CONFIG, "rules/a.policy": "\x00\x01 rule"},
        {"policyd.yaml": CONFIG, "rules/a.yaml": "version: 1\nrules: {a: b}\n"},
        {"policyd.yaml": CONFIG, "rules/a.yaml": ": : :\n\t- ["},
        {"policyd.yaml": CONFIG, "workflows/w.yaml": "stages: 3\n"},
        {"policyd.yaml": CONFIG, "stations/s.yaml": "name: [x]\n"},
        {"policyd.yaml": CONFIG.replace("rules: [", "rules: [../x, ")},
    ],
)
def test_broken_inputs_give_errors_not_tracebacks(
    tmp_path: Path, files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, files)
    assert check_command([tmp_path]) == 1
    output = capsys.readouterr().out
    assert "error" in output
    assert "Traceback" not in output
    assert "internal-error" not in output


def test_binary_rule_file_and_missing_path(tmp_path: Path) -> None:
    good_site(tmp_path)
    (tmp_path / "rules" / "z.policy").write_bytes(b"\xff\xfe\x00rule")
    result = check_site([tmp_path, tmp_path / "nope.policy"])
    assert codes(result.diagnostics) == ["file-not-found", "file-unreadable"]
