"""The site config and station files, loaded from real files in a temporary folder."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from policyd.diagnostics import DiagnosticError, render_all, sorted_diagnostics
from policyd.stations.config import (
    Schedule,
    SiteConfig,
    config_json_schema,
    files_matching,
    find_config,
    load_site_config,
    parse_schedule,
    station_json_schema,
)
from policyd.yamlsource import load_yaml, position, validate

TB = 10**12
PB = 10**15
DAY = 86400.0

SPEC_EXAMPLE = """\
site: aps
timezone: America/Chicago        # for times without an offset, templates, cron; default UTC
catalog: sqlite:///catalog.db    # relative to this file; POLICYD_CATALOG overrides;
                                 # postgresql+psycopg2://user@host/db in production
locations:
  daq-8idi: {url: "file:///data/8idi", tier: daq, site: 8idi, capacity: 20 TB}
  voyager:  {url: "file:///gdata/dm", tier: disk, site: aps, capacity: 1.5 PB, parallel: 8}
  hpc:      {url: "sftp://dm@hpc.example.org/scratch/dm", tier: hpc, site: alcf,
             capacity: 200 TB, ssh_key: ~/.ssh/policyd}
  tape:     {url: "globus://ENDPOINT-UUID/archive", tier: tape, site: aps, capacity: 10 PB}
quotas:
  voyager: {8IDI: 400 TB, 1ID: 600 TB}
notify:
  ops: {email: dm-admin@example.org}
  staff-8idi: {webhook: "https://chat.example.org/hooks/8idi"}
smtp: {host: localhost, port: 25}
globus: {token_file: ~/.config/policyd/globus-tokens.json}
identities:                       # how principals become accounts
  system_user: "{user}"           # experiment user -> POSIX account
  globus_identity: "{user}@anl.gov"
safety:
  min_copies: 1                   # no release may leave a file with fewer verified replicas
  max_delete_per_run: 50 TB       # more needs apply --allow-bulk-delete; the daemon stops at it
  release_grace: 1 day            # a delete waits until the copies it relies on are this old
retry: {attempts: 5, backoff: 30 s, max_backoff: 1 hour}
alarms:
  repeat: 24 hours                # re-notify a still-raised alarm
  default_notify: [ops]           # for alarms raised by policyd itself
defaults:
  schedule: 15 min                # or a cron string
rules: ["rules/*.policy", "rules/*.yaml"]
workflows: ["workflows/*.yaml"]
stations: ["stations/*.yaml"]
"""

STATION_8IDI = """\
name: 8IDI
description: XPCS beamline
contacts: [staff-8idi]
locations: [daq-8idi]
timezone: America/Chicago
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_lines(path: Path) -> list[str]:
    """The first rendered line of every diagnostic, in report order."""
    with pytest.raises(DiagnosticError) as caught:
        load_site_config(path)
    return [d.render().splitlines()[0] for d in sorted_diagnostics(caught.value.diagnostics)]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake home folder, so `~` expands somewhere known."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("POLICYD_CATALOG", raising=False)
    monkeypatch.delenv("POLICYD_CONFIG", raising=False)
    return home


@pytest.fixture
def site(tmp_path: Path, home: Path) -> Path:
    repo = tmp_path / "repo"
    write(repo / "policyd.yaml", SPEC_EXAMPLE)
    write(repo / "stations" / "8idi.yaml", STATION_8IDI)
    (repo / "rules").mkdir()
    (repo / "workflows").mkdir()
    return repo


# ---------------------------------------------------------------------------
# a good config


def test_spec_example_loads_every_key(site: Path, home: Path) -> None:
    config = load_site_config(site / "policyd.yaml")

    assert config.path == site / "policyd.yaml"
    assert config.root == site
    assert config.site == "aps"
    assert config.timezone == "America/Chicago"
    assert str(config.tzinfo) == "America/Chicago"
    assert config.catalog == f"sqlite:///{site}/catalog.db"
    assert config.catalog_url() == f"sqlite:///{site}/catalog.db"

    assert list(config.locations) == ["daq-8idi", "voyager", "hpc", "tape"]
    daq = config.locations["daq-8idi"]
    assert (daq.url, daq.tier, daq.site, daq.capacity) == (
        "file:///data/8idi",
        "daq",
        "8idi",
        20 * TB,
    )
    assert daq.scheme == "file"
    assert daq.root_path == Path("/data/8idi")
    assert daq.parallel is None and daq.ssh_key is None
    voyager = config.locations["voyager"]
    assert (voyager.url, voyager.tier, voyager.site) == ("file:///gdata/dm", "disk", "aps")
    assert (voyager.capacity, voyager.parallel) == (1500 * TB, 8)
    hpc = config.locations["hpc"]
    assert hpc.url == "sftp://dm@hpc.example.org/scratch/dm"
    assert (hpc.scheme, hpc.root_path, hpc.tier, hpc.site) == ("sftp", None, "hpc", "alcf")
    assert hpc.capacity == 200 * TB
    assert hpc.ssh_key == home / ".ssh" / "policyd"
    tape = config.locations["tape"]
    assert (tape.url, tape.scheme, tape.tier, tape.capacity) == (
        "globus://ENDPOINT-UUID/archive",
        "globus",
        "tape",
        10 * PB,
    )

    assert config.quotas == {"voyager": {"8IDI": 400 * TB, "1ID": 600 * TB}}
    assert config.notify["ops"].kind == "email"
    assert config.notify["ops"].email == ["dm-admin@example.org"]
    assert config.notify["staff-8idi"].kind == "webhook"
    assert config.notify["staff-8idi"].webhook == "https://chat.example.org/hooks/8idi"
    assert config.smtp is not None
    assert (config.smtp.host, config.smtp.port, config.smtp.starttls) == ("localhost", 25, False)
    assert config.smtp.user is None and config.smtp.password_file is None
    assert config.globus is not None
    assert config.globus.token_file == home / ".config" / "policyd" / "globus-tokens.json"
    assert config.globus.client_id is None
    assert config.identities.system_user == "{user}"
    assert config.identities.globus_identity == "{user}@anl.gov"
    assert config.safety.min_copies == 1
    assert config.safety.max_delete_per_run == 50 * TB
    assert config.safety.release_grace == DAY
    assert (config.retry.attempts, config.retry.backoff, config.retry.max_backoff) == (5, 30, 3600)
    assert config.alarms.repeat == DAY
    assert config.alarms.default_notify == ["ops"]
    assert config.defaults.schedule == Schedule(every=900.0)
    assert config.rule_globs == ["rules/*.policy", "rules/*.yaml"]
    assert config.workflow_globs == ["workflows/*.yaml"]
    assert config.station_globs == ["stations/*.yaml"]

    assert list(config.stations) == ["8IDI"]
    station = config.stations["8IDI"]
    assert station.description == "XPCS beamline"
    assert station.contacts == ["staff-8idi"]
    assert station.locations == ["daq-8idi"]
    assert station.timezone == "America/Chicago"
    assert station.path == site / "stations" / "8idi.yaml"
    assert config.warnings == []


def test_defaults_of_a_minimal_config(tmp_path: Path, home: Path) -> None:
    config = load_site_config(write(tmp_path / "policyd.yaml", "site: aps\n"))
    assert config.timezone == "UTC"
    assert config.catalog == f"sqlite:///{tmp_path}/catalog.db"
    assert config.locations == {} and config.quotas == {} and config.notify == {}
    assert config.smtp is None and config.globus is None
    assert config.identities.system_user == "{user}"
    assert config.identities.globus_identity is None
    assert config.safety.min_copies == 1
    assert config.safety.max_delete_per_run is None
    assert config.safety.release_grace == 0.0
    assert (config.retry.attempts, config.retry.backoff, config.retry.max_backoff) == (5, 30, 3600)
    assert config.alarms.repeat == DAY and config.alarms.default_notify == []
    assert config.defaults.schedule == Schedule(every=900.0)
    assert str(config.defaults.schedule) == "15 min"
    assert config.rule_globs == ["rules/*.policy", "rules/*.yaml"]
    assert config.workflow_globs == ["workflows/*.yaml"]
    assert config.station_globs == ["stations/*.yaml"]
    assert config.stations == {}


def test_yaml_1_2_keeps_on_off_yes_no_as_text(tmp_path: Path, home: Path) -> None:
    path = write(
        tmp_path / "policyd.yaml",
        """\
        site: on
        locations:
          on: {url: /data/on, tier: yes}
          off: {url: /data/off, tier: no}
        notify:
          y: {log: true}
        """,
    )
    config = load_site_config(path)
    assert config.site == "on"
    assert list(config.locations) == ["on", "off"]
    assert config.locations["on"].tier == "yes"
    assert config.locations["off"].tier == "no"
    assert config.notify["y"].log == "-"

    tree = load_yaml(path)
    assert "on" in tree["locations"] and True not in tree["locations"]
    assert position(tree, ("locations", "off", "tier")) == (4, 31)
    assert position(tree, ("locations", "off"), at_key=True) == (4, 3)


def test_relative_paths_and_urls_resolve_against_the_config_folder(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    write(
        repo / "policyd.yaml",
        """\
        site: lab
        catalog: sqlite:///db/catalog.db?timeout=30
        locations:
          rel: {url: "file:data/daq"}
          plain: {url: scratch/area}
          up: {url: "file:../shared"}
          abs: {url: "file:///abs/dir/"}
          local: {url: "file://localhost/srv/x"}
          homed: {url: ~/store}
          spaced: {url: "dir with space"}
          osfs: {url: "osfs://relative/path"}
          remote: {url: "sftp://me@host:2222/d", ssh_key: keys/id_ed25519}
        smtp: {host: mail, port: 587, user: bot, password_file: secrets/smtp, starttls: true}
        globus: {token_file: tokens.json, client_id: 6b2a9a4e-8a79-4c4e-9f33-2f3c7a1b0d11}
        notify:
          file: {log: logs/notices.log}
        """,
    )
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    config = load_site_config(Path("repo/policyd.yaml"))
    assert config.root == repo
    assert config.catalog == f"sqlite:///{repo}/db/catalog.db?timeout=30"
    urls = {name: location.url for name, location in config.locations.items()}
    assert urls == {
        "rel": f"file://{repo}/data/daq",
        "plain": f"file://{repo}/scratch/area",
        "up": f"file://{tmp_path}/shared",
        "abs": "file:///abs/dir",
        "local": "file:///srv/x",
        "homed": f"file://{home}/store",
        "spaced": f"file://{repo}/dir%20with%20space",
        "osfs": "osfs://relative/path",
        "remote": "sftp://me@host:2222/d",
    }
    assert config.locations["rel"].root_path == repo / "data" / "daq"
    assert config.locations["spaced"].root_path == repo / "dir with space"
    assert config.locations["remote"].ssh_key == repo / "keys" / "id_ed25519"
    assert config.smtp is not None and config.smtp.password_file == repo / "secrets" / "smtp"
    assert config.smtp.starttls is True and config.smtp.user == "bot"
    assert config.globus is not None and config.globus.token_file == repo / "tokens.json"
    assert config.notify["file"].log == str(repo / "logs" / "notices.log")


def test_non_sqlite_catalog_is_left_alone(tmp_path: Path, home: Path) -> None:
    url = "postgresql+psycopg2://policyd@db.example.org/catalog"
    path = write(tmp_path / "policyd.yaml", f"site: aps\ncatalog: {url}\n")
    assert load_site_config(path).catalog == url
    path.write_text("site: aps\ncatalog: sqlite:////var/lib/policyd.db\n")
    assert load_site_config(path).catalog == "sqlite:////var/lib/policyd.db"


def test_schedule_accepts_a_duration_or_cron(tmp_path: Path, home: Path) -> None:
    path = write(tmp_path / "policyd.yaml", "site: aps\ndefaults: {schedule: '0 3 * * *'}\n")
    assert load_site_config(path).defaults.schedule == Schedule(cron="0 3 * * *")
    assert parse_schedule("every 1 day") == Schedule(every=DAY)
    assert str(parse_schedule("30  2 * * 1-5")) == "30 2 * * 1-5"


# ---------------------------------------------------------------------------
# environment and discovery


def test_policyd_catalog_overrides_the_config(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_site_config(site / "policyd.yaml")
    monkeypatch.setenv("POLICYD_CATALOG", "sqlite:////tmp/scratch.db")
    assert config.catalog_url() == "sqlite:////tmp/scratch.db"
    monkeypatch.setenv("POLICYD_CATALOG", "")
    assert config.catalog_url() == f"sqlite:///{site}/catalog.db"


def test_find_config_order(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    here = tmp_path / "here"
    write(here / "policyd.yaml", "site: here\n")
    env = write(tmp_path / "env" / "site.yaml", "site: env\n")
    explicit = write(tmp_path / "explicit" / "policyd.yaml", "site: explicit\n")
    monkeypatch.chdir(here)

    assert find_config(None) == Path("policyd.yaml")
    monkeypatch.setenv("POLICYD_CONFIG", str(env))
    assert find_config(None) == env
    assert find_config(explicit) == explicit
    assert find_config(str(explicit.parent)) == explicit  # a folder means its policyd.yaml
    monkeypatch.setenv("POLICYD_CONFIG", str(env.parent.parent / "explicit"))
    assert find_config(None) == explicit
    assert find_config(tmp_path / "nope.yaml") == tmp_path / "nope.yaml"

    monkeypatch.delenv("POLICYD_CONFIG")
    monkeypatch.chdir(tmp_path)
    assert find_config(None) is None


def test_load_site_config_accepts_a_folder(site: Path) -> None:
    assert load_site_config(site).path == site / "policyd.yaml"


def test_empty_site(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = SiteConfig.empty("sqlite:///scratch.db")
    assert config.catalog_url() == "sqlite:///scratch.db"
    assert config.path is None and config.root == tmp_path
    assert config.locations == {} and config.stations == {}
    assert config.rule_files() == [] and config.station_files() == []
    monkeypatch.setenv("POLICYD_CATALOG", "postgresql://h/db")
    assert config.catalog_url() == "postgresql://h/db"


def test_files_matching_keeps_pattern_order_and_skips_hidden(tmp_path: Path) -> None:
    for name in ("rules/b.policy", "rules/a.policy", "rules/c.yaml", "rules/.a.policy.swp"):
        write(tmp_path / name, "")
    write(tmp_path / "rules" / ".hidden" / "x.policy", "")
    (tmp_path / "rules" / "dir.policy").mkdir()
    found = files_matching(tmp_path, ["rules/*.yaml", "rules/*.policy", "rules/a.*"])
    assert found == [Path("rules/c.yaml"), Path("rules/a.policy"), Path("rules/b.policy")]
    assert files_matching(tmp_path, ["rules/**/*.policy"]) == [
        Path("rules/a.policy"),
        Path("rules/b.policy"),
    ]


def test_a_pattern_whose_folder_is_missing_is_a_warning(tmp_path: Path, home: Path) -> None:
    path = write(tmp_path / "policyd.yaml", "site: aps\nrules: [rule/*.policy]\nworkflows: []\n")
    config = load_site_config(path)
    assert [d.render() for d in config.warnings] == [
        f"{path}:2:9: warning: rules: 'rule/*.policy' matches no file: there is no folder 'rule'"
    ]


def test_json_schemas_are_generated() -> None:
    schema = config_json_schema()
    assert schema["additionalProperties"] is False
    assert {"site", "locations", "rules", "stations", "safety"} <= set(schema["properties"])
    assert "name" in station_json_schema()["properties"]


# ---------------------------------------------------------------------------
# bad configs: the exact line a person sees

CASES: list[tuple[str, str, list[str]]] = [
    (
        "unknown-key",
        """\
        site: aps
        locations:
          voyager: {url: "file:///g", capcity: 20 TB}
        """,
        [
            "{f}:3:31: error: unknown key 'capcity' in locations.voyager; "
            "expected one of: capacity, globus, parallel, site, ssh_key, tier, url"
        ],
    ),
    (
        "unknown-top-level-key",
        "site: aps\nsafety: {min_copies: 2}\nsafty: {}\n",
        [
            "{f}:3:1: error: unknown key 'safty'; expected one of: alarms, catalog, defaults, "
            "globus, identities, locations, notify, quotas, retry, rules, safety, site, smtp, "
            "stations, timezone, workflows"
        ],
    ),
    (
        "bad-size",
        """\
        site: aps
        locations:
          voyager:
            url: file:///g
            capacity: 1.5 XB
        """,
        [
            "{f}:5:15: error: locations.voyager.capacity: '1.5 XB': unknown size unit 'XB'; "
            "write a number of bytes, or a number and a unit: B, KB, MB, GB, TB, PB (decimal) "
            "or KiB, MiB, GiB, TiB, PiB (binary), e.g. '20 TB' or '1.5TiB'"
        ],
    ),
    (
        "duration-without-unit",
        "site: aps\nsafety:\n  release_grace: 90\n",
        [
            "{f}:3:18: error: safety.release_grace: 90 has no unit; a duration needs one: "
            "a number and a unit: s, sec, second(s), min, minute(s), h, hour(s), d, day(s), "
            "w, week(s), month(s) (30 days), y, year(s) (365 days), e.g. '15 min' or '1.5 h'"
        ],
    ),
    (
        "unknown-timezone",
        "site: aps\ntimezone: America/Chicgo\n",
        [
            "{f}:2:11: error: timezone: unknown timezone 'America/Chicgo'; use an IANA name "
            "such as 'America/Chicago' or 'UTC' (did you mean 'America/Chicago'?)"
        ],
    ),
    (
        "quota-on-unknown-location",
        """\
        site: aps
        locations:
          voyager: {url: "file:///g"}
        quotas:
          voyagr: {8IDI: 400 TB}
        """,
        ["{f}:5:3: error: unknown location 'voyagr' in quotas; defined locations: voyager"],
    ),
    (
        "yaml-syntax",
        "site: aps\nlocations:\n  voyager: {url: x\n",
        ["{f}:3:12: error: invalid YAML: expected ',' or '}', but got '<stream end>'"],
    ),
    (
        "yaml-syntax-indentation",
        "site: aps\nsafety:\n  min_copies: 1\n   max: 2\n",
        ["{f}:4:7: error: invalid YAML: mapping values are not allowed here"],
    ),
    (
        "duplicate-key",
        "site: aps\ntimezone: UTC\nsite: lab\n",
        ["{f}:3:1: error: key 'site' appears twice in the same mapping"],
    ),
    (
        "wrong-types",
        """\
        site: aps
        locations:
          voyager:
            url: /x
            parallel: eight
        safety: [1]
        smtp: {host: mail, starttls: "yes"}
        """,
        [
            "{f}:5:15: error: locations.voyager.parallel: expected a whole number, "
            "got text 'eight'",
            "{f}:6:9: error: safety: expected a mapping (key: value), got a list",
            "{f}:7:30: error: smtp.starttls: expected true or false, got text 'yes'",
        ],
    ),
    (
        "missing-keys",
        "timezone: UTC\nlocations:\n  v: {tier: disk}\nsmtp:\n  port: 25\n",
        [
            "{f}:1:1: error: missing required top-level key 'site'",
            "{f}:3:3: error: locations.v: missing required key 'url'",
            "{f}:4:1: error: smtp: missing required key 'host'",
        ],
    ),
    (
        "parallel-and-min-copies-below-one",
        "site: aps\nlocations:\n  v: {url: /x, parallel: 0}\nsafety: {min_copies: 0}\n",
        [
            "{f}:3:26: error: locations.v.parallel: must be at least 1, got the number 0",
            "{f}:4:22: error: safety.min_copies: must be at least 1, got the number 0",
        ],
    ),
    (
        "notify-channels",
        """\
        site: aps
        notify:
          ops: {email: a@b.org, webhook: "https://x.org/h"}
          nothing: {}
          chat: {webhook: "ftp://x.org/h"}
          mail: {email: [a@b.org, not-an-address]}
        alarms: {default_notify: [ops, opps]}
        """,
        [
            "{f}:3:8: error: notify.ops: give exactly one of email, webhook, log "
            "(found: email, webhook)",
            "{f}:4:12: error: notify.nothing: give exactly one of email, webhook, log "
            "(found: none)",
            "{f}:5:19: error: notify.chat.webhook: 'ftp://x.org/h' is not an http:// "
            "or https:// URL",
            "{f}:6:27: error: notify.mail.email[1]: 'not-an-address' is not an email address",
            "{f}:7:32: error: unknown notify channel 'opps' in alarms.default_notify; "
            "defined notify channels: ops, nothing, chat, mail",
        ],
    ),
    (
        "bad-names-and-urls",
        """\
        site: aps
        locations:
          'vo yager': {url: /x}
          far: {url: "file://otherhost/x"}
          remote: {url: "sftp:/x"}
        """,
        [
            "{f}:3:3: error: locations.'vo yager': 'vo yager' is not a valid name; "
            "use letters, digits, '_' and '-' only",
            "{f}:4:14: error: locations.far.url: 'file://otherhost/x': a file:// URL names "
            "a folder on this machine; for one on 'otherhost' use sftp://otherhost/PATH",
            "{f}:5:17: error: locations.remote.url: 'sftp:/x': a sftp URL needs a host: "
            "sftp://HOST/PATH",
        ],
    ),
    (
        "schedules-retry-identities",
        """\
        site: aps
        defaults: {schedule: '61 * * * *'}
        retry: {backoff: 1 hour, max_backoff: 30 s}
        identities: {system_user: '{usr}'}
        """,
        [
            "{f}:2:22: error: defaults.schedule: '61 * * * *' is not a valid cron string: "
            "Error validating expression '61': the last value (61) is higher than the "
            "maximum value (59)",
            "{f}:3:8: error: retry: max_backoff (30 s) is shorter than backoff (1 hour)",
            "{f}:4:27: error: identities.system_user: '{usr}': a template may use only "
            "{user}, found {usr}",
        ],
    ),
    (
        "catalog-and-globs",
        """\
        site: aps
        catalog: catalog.db
        rules: ['/abs/*.policy', '../x/*']
        """,
        [
            "{f}:2:10: error: catalog: 'catalog.db' is not a database URL; write e.g. "
            "'sqlite:///catalog.db' or 'postgresql+psycopg2://user@host/db'",
            "{f}:3:9: error: rules[0]: '/abs/*.policy': file patterns are relative to the "
            "config folder, e.g. 'rules/*.policy'",
            "{f}:3:26: error: rules[1]: '../x/*': file patterns must stay inside the config folder",
        ],
    ),
    (
        "not-a-mapping",
        "- site: aps\n",
        ["{f}:1:1: error: expected a mapping (key: value), got a list"],
    ),
    (
        "empty-value",
        "site: aps\nlocations:\n  v:\n",
        [
            "{f}:3:3: error: locations.v: expected a mapping (key: value), "
            "got nothing (an empty value)"
        ],
    ),
]


@pytest.mark.parametrize(("name", "text", "expected"), CASES, ids=[case[0] for case in CASES])
def test_bad_config(tmp_path: Path, home: Path, name: str, text: str, expected: list[str]) -> None:
    path = write(tmp_path / "policyd.yaml", text)
    assert error_lines(path) == [line.replace("{f}", str(path)) for line in expected]


def test_several_errors_in_one_file_are_all_reported(tmp_path: Path, home: Path) -> None:
    path = write(
        tmp_path / "policyd.yaml",
        """\
        site: aps
        timezone: Mars/Olympus
        locations:
          voyager: {url: /g, capacity: lots}
        quotas:
          tape: {8IDI: 1 TB}
        safety:
          min_copies: 0
          release_grace: 1 fortnight
        bogus: 1
        """,
    )
    lines = error_lines(path)
    assert [line.split(": error: ")[0] for line in lines] == [
        f"{path}:2:11",
        f"{path}:4:32",
        f"{path}:6:3",
        f"{path}:8:15",
        f"{path}:9:18",
        f"{path}:10:1",
    ]
    assert lines[2] == (
        f"{path}:6:3: error: unknown location 'tape' in quotas; defined locations: voyager"
    )


def test_rendering_shows_the_line_and_the_hint(tmp_path: Path, home: Path) -> None:
    path = write(tmp_path / "policyd.yaml", "site: aps\nsafety:\n  min_copise: 2\n")
    with pytest.raises(DiagnosticError) as caught:
        load_site_config(path)
    assert render_all(caught.value.diagnostics) == (
        f"{path}:3:3: error: unknown key 'min_copise' in safety; "
        "expected one of: max_delete_per_run, min_copies, release_grace\n"
        "    min_copise: 2\n"
        "    ^\n"
        "  hint: did you mean 'min_copies'?"
    )
    assert [d.code for d in caught.value.diagnostics] == ["unknown-key"]


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(DiagnosticError) as caught:
        load_site_config(path)
    assert [d.render() for d in caught.value.diagnostics] == [f"{path}: error: no such file"]
    assert caught.value.diagnostics[0].code == "file-not-found"


def test_unreadable_config_file(tmp_path: Path) -> None:
    path = tmp_path / "policyd.yaml"
    path.write_bytes(b"site: \xff\xfe\n")
    with pytest.raises(DiagnosticError) as caught:
        load_site_config(path)
    assert caught.value.diagnostics[0].code == "file-unreadable"
    assert caught.value.diagnostics[0].render().startswith(f"{path}: error: not UTF-8 text")


def test_diagnostic_codes(tmp_path: Path, home: Path) -> None:
    path = write(
        tmp_path / "policyd.yaml",
        """\
        site: aps
        nope: 1
        smtp: {}
        safety: {min_copies: x, max_delete_per_run: 1 XB}
        quotas: {ghost: {}}
        alarms: {default_notify: [nobody]}
        """,
    )
    with pytest.raises(DiagnosticError) as caught:
        load_site_config(path)
    codes = [d.code for d in sorted_diagnostics(caught.value.diagnostics)]
    assert codes == [
        "unknown-key",
        "missing-key",
        "wrong-type",
        "bad-value",
        "unknown-location",
        "unknown-channel",
    ]


# ---------------------------------------------------------------------------
# station files


def test_station_errors_are_reported_with_the_config_errors(site: Path) -> None:
    config = site / "policyd.yaml"
    config.write_text(SPEC_EXAMPLE.replace("min_copies: 1 ", "min_copies: 0 "))
    write(
        site / "stations" / "1id.yaml",
        """\
        name: 1ID
        contacts: [ops, staff-1id]
        locations: [voyager, daq-1id]
        timezone: Europe/Pariss
        color: blue
        """,
    )
    write(site / "stations" / "broken.yaml", "name: [unclosed\n")
    write(site / "stations" / "dup.yaml", "name: 8IDI\n")
    station = site / "stations" / "1id.yaml"
    assert error_lines(config) == [
        f"{config}:22:15: error: safety.min_copies: must be at least 1, got the number 0",
        f"{station}:2:17: error: unknown notify channel 'staff-1id' in contacts; "
        "defined notify channels: ops, staff-8idi",
        f"{station}:3:22: error: unknown location 'daq-1id' in locations; "
        "defined locations: daq-8idi, voyager, hpc, tape",
        f"{station}:4:11: error: timezone: unknown timezone 'Europe/Pariss'; use an IANA name "
        "such as 'America/Chicago' or 'UTC' (did you mean 'Europe/Paris'?)",
        f"{station}:5:1: error: unknown key 'color'; "
        "expected one of: contacts, description, locations, name, timezone",
        f"{site / 'stations' / 'broken.yaml'}:1:7: error: invalid YAML: "
        "expected ',' or ']', but got '<stream end>'",
        f"{site / 'stations' / 'dup.yaml'}:1:7: error: station '8IDI' is already defined in "
        f"{site / 'stations' / '8idi.yaml'}",
    ]


def test_station_file_with_unknown_contact(site: Path) -> None:
    station = write(
        site / "stations" / "2bm.yaml",
        "name: 2BM\ncontacts: staff-2bm\n",
    )
    assert error_lines(site / "policyd.yaml") == [
        f"{station}:2:11: error: unknown notify channel 'staff-2bm' in contacts; "
        "defined notify channels: ops, staff-8idi"
    ]


def test_station_missing_name_and_empty_station_file(site: Path) -> None:
    empty = write(site / "stations" / "empty.yaml", "")
    nameless = write(site / "stations" / "nameless.yaml", "description: x\n")
    assert error_lines(site / "policyd.yaml") == [
        f"{empty}:1:1: error: missing required top-level key 'name'",
        f"{nameless}:1:1: error: missing required top-level key 'name'",
    ]


def test_station_files_are_checked_even_when_the_config_is_invalid(site: Path) -> None:
    config = site / "policyd.yaml"
    config.write_text("site: aps\ntimezone: Nowhere/Land\nlocations: {daq-8idi: {url: /d}}\n")
    station = write(site / "stations" / "x.yaml", "name: X\nlocations: [daq-8idi, hpc]\n")
    lines = error_lines(config)
    assert len(lines) == 3
    assert lines[0].startswith(f"{config}:2:11: error: timezone: unknown timezone 'Nowhere/Land'")
    assert lines[1].startswith(f"{site / 'stations' / '8idi.yaml'}:3:12: error: unknown notify")
    assert lines[2] == (
        f"{station}:2:23: error: unknown location 'hpc' in locations; defined locations: daq-8idi"
    )


def test_relative_config_path_gives_relative_spans(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(site / "stations" / "bad.yaml", "name: B\nlocations: [nowhere]\n")
    monkeypatch.chdir(site)
    assert error_lines(Path("policyd.yaml")) == [
        "stations/bad.yaml:2:13: error: unknown location 'nowhere' in locations; "
        "defined locations: daq-8idi, voyager, hpc, tape"
    ]


# ---------------------------------------------------------------------------
# yamlsource on its own: the rule-file front end uses it with its own models


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    priority: int = 0


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int
    items: list[_Item]


def test_validate_places_errors_inside_lists(tmp_path: Path) -> None:
    path = write(
        tmp_path / "doc.yaml",
        """\
        version: 1
        items:
          - name: a
          - {name: b, priority: high}
          - nmae: c
        """,
    )
    with pytest.raises(DiagnosticError) as caught:
        validate(_Doc, load_yaml(path), path)
    assert [d.render().splitlines()[0] for d in sorted_diagnostics(caught.value.diagnostics)] == [
        f"{path}:4:25: error: items[1].priority: expected a whole number, got text 'high'",
        f"{path}:5:5: error: items[2]: missing required key 'name'",
        f"{path}:5:5: error: unknown key 'nmae' in items[2]; expected one of: name, priority",
    ]
    good = write(tmp_path / "good.yaml", "version: 1\nitems: [{name: on}]\n")
    assert validate(_Doc, load_yaml(good), good).items[0].name == "on"
