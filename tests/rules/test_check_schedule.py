"""A rule's schedule text must be a duration or a cron string the daemon can run."""

from __future__ import annotations

from pathlib import Path

from policyd.rules.check import check_site

CONFIG = """\
site: t
locations:
  voyager: {url: "file:v", tier: disk}
rules: ["rules/*.yaml"]
workflows: []
stations: []
"""


def test_a_misspelt_schedule_is_reported_where_it_is(tmp_path: Path) -> None:
    (tmp_path / "policyd.yaml").write_text(CONFIG)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "a.yaml").write_text(
        "version: 1\nrules:\n"
        "  - name: ok\n    schedule: 0 3 * * *\n    protect: {where: 'file.size > 1 GB'}\n"
        "  - name: bad\n    schedule: every 1 dai\n    protect: {where: 'file.size > 1 GB'}\n"
    )
    result = check_site([tmp_path])
    errors = [d for d in result.diagnostics if d.severity == "error"]
    assert [(d.code, d.span.line, d.span.col) for d in errors] == [("bad-schedule", 7, 15)]
    assert "'every 1 dai' is not a schedule" in errors[0].message
