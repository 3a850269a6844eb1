"""Globus copies and grants, through globus-sdk against its own registered test
responses (`globus_sdk.testing`) and the ones registered here for what the SDK has no
fixture of (task status, successful transfers, skipped errors, events, access rules).
Nothing reaches the network: `responses` answers every request, and the requests the
executors made are read back from it."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
import responses
from click.testing import CliRunner, Result
from globus_sdk import AuthClient, TransferClient
from globus_sdk.testing import (
    RegisteredResponse,
    ResponseList,
    ResponseSet,
    get_last_request,
    load_response,
    load_response_set,
    register_response_set,
)
from sqlalchemy import Engine, create_engine, select, update

from policyd.actions.base import ActionFailed, Step
from policyd.actions.context import ApplyOptions, ExecContext
from policyd.actions.globus import GlobusAcl, GlobusCopy
from policyd.actions.runner import plan_id_of
from policyd.audit import ledger
from policyd.catalog.schema import (
    actions,
    audit_events,
    experiments,
    grants,
)
from policyd.cli import main
from policyd.site import open_site
from tests.catalog.helpers import catalog_replicas, write_jsonl

AT = "2026-12-01T08:00:00Z"
TAPE = "4b8d2c1e-5f3a-4e7b-9c1d-2a6f8e0b3c5d"  # the tape endpoint of examples/aps
DAQ = "0d6f1c3b-7a2e-4c59-9e8d-3b1a5f7c2e64"
TOKEN = "TRANSFER-TOKEN-must-never-be-logged-7f3a"
AUTH_TOKEN = "AUTH-TOKEN-must-never-be-logged-91c2"

CONFIG = """\
site: t
timezone: UTC
catalog: {catalog}
locations:
  daq: {{url: "file:storage/daq", tier: daq, site: beamline, capacity: 1 GB,
        globus: "globus://{daq}/data/daq"}}
  disk: {{url: "file:storage/disk", tier: disk, site: central, capacity: 10 GB}}
  tape: {{url: "globus://{tape}/archive", tier: tape, site: central, capacity: 100 GB}}
retry: {{attempts: 2, backoff: 0.05 s, max_backoff: 0.1 s}}
rules: ["rules/*.policy"]
{extra}"""

ARCHIVE = """\
rule archive-old
  archive files where age(experiment.end) > 90 days
  to tape
"""


@dataclass
class Site:
    root: Path
    catalog: str
    md5s: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.root / "policyd.yaml"

    def engine(self) -> Engine:
        return create_engine(self.catalog)

    def plan(self, name: str = "plan.json") -> Path:
        out = self.root / name
        made = cli("plan", "-c", self.config, "--at", AT, "--out", out)
        assert made.exit_code == 0, made.output
        return out

    def apply(self, plan: Path) -> Result:
        return cli("apply", plan, "-c", self.config)

    def write(self, experiment: dict[str, Any], paths: dict[str, bool | None]) -> None:
        """Files of one experiment on daq, with their bytes, cataloged: path -> whether
        the daq replica is verified (None: the md5 is not in the catalog)."""
        records: list[dict[str, Any]] = [{"record": "experiment", **experiment}]
        for path, verified in paths.items():
            data = random.Random(path).randbytes(1000 + len(path))
            self.md5s[path] = hashlib.md5(data).hexdigest()
            where = self.root / "storage" / "daq" / experiment["name"] / path
            where.parent.mkdir(parents=True, exist_ok=True)
            where.write_bytes(data)
            record: dict[str, Any] = {
                "record": "file",
                "experimentName": experiment["name"],
                "experimentFilePath": path,
                "fileSize": len(data),
                "replicas": [
                    {
                        "location": "daq",
                        "path": f"{experiment['name']}/{path}",
                        "verified": bool(verified),
                    }
                ],
            }
            if verified is not None:
                record["md5Sum"] = self.md5s[path]
            records.append(record)
        source = write_jsonl(self.root / f"{experiment['name']}.jsonl", records)
        imported = cli("catalog", "import", "jsonl", source, "-c", self.config)
        assert imported.exit_code == 0, imported.output


OLD = {"name": "Old", "station": "8IDI", "startDate": "2026-01-05T08:00:00Z"}
OLD["endDate"] = "2026-01-09T20:00:00Z"


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def make_site(root: Path, catalog: str, *, rules: str = ARCHIVE, extra: str = "") -> Site:
    root.mkdir(parents=True)
    (root / "policyd.yaml").write_text(
        CONFIG.format(catalog=catalog, daq=DAQ, tape=TAPE, extra=extra)
    )
    (root / "rules").mkdir()
    (root / "rules" / "site.policy").write_text(rules)
    for name in ("daq", "disk"):
        (root / "storage" / name).mkdir(parents=True)
    return Site(root, catalog)


@pytest.fixture(autouse=True)
def globus(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every HTTP request answered by `responses`; quick polls; the tokens in the env."""
    monkeypatch.setattr(GlobusCopy, "poll_first", 0.01)
    monkeypatch.setattr(GlobusCopy, "poll_max", 0.02)
    monkeypatch.setenv("POLICYD_GLOBUS_TOKEN", TOKEN)
    monkeypatch.setenv("POLICYD_GLOBUS_AUTH_TOKEN", AUTH_TOKEN)
    for name in ("POLICYD_CATALOG", "POLICYD_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    responses.start()
    try:
        yield
    finally:
        responses.stop()
        responses.reset()


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path / "site", f"sqlite:///{tmp_path / 'catalog.db'}")


# ---- the responses of one Globus task


def globus_task(
    name: str,
    task_id: str,
    statuses: list[str],
    *,
    moved: list[str] = (),  # type: ignore[assignment]
    skipped: list[tuple[str, str]] = (),  # type: ignore[assignment]
    events: list[dict[str, Any]] = (),  # type: ignore[assignment]
    fatal: dict[str, str] | None = None,
    submit: bool = False,
    cancel: bool = False,
) -> ResponseSet:
    """Register (and activate) a task's responses: `get_task` answering `statuses` one
    poll after the other, then its successful transfers (destination paths), skipped
    errors ((source path, code)) and event list; with `submit`, its own submission,
    with `cancel`, its cancellation."""
    base = f"/v0.10/task/{task_id}"

    def task(status: str) -> dict[str, Any]:
        return {
            "DATA_TYPE": "task",
            "task_id": task_id,
            "type": "TRANSFER",
            "status": status,
            "nice_status": "Queued" if status == "ACTIVE" else None,
            "fatal_error": fatal if status == "FAILED" else None,
        }

    cases: dict[str, RegisteredResponse | ResponseList] = {
        "get_task": ResponseList(
            *(RegisteredResponse(service="transfer", path=base, json=task(s)) for s in statuses)
        ),
        "successful_transfers": RegisteredResponse(
            service="transfer",
            path=f"{base}/successful_transfers",
            json={
                "DATA_TYPE": "successful_transfers",
                "marker": 0,
                "next_marker": None,
                "DATA": [
                    {"DATA_TYPE": "successful_transfer", "source_path": "", "destination_path": d}
                    for d in moved
                ],
            },
        ),
        "skipped_errors": RegisteredResponse(
            service="transfer",
            path=f"{base}/skipped_errors",
            json={
                "DATA_TYPE": "skipped_errors",
                "marker": 0,
                "next_marker": None,
                "DATA": [
                    {
                        "DATA_TYPE": "skipped_error",
                        "source_path": source,
                        "destination_path": "",
                        "error_code": code,
                        "error_details": "No such file or directory",
                        "is_directory": False,
                    }
                    for source, code in skipped
                ],
            },
        ),
        "event_list": RegisteredResponse(
            service="transfer",
            path=f"{base}/event_list",
            json={
                "DATA_TYPE": "event_list",
                "offset": 0,
                "limit": 1000,
                "total": len(events),
                "DATA": [{"DATA_TYPE": "event", **e} for e in events],
            },
        ),
    }
    if submit:
        cases["submit"] = RegisteredResponse(
            service="transfer",
            method="POST",
            path="/v0.10/transfer",
            json={"DATA_TYPE": "transfer_result", "code": "Accepted", "task_id": task_id},
        )
    if cancel:
        cases["cancel"] = RegisteredResponse(
            service="transfer",
            method="POST",
            path=f"{base}/cancel",
            json={"DATA_TYPE": "result", "code": "Canceled", "message": "cancelled"},
        )
    register_response_set(name, ResponseSet(metadata={"task_id": task_id}, **cases))
    return load_response_set(name)


def sdk_submission() -> str:
    """The SDK's own submission responses; the task id they give."""
    load_response(TransferClient.get_submission_id)
    return str(load_response(TransferClient.submit_transfer).metadata["task_id"])


def calls(method: str, path: str) -> list[Any]:
    return [
        c.request
        for c in responses.calls
        if c.request.method == method and urlsplit(c.request.url).path == path
    ]


def submitted() -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in calls("POST", "/v0.10/transfer")]


def ledger_payloads(engine: Engine, event: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [e.payload for e in ledger.events(conn) if e.event == event]


def states(engine: Engine) -> dict[str, tuple[str, int, str | None]]:
    with engine.connect() as conn:
        return {
            r.file or r.action_id: (r.state, r.attempts, r.last_error)
            for r in conn.execute(select(actions).where(actions.c.kind == "copy"))
        }


# ---- copies


def test_ready_copies_become_one_task_with_checksums_and_end_verified(
    tmp_path: Path, catalog_url: str
) -> None:
    site = make_site(tmp_path / "site", catalog_url)
    paths = {"scan1/a.h5": True, "scan1/b.h5": False, "scan 2/é c.dat": True}
    site.write(OLD, paths)
    plan = site.plan()
    task_id = sdk_submission()
    destinations = [f"/archive/8IDI/Old/{p}" for p in paths]
    globus_task("one-task", task_id, ["ACTIVE", "ACTIVE", "SUCCEEDED"], moved=destinations)

    applied = site.apply(plan)
    assert applied.exit_code == 0, applied.output
    assert "6 done, 0 suspended" in applied.output  # three copies, three verifies

    (body,) = submitted()
    assert body["source_endpoint"] == DAQ and body["destination_endpoint"] == TAPE
    assert body["verify_checksum"] is True and body["sync_level"] == 3  # checksum
    assert body["skip_source_errors"] is True
    assert body["label"] == f"policyd {plan_id_of(plan.read_bytes())} daq to tape"
    assert [
        (i["source_path"], i["destination_path"], i["external_checksum"], i["checksum_algorithm"])
        for i in body["DATA"]
    ] == [(f"/data/daq/Old/{p}", f"/archive/8IDI/Old/{p}", site.md5s[p], "MD5") for p in paths]
    assert len(calls("GET", f"/v0.10/task/{task_id}")) == 3  # polled until it ended
    last = get_last_request()
    assert last is not None and last.headers["Authorization"] == f"Bearer {TOKEN}"

    engine = site.engine()
    reps = catalog_replicas(engine)
    for path in paths:
        tape = reps[("Old", path, "tape")]
        assert (tape["state"], tape["checksum"], tape["path"]) == (
            "verified",
            site.md5s[path],
            f"8IDI/Old/{path}",
        )
        # Globus checked the source against the md5 too
        assert reps[("Old", path, "daq")]["state"] == "verified"
    done = ledger_payloads(engine, "done")
    assert sorted(p["globus_task"] for p in done if p["kind"] == "copy") == [task_id] * 3
    assert {p["note"] for p in done if p["kind"] == "verify"} == {
        "verified by the Globus copy that wrote it"
    }
    engine.dispose()


def test_per_file_outcomes_of_a_task_that_succeeded(site: Site) -> None:
    """Transferred: verified. Skipped at the source: that copy suspended, the others
    go on. Not sent because already in sync: as good as the source."""
    paths = {"a.h5": True, "gone.h5": True, "synced.h5": True, "synced-present.h5": False}
    paths["no-md5.h5"] = None
    site.write(OLD, paths)
    plan = site.plan()
    task_id = sdk_submission()
    globus_task(
        "outcomes",
        task_id,
        ["SUCCEEDED"],
        moved=["/archive/8IDI/Old/a.h5", "/archive/8IDI/Old/no-md5.h5"],
        skipped=[("/data/daq/Old/gone.h5", "FILE_NOT_FOUND")],
    )
    applied = site.apply(plan)
    assert applied.exit_code == 1
    assert "skipped /data/daq/Old/gone.h5 on daq: FILE_NOT_FOUND" in applied.output

    (body,) = submitted()
    items = {i["destination_path"].rsplit("/", 1)[1]: i for i in body["DATA"]}
    assert "external_checksum" not in items["no-md5.h5"]
    assert items["no-md5.h5"]["checksum_algorithm"] == "MD5"
    engine = site.engine()
    got = states(engine)
    assert got["gone.h5"][0] == "suspended"  # final: retrying cannot bring the file back
    assert {f: s[0] for f, s in got.items() if f != "gone.h5"} == dict.fromkeys(
        ("a.h5", "synced.h5", "synced-present.h5", "no-md5.h5"), "done"
    )
    reps = catalog_replicas(engine)
    assert ("Old", "gone.h5", "tape") not in reps
    assert reps[("Old", "a.h5", "tape")]["state"] == "verified"
    assert reps[("Old", "synced.h5", "tape")]["state"] == "verified"  # source verified
    assert reps[("Old", "synced-present.h5", "tape")]["state"] == "present"
    # md5 unknown: Globus compared source and destination only, and reports no checksum
    assert reps[("Old", "no-md5.h5", "tape")]["state"] == "present"
    assert reps[("Old", "no-md5.h5", "tape")]["checksum"] is None
    # and what is only present cannot be verified on tape after the copy: Globus re-reads
    # nothing on its own, so those verifies stop and say why
    with engine.connect() as conn:
        verifies = {
            r.file: (r.state, r.last_error)
            for r in conn.execute(select(actions).where(actions.c.kind == "verify"))
        }
    assert {f for f, (state, _) in verifies.items() if state == "done"} == {"a.h5", "synced.h5"}
    assert verifies["synced-present.h5"][0] == "suspended"
    assert "cannot re-read a replica on tape (globus://)" in verifies["no-md5.h5"][1]
    engine.dispose()


def test_a_failed_task_retries_the_rest_and_a_checksum_mismatch_marks_the_source_corrupt(
    site: Site,
) -> None:
    site.write(OLD, {"a.h5": True, "bad.h5": True, "later.h5": True})
    plan = site.plan()
    first = sdk_submission()
    globus_task(
        "failed",
        first,
        ["ACTIVE", "FAILED"],
        moved=["/archive/8IDI/Old/a.h5"],
        events=[
            {
                "code": "EXTERNAL_CHECKSUM_MISMATCH",
                "is_error": True,
                "description": "checksum mismatch",
                "details": "Error (transfer)\nFile: /data/daq/Old/bad.h5\n",
            },
            {"code": "CONNECTION_RESET", "is_error": True, "description": "reset", "details": ""},
        ],
        fatal={"code": "EXTERNAL_CHECKSUM_MISMATCH", "description": "a checksum did not match"},
    )
    second = "7a1b2c3d-0000-4000-8000-00000000beef"
    globus_task("retry", second, ["SUCCEEDED"], moved=["/archive/8IDI/Old/later.h5"], submit=True)
    applied = site.apply(plan)
    assert applied.exit_code == 1
    assert "source replica is marked corrupt" in applied.output

    first_body, second_body = submitted()
    assert len(first_body["DATA"]) == 3
    assert [i["destination_path"] for i in second_body["DATA"]] == ["/archive/8IDI/Old/later.h5"]
    engine = site.engine()
    got = states(engine)
    assert got["a.h5"][:2] == ("done", 1)
    assert got["bad.h5"][:2] == ("suspended", 1)
    assert got["later.h5"][:2] == ("done", 2)  # failed with the task's error, then retried
    reps = catalog_replicas(engine)
    assert reps[("Old", "bad.h5", "daq")]["state"] == "corrupt"
    assert ("Old", "bad.h5", "tape") not in reps
    assert reps[("Old", "later.h5", "tape")]["state"] == "verified"
    failed = [p["error"] for p in ledger_payloads(engine, "failed")]
    assert failed == [
        f"Globus task {first} failed: EXTERNAL_CHECKSUM_MISMATCH: a checksum did not match"
    ]
    engine.dispose()


def test_a_task_that_does_not_end_is_cancelled_and_retried_then_suspended(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(GlobusCopy, "timeout", 0.05)
    site.write(OLD, {"a.h5": True})
    plan = site.plan()
    task_id = sdk_submission()
    load_response(TransferClient.submit_transfer)  # the retry's submission
    globus_task("stuck", task_id, ["ACTIVE"], cancel=True)
    applied = site.apply(plan)
    assert applied.exit_code == 1
    assert f"Globus task {task_id} had not ended after 0.05 s (ACTIVE: Queued); cancelled" in (
        applied.output
    )
    assert len(submitted()) == 2
    assert len(calls("POST", f"/v0.10/task/{task_id}/cancel")) == 2
    assert states(site.engine())["a.h5"][:2] == ("suspended", 2)


def test_without_credentials_nothing_is_sent_and_the_error_says_what_to_set(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POLICYD_GLOBUS_TOKEN")
    site.write(OLD, {"a.h5": True})
    applied = site.apply(site.plan())
    assert applied.exit_code == 1
    assert "no Globus credentials: set POLICYD_GLOBUS_TOKEN or give the site config" in (
        applied.output
    )
    assert len(responses.calls) == 0
    assert states(site.engine())["a.h5"][:2] == ("suspended", 1)  # a person must act


def test_the_token_is_sent_but_never_logged_nor_in_a_message(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    site.write(OLD, {"a.h5": True})
    plan = site.plan()
    load_response(TransferClient.get_submission_id)
    load_response(TransferClient.submit_transfer, case="failure")  # the SDK's own 4xx
    with caplog.at_level(logging.DEBUG):
        applied = site.apply(plan)
    assert applied.exit_code == 1
    assert "Globus refused the transfer of a batch: " in applied.output
    assert calls("POST", "/v0.10/transfer")[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert caplog.records  # the SDK and policyd did log, at DEBUG too
    assert TOKEN not in caplog.text and TOKEN not in applied.output
    with site.engine().connect() as conn:
        ledger = [r for (r,) in conn.execute(select(audit_events.c.record))]
        errors = [r.last_error for r in conn.execute(select(actions))]
    assert ledger and all(TOKEN not in r for r in ledger)
    assert errors and all(TOKEN not in (e or "") for e in errors)


TOKEN_REFRESH = RegisteredResponse(
    service="auth",
    method="POST",
    path="/v2/oauth2/token",
    json={
        "access_token": "REFRESHED-ACCESS-TOKEN",
        "expires_in": 172800,
        "resource_server": "transfer.api.globus.org",
        "scope": "urn:globus:auth:scope:transfer.api.globus.org:all",
        "token_type": "Bearer",
        "other_tokens": [],
    },
)


def test_a_token_file_with_a_refresh_token_and_the_client_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POLICYD_GLOBUS_TOKEN")
    client_id = "6b2a9a4e-8a79-4c4e-9f33-2f3c7a1b0d11"
    site = make_site(
        tmp_path / "site",
        f"sqlite:///{tmp_path / 'catalog.db'}",
        extra=f"globus: {{token_file: tokens.json, client_id: {client_id}}}\n",
    )
    tokens = {
        "transfer.api.globus.org": {
            "access_token": "EXPIRED-ACCESS-TOKEN",
            "refresh_token": "THE-REFRESH-TOKEN",
            "expires_at_seconds": 1_000_000_000,
        }
    }
    (site.root / "tokens.json").write_text(json.dumps(tokens))
    site.write(OLD, {"a.h5": True})
    plan = site.plan()
    register_response_set("refresh", ResponseSet(token=TOKEN_REFRESH))
    load_response_set("refresh")
    task_id = sdk_submission()
    globus_task("refreshed", task_id, ["SUCCEEDED"], moved=["/archive/8IDI/Old/a.h5"])
    applied = site.apply(plan)
    assert applied.exit_code == 0, applied.output

    (refresh,) = calls("POST", "/v2/oauth2/token")
    form = parse_qs(refresh.body)
    assert form["grant_type"] == ["refresh_token"]
    assert form["refresh_token"] == ["THE-REFRESH-TOKEN"]
    assert form["client_id"] == [client_id]  # a native app sends its id, no secret
    auth = calls("POST", "/v0.10/transfer")[0].headers["Authorization"]
    assert auth == "Bearer REFRESHED-ACCESS-TOKEN"
    assert "THE-REFRESH-TOKEN" not in applied.output


@pytest.mark.parametrize(
    ("extra", "content", "message"),
    [
        (
            "globus: {token_file: tokens.json}\n",
            '{"transfer.api.globus.org": {"access_token": "SECRET-IN-A-BAD-FILE"',
            "the Globus token file {root}/tokens.json is not JSON (line 1, column 68)",
        ),
        (
            "globus: {token_file: tokens.json}\n",
            '{"auth.globus.org": {"access_token": "SECRET-IN-A-BAD-FILE"}}',
            "{root}/tokens.json has no transfer.api.globus.org token",
        ),
        (
            "globus: {token_file: tokens.json}\n",
            '{"transfer.api.globus.org": {"refresh_token": "SECRET-IN-A-BAD-FILE"}}',
            "has a refresh token for transfer.api.globus.org: set globus.client_id",
        ),
        (
            "globus: {token_file: missing.json}\n",
            None,
            "cannot read the Globus token file {root}/missing.json: No such file or directory",
        ),
    ],
)
def test_token_file_problems_are_clear_and_show_no_token(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    extra: str,
    content: str | None,
    message: str,
) -> None:
    monkeypatch.delenv("POLICYD_GLOBUS_TOKEN")
    site = make_site(tmp_path / "site", f"sqlite:///{tmp_path / 'catalog.db'}", extra=extra)
    if content is not None:
        (site.root / "tokens.json").write_text(content)
    site.write(OLD, {"a.h5": True})
    applied = site.apply(site.plan())
    assert applied.exit_code == 1
    assert message.format(root=site.root) in " ".join(applied.output.split())
    assert "SECRET-IN-A-BAD-FILE" not in applied.output
    assert len(responses.calls) == 0


def test_a_copy_from_a_location_globus_cannot_reach_says_how_to_name_its_collection(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path / "site", f"sqlite:///{tmp_path / 'catalog.db'}")
    config = site.config.read_text().replace(f',\n        globus: "globus://{DAQ}/data/daq"', "")
    site.config.write_text(config)
    site.write(OLD, {"a.h5": True})
    applied = site.apply(site.plan())
    assert applied.exit_code == 1
    assert (
        "location daq (file://) is not on Globus: give it `globus: globus://COLLECTION/PATH`"
        in (" ".join(applied.output.split()))
    )
    assert len(responses.calls) == 0


# ---- grants

GRANTS = """\
rule access
  grant read, write to experiment.users on experiment directory at tape
  while experiment.end > now - 365 days
"""
SIROSEN = "ae341a98-d274-11e5-b888-dbae3a8ba545"  # the SDK's get_identities "sirosen" case
RULE_RW = {
    "id": "7001",
    "principal_type": "identity",
    "principal": SIROSEN,
    "path": "/archive/8IDI/Old/",
    "permissions": "rw",
}


def access_rules(name: str, rules: list[dict[str, Any]], **more: RegisteredResponse) -> None:
    """Register and activate the tape collection's access list (and more responses)."""
    listing = RegisteredResponse(
        service="transfer",
        path=f"/v0.10/endpoint/{TAPE}/access_list",
        json={
            "DATA_TYPE": "access_list",
            "length": len(rules),
            "DATA": [{"DATA_TYPE": "access", "role_id": None, **r} for r in rules],
        },
    )
    register_response_set(name, ResponseSet(access_list=listing, **more))
    load_response_set(name)


CREATED = RegisteredResponse(
    service="transfer",
    method="POST",
    path=f"/v0.10/endpoint/{TAPE}/access",
    json={"DATA_TYPE": "access_create_result", "code": "Created", "access_id": 7001},
)


def deleted(rule_id: str) -> RegisteredResponse:
    return RegisteredResponse(
        service="transfer",
        method="DELETE",
        path=f"/v0.10/endpoint/{TAPE}/access/{rule_id}",
        json={"DATA_TYPE": "result", "code": "Deleted", "message": "Access rule deleted"},
    )


@pytest.fixture
def grant_site(tmp_path: Path) -> Site:
    site = make_site(
        tmp_path / "site",
        f"sqlite:///{tmp_path / 'catalog.db'}",
        rules=GRANTS,
        extra='identities: {globus_identity: "{user}@globus.org"}\n',
    )
    experiment = {**OLD, "endDate": "2026-11-01T00:00:00Z", "users": ["sirosen"]}
    site.write(experiment, {"a.h5": True})
    return site


def grant_rows(site: Site) -> set[tuple[str, str, str]]:
    with site.engine().connect() as conn:
        return {(r.principal, r.perms, r.path) for r in conn.execute(select(grants))}


def test_a_grant_adds_a_rule_for_the_users_identity_and_records_it(grant_site: Site) -> None:
    plan = grant_site.plan()
    load_response(AuthClient.get_identities, case="sirosen")
    access_rules("no-rules", [], created=CREATED)
    applied = grant_site.apply(plan)
    assert applied.exit_code == 0, applied.output

    (lookup,) = calls("GET", "/v2/api/identities")
    assert parse_qs(urlsplit(lookup.url).query) == {
        "usernames": ["sirosen@globus.org"],
        "provision": ["true"],
    }
    assert lookup.headers["Authorization"] == f"Bearer {AUTH_TOKEN}"
    (added,) = calls("POST", f"/v0.10/endpoint/{TAPE}/access")
    assert json.loads(added.body) == {
        "DATA_TYPE": "access",
        "principal_type": "identity",
        "principal": SIROSEN,
        "path": "/archive/8IDI/Old/",
        "permissions": "rw",
    }
    assert grant_rows(grant_site) == {("user:sirosen", "read,write", "8IDI/Old")}
    again = cli("plan", "-c", grant_site.config, "--at", AT, "--detailed-exitcode")
    assert again.exit_code == 0 and "No changes." in again.output


def test_a_grant_whose_rule_is_there_adds_nothing(grant_site: Site) -> None:
    plan = grant_site.plan()
    load_response(AuthClient.get_identities, case="sirosen")
    elsewhere = {**RULE_RW, "id": "7002", "permissions": "r", "path": "/archive/8IDI/Other/"}
    access_rules("equal-rule", [elsewhere, RULE_RW])
    applied = grant_site.apply(plan)
    assert applied.exit_code == 0, applied.output
    assert calls("POST", f"/v0.10/endpoint/{TAPE}/access") == []
    assert grant_rows(grant_site) == {("user:sirosen", "read,write", "8IDI/Old")}


def test_a_revoke_deletes_the_rule_policyd_made_and_its_record(grant_site: Site) -> None:
    load_response(AuthClient.get_identities, case="sirosen")
    access_rules("before-grant", [], created=CREATED)
    assert grant_site.apply(grant_site.plan()).exit_code == 0
    others = {**RULE_RW, "id": "7002", "path": "/archive/8IDI/Other/"}
    engine = grant_site.engine()
    with engine.begin() as conn:  # the experiment ended over a year ago: the grant goes
        conn.execute(update(experiments).values(end=1_700_000_000.0))
    plan = grant_site.plan("revoke.json")
    assert [(a["op"], a["path"]) for a in orjson.loads(plan.read_bytes())["actions"]] == [
        ("revoke", "8IDI/Old")
    ]
    responses.reset()
    load_response(AuthClient.get_identities, case="sirosen")
    access_rules("granted", [others, RULE_RW], deleted=deleted("7001"))
    applied = grant_site.apply(plan)
    assert applied.exit_code == 0, applied.output
    assert len(calls("DELETE", f"/v0.10/endpoint/{TAPE}/access/7001")) == 1
    assert [c.request.method for c in responses.calls].count("DELETE") == 1
    assert grant_rows(grant_site) == set()


def test_a_revoke_leaves_a_rule_someone_changed(
    grant_site: Site,
) -> None:
    load_response(AuthClient.get_identities, case="sirosen")
    access_rules("before-grant", [], created=CREATED)
    assert grant_site.apply(grant_site.plan()).exit_code == 0
    engine = grant_site.engine()
    with engine.begin() as conn:
        conn.execute(update(experiments).values(end=1_700_000_000.0))
    plan = grant_site.plan("revoke.json")
    responses.reset()
    load_response(AuthClient.get_identities, case="sirosen")
    access_rules("changed", [{**RULE_RW, "permissions": "r"}])
    applied = grant_site.apply(plan)
    assert applied.exit_code == 1
    assert "gives r, not the rw policyd granted; it is left as it is" in " ".join(
        applied.output.split()
    )
    assert [c.request.method for c in responses.calls].count("DELETE") == 0
    assert grant_rows(grant_site) == {("user:sirosen", "read,write", "8IDI/Old")}


def test_a_revoke_of_a_grant_policyd_has_no_record_of_is_refused(grant_site: Site) -> None:
    """The planner revokes only recorded grants; the executor checks again when it
    runs, as a record may go between plan and apply (another worker, a person)."""
    site = open_site(grant_site.config)
    ctx = ExecContext(site.config, site.engine, "p-test", ApplyOptions())
    step = Step(
        "p-test",
        {
            "id": "a1",
            "kind": "acl",
            "op": "revoke",
            "rule": "access",
            "experiment": "Old",
            "target": "tape",
            "path": "8IDI/Old",
            "principal": "user:sirosen",
            "perms": ["read", "write"],
        },
    )
    load_response(AuthClient.get_identities, case="sirosen")
    access_rules("someone-elses", [{**RULE_RW, "id": "9001"}])
    with pytest.raises(ActionFailed, match="policyd recorded no grant to user:sirosen") as info:
        GlobusAcl(ctx).execute(step)
    assert info.value.refused
    assert [c.request.method for c in responses.calls].count("DELETE") == 0
    site.engine.dispose()


@pytest.mark.parametrize(
    ("grant", "extra", "message", "lookups"),
    [
        (
            'read to group "8idi-staff"',
            'identities: {globus_identity: "{user}@globus.org"}',
            "Globus access rules name a group by its Globus group id",
            0,
        ),
        (
            'read to user "nobody"',
            'identities: {globus_identity: "{user}@globus.org"}',
            "Globus Auth has no identity nobody@globus.org",
            1,
        ),
        (
            'read to user "sirosen"',
            "",
            "identities.globus_identity is not set: grants on Globus need it",
            0,
        ),
        (
            'write to user "sirosen"',
            'identities: {globus_identity: "{user}@globus.org"}',
            "Globus cannot grant write without read: grant read, write",
            0,
        ),
    ],
)
def test_grants_globus_cannot_express_fail_clearly(
    tmp_path: Path, grant: str, extra: str, message: str, lookups: int
) -> None:
    site = make_site(
        tmp_path / "site",
        f"sqlite:///{tmp_path / 'catalog.db'}",
        rules=f"rule access\n  grant {grant} on experiment directory at tape\n",
        extra=extra + "\n",
    )
    site.write(OLD, {"a.h5": True})
    load_response(AuthClient.get_identities, case="empty")
    access_rules("none", [])
    applied = site.apply(site.plan())
    assert applied.exit_code == 1
    assert message in " ".join(applied.output.split())
    assert len(calls("GET", "/v2/api/identities")) == lookups
    assert calls("POST", f"/v0.10/endpoint/{TAPE}/access") == []


def test_changed_permissions_update_policyd_s_rule_but_not_someone_else_s(
    grant_site: Site,
) -> None:
    load_response(AuthClient.get_identities, case="sirosen")
    access_rules("before-grant", [], created=CREATED)
    assert grant_site.apply(grant_site.plan()).exit_code == 0
    # the rule now grants read only: policyd's rule gets the new permissions
    rules = grant_site.root / "rules" / "site.policy"
    rules.write_text(GRANTS.replace("read, write", "read"))
    plan = grant_site.plan("read.json")
    responses.reset()
    load_response(AuthClient.get_identities, case="sirosen")
    updated = RegisteredResponse(
        service="transfer",
        method="PUT",
        path=f"/v0.10/endpoint/{TAPE}/access/7001",
        json={"DATA_TYPE": "result", "code": "Updated", "message": "Access rule updated"},
    )
    access_rules("recorded", [RULE_RW], updated=updated)
    applied = grant_site.apply(plan)
    assert applied.exit_code == 0, applied.output
    (put,) = calls("PUT", f"/v0.10/endpoint/{TAPE}/access/7001")
    assert json.loads(put.body) == {"permissions": "r"}
    assert calls("POST", f"/v0.10/endpoint/{TAPE}/access") == []
    assert grant_rows(grant_site) == {("user:sirosen", "read", "8IDI/Old")}


def test_a_grant_leaves_a_different_rule_policyd_did_not_make(grant_site: Site) -> None:
    plan = grant_site.plan()
    load_response(AuthClient.get_identities, case="sirosen")
    access_rules("someone-elses", [{**RULE_RW, "permissions": "r"}])
    applied = grant_site.apply(plan)
    assert applied.exit_code == 1
    assert "has a rule giving user:sirosen r on /archive/8IDI/Old/ that policyd did not make" in (
        " ".join(applied.output.split())
    )
    assert [c.request.method for c in responses.calls if c.request.method != "GET"] == []
    assert grant_rows(grant_site) == set()


def test_a_group_named_by_its_id_is_a_group_rule(tmp_path: Path) -> None:
    group = "c0ffee00-1d2e-4f5a-8b6c-7d8e9f0a1b2c"
    site = make_site(
        tmp_path / "site",
        f"sqlite:///{tmp_path / 'catalog.db'}",
        rules=f'rule access\n  grant read to group "{group}" on experiment directory at tape\n',
    )
    site.write(OLD, {"a.h5": True})
    access_rules("none", [], created=CREATED)
    assert site.apply(site.plan()).exit_code == 0
    (added,) = calls("POST", f"/v0.10/endpoint/{TAPE}/access")
    body = json.loads(added.body)
    assert (body["principal_type"], body["principal"], body["permissions"]) == (
        "group",
        group,
        "r",
    )
    assert grant_rows(site) == {(f"group:{group}", "read", "8IDI/Old")}


# ---- end to end

SITE_RULES = """\
rule layout
  place files where file.ext == "h5"
  on disk
  at "{station}/{experiment.start:%Y-%m}/{experiment.name}/{file.path}"

rule archive-old
  archive files where age(experiment.end) > 90 days
  to tape
  then release from daq

rule access
  grant read to experiment.users on experiment directory at tape
"""


def test_plan_then_apply_archives_to_a_globus_tape_and_releases_the_daq(
    tmp_path: Path, catalog_url: str
) -> None:
    """The tape of examples/aps (globus://ENDPOINT/archive): local copies to disk,
    one Globus task to tape, the DAQ released once both are verified, a grant on tape;
    then nothing left to plan."""
    site = make_site(
        tmp_path / "site",
        catalog_url,
        rules=SITE_RULES,
        extra='identities: {globus_identity: "{user}@anl.gov"}\n',
    )
    paths = {"scan1/a.h5": True, "scan1/b.h5": True, "raw/notes.dat": True}
    site.write({**OLD, "users": ["alice"]}, paths)
    plan_file = site.plan()
    plan = orjson.loads(plan_file.read_bytes())
    kinds = [a["kind"] for a in plan["actions"]]
    assert (kinds.count("copy"), kinds.count("delete"), kinds.count("acl")) == (5, 3, 1)

    tape_paths = {
        "scan1/a.h5": "8IDI/2026-01/Old/scan1/a.h5",
        "scan1/b.h5": "8IDI/2026-01/Old/scan1/b.h5",
        "raw/notes.dat": "8IDI/Old/raw/notes.dat",
    }
    task_id = sdk_submission()
    globus_task(
        "archive",
        task_id,
        ["ACTIVE", "SUCCEEDED"],
        moved=[f"/archive/{p}" for p in tape_paths.values()],
    )
    alice = "5a1b0c3d-9e8f-4a7b-8c6d-5e4f3a2b1c0d"
    lookup = RegisteredResponse(
        service="auth",
        path="/v2/api/identities",
        json={"identities": [{"id": alice, "username": "alice@anl.gov", "status": "unused"}]},
        match=[
            responses.matchers.query_param_matcher(
                {"usernames": "alice@anl.gov", "provision": "true"}
            )
        ],
    )
    access_rules("e2e-acl", [], created=CREATED, lookup=lookup)

    applied = site.apply(plan_file)
    assert applied.exit_code == 0, applied.output
    assert f"{len(plan['actions'])} done, 0 suspended, 0 refused, 0 waiting" in applied.output

    (body,) = submitted()
    assert {
        (i["source_path"], i["destination_path"], i["external_checksum"]) for i in body["DATA"]
    } == {(f"/data/daq/Old/{p}", f"/archive/{tape_paths[p]}", site.md5s[p]) for p in paths}
    (added,) = calls("POST", f"/v0.10/endpoint/{TAPE}/access")
    assert json.loads(added.body)["principal"] == alice
    assert json.loads(added.body)["path"] == "/archive/8IDI/Old/"

    engine = site.engine()
    reps = catalog_replicas(engine)
    assert {(k[1], k[2]) for k in reps} == {(p, "tape") for p in paths} | {
        ("scan1/a.h5", "disk"),
        ("scan1/b.h5", "disk"),
    }
    assert all(r["state"] == "verified" for r in reps.values())
    assert {r["checksum"] for k, r in reps.items() if k[2] == "tape"} == set(site.md5s.values())
    assert not any((site.root / "storage" / "daq" / "Old").rglob("*.*"))  # released
    for path in ("scan1/a.h5", "scan1/b.h5"):
        disk = site.root / "storage" / "disk" / tape_paths[path]
        assert hashlib.md5(disk.read_bytes()).hexdigest() == site.md5s[path]
    assert grant_rows(site) == {("user:alice", "read", "8IDI/Old")}

    again = cli("plan", "-c", site.config, "--at", AT, "--detailed-exitcode")
    assert again.exit_code == 0, again.output
    assert "No changes." in again.output
    engine.dispose()
