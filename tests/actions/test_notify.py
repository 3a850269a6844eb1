"""Notifications and the alarm and notice state apply records, against real servers.

The channels are tested against a real SMTP server (aiosmtpd, with STARTTLS and AUTH)
and a real HTTP server on loopback; nothing is mocked. The end-to-end tests run
`policyd plan` and `policyd apply` on a site whose small capacities make an alarm
fire, and a `notify ... before 7 days` release whose deletes wait for their notice,
including an apply killed between two notices and run again.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import http.server
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from click.testing import CliRunner, Result
from sqlalchemy import Engine, select, update

from policyd.actions.apply import apply_plan, load_plan
from policyd.actions.context import ApplyOptions
from policyd.actions.notify import Message, Notifier
from policyd.audit import ledger
from policyd.catalog.schema import alarm_states, notices
from policyd.cli import main
from policyd.planner.run import site_rules
from policyd.site import open_site
from policyd.stations.config import SiteConfig
from tests.catalog.helpers import catalog_replicas, write_jsonl

# ---------------------------------------------------------------------------
# the servers


def free_port() -> int:
    """A loopback port nothing listens on (the OS's pick, released for the server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    message: EmailMessage
    login: str | None

    @property
    def subject(self) -> str:
        # A subject with quotes may be folded right after `Subject:`; readers drop the
        # whitespace that unfolding leaves.
        return str(self.message["Subject"]).strip()

    @property
    def body(self) -> str:
        return str(self.message.get_content()).replace("\r\n", "\n")


@dataclass
class MailHandler:
    """Keeps what the SMTP server received."""

    mails: list[Mail] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, _class=EmailMessage, policy=email.policy.default)
        login = session.auth_data.login.decode() if session.auth_data else None
        self.mails.append(Mail(str(envelope.mail_from), list(envelope.rcpt_tos), message, login))
        return "250 OK"


@dataclass
class SmtpServer:
    port: int
    handler: MailHandler

    @property
    def mails(self) -> list[Mail]:
        return self.handler.mails


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A plain SMTP server on loopback that takes any mail."""
    handler = MailHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield SmtpServer(controller.port, handler)
    finally:
        controller.stop()


def _check_password(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        b"policyd",
        b"s3cret-pw",
    )
    # handled=False: the server answers a refusal itself (535)
    return AuthResult(success=ok, handled=ok, auth_data=data if ok else None)


@pytest.fixture
def tls_smtp_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    """An SMTP server that requires STARTTLS, then AUTH (user policyd, password
    s3cret-pw), with a certificate from a test CA that this process trusts."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    # OpenSSL's default trust store is what ssl.create_default_context() loads; a site
    # with a private CA points SSL_CERT_FILE at it the same way.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    handler = MailHandler()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=server_context,
        require_starttls=True,
        auth_required=True,
        authenticator=_check_password,
    )
    controller.start()
    try:
        yield SmtpServer(controller.port, handler)
    finally:
        controller.stop()


@dataclass
class Hook:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class HookServer(http.server.ThreadingHTTPServer):
    """Takes webhook POSTs and answers each with `status` (a test may change it);
    `on_request`, if set, runs before the answer."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HookHandler)
        self.received: list[Hook] = []
        self.status = 200
        self.on_request: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def bodies(self, event: str | None = None) -> list[dict[str, Any]]:
        return [h.body for h in self.received if event is None or h.body.get("event") == event]


class _HookHandler(http.server.BaseHTTPRequestHandler):
    server: HookServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = orjson.loads(self.rfile.read(length))
        self.server.received.append(Hook(self.path, dict(self.headers), body))
        if self.server.on_request is not None:
            self.server.on_request(len(self.server.received))
        self.send_response(self.server.status)
        if 300 <= self.server.status < 400:
            self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows what matters."""


@pytest.fixture
def hooks() -> Iterator[HookServer]:
    server = HookServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# ---------------------------------------------------------------------------
# the channels


def site_config(tmp_path: Path, **sections: Any) -> SiteConfig:
    data = {"site": "aps", "rules": [], "workflows": [], "stations": [], **sections}
    return SiteConfig.model_validate(data, context={"root": tmp_path})


MESSAGE = Message(
    'alarm quota raised (warning): usage("voyager") > 80% (82.4%)',
    "rule: quota (alarm statement 0)\nvalue: 82.4%",
    {"event": "alarm", "change": "raise", "rule": "quota", "value": "82.4%"},
)


def test_email_goes_through_the_relay(tmp_path: Path, smtp_server: SmtpServer) -> None:
    config = site_config(
        tmp_path,
        notify={"ops": {"email": ["dm-admin@example.org", "oncall@example.org"]}},
        smtp={"host": "127.0.0.1", "port": smtp_server.port, "sender": "policyd@example.org"},
    )
    outcome = Notifier(config).send("ops", MESSAGE)
    assert outcome.ok, outcome.error
    assert outcome.kind == "email"
    [mail] = smtp_server.mails
    assert mail.sender == "policyd@example.org"
    assert mail.recipients == ["dm-admin@example.org", "oncall@example.org"]
    assert mail.subject == f"[policyd aps] {MESSAGE.subject}"
    assert mail.message["To"] == "dm-admin@example.org, oncall@example.org"
    assert mail.body == f"{MESSAGE.subject}\n\n{MESSAGE.body}\n"
    assert mail.login is None


def test_email_starttls_and_login_keep_the_password_out(
    tmp_path: Path, tls_smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "smtp-password"
    secret.write_text("s3cret-pw\n")  # an editor's final newline is not the password's
    smtp = {
        "host": "127.0.0.1",
        "port": tls_smtp_server.port,
        "starttls": True,
        "user": "policyd",
        "password_file": str(secret),
    }
    notify = {"ops": {"email": "dm-admin@example.org"}}
    outcome = Notifier(site_config(tmp_path, notify=notify, smtp=smtp)).send("ops", MESSAGE)
    assert outcome.ok, outcome.error
    [mail] = tls_smtp_server.mails
    assert mail.login == "policyd"
    assert mail.sender == f"policyd@{socket.gethostname()}"

    secret.write_text("wrong-pw-42")
    caplog.set_level(logging.DEBUG)
    refused = Notifier(site_config(tmp_path, notify=notify, smtp=smtp)).send("ops", MESSAGE)
    assert not refused.ok
    assert refused.error is not None and refused.error.startswith("SMTP 535")
    assert "wrong-pw-42" not in refused.error and "wrong-pw-42" not in caplog.text
    assert len(tls_smtp_server.mails) == 1

    # without STARTTLS the server refuses to go on: a failure, not an exception
    plain = {**smtp, "starttls": False}
    outcome = Notifier(site_config(tmp_path, notify=notify, smtp=plain)).send("ops", MESSAGE)
    assert not outcome.ok


def test_email_without_smtp_section_or_password_fails_cleanly(tmp_path: Path) -> None:
    notify = {"ops": {"email": "dm-admin@example.org"}}
    outcome = Notifier(site_config(tmp_path, notify=notify)).send("ops", MESSAGE)
    assert outcome.error == "the site config has no smtp: section for email channels"
    unknown = Notifier(site_config(tmp_path, notify=notify)).send("pager", MESSAGE)
    assert unknown.error == "no notify channel 'pager' in the site config"


def test_webhook_posts_the_message_as_json(tmp_path: Path, hooks: HookServer) -> None:
    config = site_config(tmp_path, notify={"chat": {"webhook": f"{hooks.url}/hooks/8idi"}})
    outcome = Notifier(config).send("chat", MESSAGE)
    assert outcome.ok, outcome.error
    [hook] = hooks.received
    assert hook.path == "/hooks/8idi"
    assert hook.headers["Content-Type"] == "application/json"
    assert hook.body == {
        "text": f"{MESSAGE.subject}\n{MESSAGE.body}",
        "site": "aps",
        "subject": MESSAGE.subject,
        "event": "alarm",
        "change": "raise",
        "rule": "quota",
        "value": "82.4%",
    }


@pytest.mark.parametrize("status", [500, 404, 302])
def test_webhook_answer_outside_2xx_is_a_failure(
    tmp_path: Path, hooks: HookServer, status: int
) -> None:
    hooks.status = status
    url = f"{hooks.url}/hooks/T0K3N-in-the-path"
    notifier = Notifier(site_config(tmp_path, notify={"chat": {"webhook": url}}))
    outcome = notifier.send("chat", MESSAGE)
    assert outcome.error is not None and outcome.error.startswith(f"HTTP {status}")
    assert "T0K3N" not in outcome.error
    # the same apply does not knock again on a channel that failed
    again = notifier.send("chat", MESSAGE)
    assert again.error is not None and again.error.startswith("not tried: it failed earlier")
    assert len(hooks.received) == 1


def test_webhook_server_down_is_a_failure(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    outcome = Notifier(site_config(tmp_path, notify={"chat": {"webhook": url}})).send(
        "chat", MESSAGE
    )
    assert outcome.error == "Connection refused"


def test_log_channel_appends_a_line_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = site_config(
        tmp_path,
        notify={"file": {"log": "alarms.log"}, "ours": {"log": True}, "nowhere": {"log": "no/x"}},
    )
    notifier = Notifier(config)
    assert notifier.send("file", MESSAGE).ok
    assert notifier.send("file", MESSAGE).ok
    lines = (tmp_path / "alarms.log").read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(f" policyd[aps] {MESSAGE.subject}")
    with caplog.at_level(logging.WARNING, logger="policyd.notify"):
        assert notifier.send("ours", MESSAGE).ok
    assert f"policyd[aps] {MESSAGE.subject}" in caplog.messages
    missing = notifier.send("nowhere", MESSAGE)
    assert missing.error == f"No such file or directory: {tmp_path / 'no' / 'x'}"


# ---------------------------------------------------------------------------
# plan -> apply on a site


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


SITE = """\
site: test
catalog: sqlite:///catalog.db
locations:
  daq-8idi: {{url: "file:storage/daq-8idi", tier: daq, capacity: {daq}}}
  voyager: {{url: "file:storage/voyager", tier: disk, capacity: {voyager}}}
  tape: {{url: "file:storage/tape", tier: tape, capacity: 1 MB}}
notify:
  ops: {{email: dm-admin@example.org}}
  hook: {{webhook: "{hook}/hooks/8idi"}}
smtp: {{host: 127.0.0.1, port: {smtp}, sender: policyd@example.org}}
alarms: {{repeat: 1 hour, default_notify: [ops]}}
"""


@dataclass
class Site:
    root: Path
    hooks: HookServer
    smtp: SmtpServer

    def configure(self, daq: str = "100 kB", voyager: str = "10 kB") -> None:
        (self.root / "policyd.yaml").write_text(
            SITE.format(daq=daq, voyager=voyager, hook=self.hooks.url, smtp=self.smtp.port)
        )

    def rules(self, text: str) -> None:
        (self.root / "rules").mkdir(exist_ok=True)
        (self.root / "rules" / "r.policy").write_text(text)

    def files(self, experiment: str, names: list[str], on: list[str], size: int = 3000) -> None:
        """Real files of an old experiment on the locations `on`, verified there."""
        records: list[dict[str, Any]] = [
            {
                "record": "experiment",
                "name": experiment,
                "station": "8IDI",
                "startDate": "2020-01-01T00:00:00Z",
                "endDate": "2020-02-01T00:00:00Z",
            }
        ]
        for name in names:
            data = os.urandom(size)
            path = f"8IDI/{experiment}/{name}"
            for location in on:
                target = self.root / "storage" / location / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            records.append(
                {
                    "record": "file",
                    "experimentName": experiment,
                    "experimentFilePath": name,
                    "fileSize": size,
                    "md5Sum": hashlib.md5(data).hexdigest(),
                    "replicas": [{"location": loc, "path": path, "verified": True} for loc in on],
                }
            )
        source = write_jsonl(self.root / f"{experiment}.jsonl", records)
        result = cli("catalog", "import", "jsonl", source)
        assert result.exit_code == 0, result.output

    def plan(self, name: str, at: datetime | None = None) -> tuple[Path, dict[str, Any]]:
        out = self.root / name
        args = ["plan", "--out", out] + (["--at", at.isoformat()] if at else [])
        result = cli(*args)
        assert result.exit_code == 0, result.output
        return out, orjson.loads(out.read_bytes())

    def apply(self, plan: Path) -> Result:
        result = cli("apply", plan)
        assert result.exit_code == 0, result.output
        return result

    @property
    def engine(self) -> Engine:
        return open_site(self.root / "policyd.yaml").engine


@pytest.fixture
def site(site_dir: Path, hooks: HookServer, smtp_server: SmtpServer) -> Site:
    made = Site(site_dir, hooks, smtp_server)
    made.configure()
    return made


def alarm_rows(engine: Engine) -> dict[tuple[str, int], dict[str, Any]]:
    with engine.connect() as conn:
        return {
            (r["rule"], r["statement"]): dict(r)
            for r in conn.execute(select(alarm_states)).mappings()
        }


def events(engine: Engine, *names: str) -> list[ledger.Event]:
    with engine.connect() as conn:
        return [e for e in ledger.events(conn) if e.event in names]


QUOTA = """\
station 8IDI
rule quota
  alarm when usage("voyager") > 50% notify hook, ops severity warning
"""


def test_alarm_raises_stays_quiet_repeats_and_clears(site: Site) -> None:
    site.rules(QUOTA)
    site.files("Full", ["a.h5", "b.h5"], on=["voyager"])  # 6000 B of 10 kB: 60%
    first, plan = site.plan("p1.json")
    assert [(a["state"], a["value"]) for a in plan["alarms"]] == [("raise", "60.0%")]
    before = time.time()
    site.apply(first)

    row = alarm_rows(site.engine)[("8IDI/quota", 0)]
    assert row["state"] == "raised" and row["value"] == "60.0%"
    assert before <= row["since"] == row["last_notified_at"] <= time.time()
    [hook] = site.hooks.bodies("alarm")
    assert hook["change"] == "raise" and hook["rule"] == "8IDI/quota"
    assert hook["value"] == "60.0%" and hook["severity"] == "warning"
    assert hook["text"].startswith("alarm 8IDI/quota raised (warning): usage(")
    [mail] = site.smtp.mails
    assert mail.recipients == ["dm-admin@example.org"]
    assert mail.subject.startswith("[policyd test] alarm 8IDI/quota raised (warning)")
    notified = events(site.engine, "notified")
    assert sorted(e.payload["channel"] for e in notified) == ["hook", "ops"]
    [raised] = events(site.engine, "alarm")
    assert raised.payload["change"] == "raise" and raised.actor == "apply"

    # still over the mark: nothing to change, and within alarms.repeat nobody is told
    second, plan = site.plan("p2.json")
    assert plan["alarms"] == []
    site.apply(second)
    assert len(site.hooks.received) == 1 and len(site.smtp.mails) == 1

    # an hour later a still-raised alarm is told again
    engine = site.engine
    config = open_site(site.root / "policyd.yaml").config
    third, _ = site.plan("p3.json")
    loaded = load_plan(third.read_bytes(), "p3.json", config)
    later = time.time() + 3601
    report = apply_plan(
        config, engine, site_rules(config), loaded, ApplyOptions(), clock=lambda: later
    )
    assert report.counts["notified"] == 2 and not report.problems
    repeat = site.hooks.bodies("alarm")[-1]
    assert repeat["change"] == "repeat" and repeat["value"] == "60.0%"
    assert repeat["text"].startswith("alarm 8IDI/quota still raised (warning) since ")
    assert alarm_rows(engine)[("8IDI/quota", 0)]["last_notified_at"] == later

    # more disk: the alarm clears, once
    site.configure(voyager="100 kB")
    fourth, plan = site.plan("p4.json")
    assert [(a["state"], a["value"]) for a in plan["alarms"]] == [("clear", "6.0%")]
    site.apply(fourth)
    row = alarm_rows(site.engine)[("8IDI/quota", 0)]
    assert row["state"] == "clear" and row["condition_since"] is None
    cleared = site.hooks.bodies("alarm")[-1]
    assert cleared["change"] == "clear"
    assert cleared["text"].startswith("alarm 8IDI/quota cleared: usage(")
    assert site.plan("p5.json")[1]["alarms"] == []
    assert cli("ledger", "verify").exit_code == 0


def test_alarm_for_waits_for_the_condition_to_hold_that_long(site: Site) -> None:
    site.rules(
        'station 8IDI\nrule quota\n  alarm when usage("voyager") > 50% notify hook for 1 day\n'
    )
    site.files("Full", ["a.h5", "b.h5"], on=["voyager"])
    start = datetime.now(UTC)
    first, plan = site.plan("p1.json")
    assert plan["alarms"] == []
    site.apply(first)
    row = alarm_rows(site.engine)[("8IDI/quota", 0)]
    assert row["state"] == "clear"
    assert start.timestamp() <= row["condition_since"] <= time.time()
    assert site.hooks.received == []
    [seen] = events(site.engine, "alarm_condition")
    assert seen.payload["holds"] is True

    # applying again does not move the start of the condition
    again, _ = site.plan("p2.json")
    site.apply(again)
    assert alarm_rows(site.engine)[("8IDI/quota", 0)]["condition_since"] == row["condition_since"]
    assert site.plan("p3.json", at=start + timedelta(hours=23))[1]["alarms"] == []

    # once it has held a day, the planner raises it and apply records and tells it
    day, plan = site.plan("p4.json", at=start + timedelta(days=1, minutes=1))
    assert [a["state"] for a in plan["alarms"]] == ["raise"]
    site.apply(day)
    row = alarm_rows(site.engine)[("8IDI/quota", 0)]
    assert row["state"] == "raised"
    assert [h["change"] for h in site.hooks.bodies("alarm")] == ["raise"]


def test_condition_that_stops_holding_starts_over(site: Site) -> None:
    site.rules(
        'station 8IDI\nrule quota\n  alarm when usage("voyager") > 50% notify hook for 1 day\n'
    )
    site.files("Full", ["a.h5", "b.h5"], on=["voyager"])
    site.apply(site.plan("p1.json")[0])
    assert alarm_rows(site.engine)[("8IDI/quota", 0)]["condition_since"] is not None
    site.configure(voyager="100 kB")
    site.apply(site.plan("p2.json")[0])
    assert alarm_rows(site.engine)[("8IDI/quota", 0)]["condition_since"] is None
    later = datetime.now(UTC) + timedelta(days=2)
    site.configure()
    assert site.plan("p3.json", at=later)[1]["alarms"] == []


RELEASE = """\
station 8IDI
rule clean
  release files where file.path like "*.h5" from daq-8idi
  notify hook before 7 days
"""


def test_notice_first_then_the_deletes_after_seven_days(site: Site) -> None:
    site.rules(RELEASE)
    site.files("Smith", ["a.h5", "b.h5"], on=["daq-8idi", "voyager"])
    start = datetime.now(UTC)
    first, plan = site.plan("p1.json")
    assert plan["actions"] == []
    [notice] = plan["notices"]
    assert (notice["rule"], notice["experiment"], notice["files"]) == ("8IDI/clean", "Smith", 2)
    assert len(plan["blocked"]) == 2
    site.apply(first)

    [hook] = site.hooks.bodies("notice")
    assert hook["experiment"] == "Smith" and hook["files"] == 2 and hook["bytes"] == 6000
    assert hook["text"].startswith(
        "notice: rule 8IDI/clean will delete 2 files (6 KB) of experiment Smith, not before "
    )
    with site.engine.connect() as conn:
        [row] = conn.execute(select(notices)).mappings()
    assert row["rule"] == "8IDI/clean" and row["channel"] == "hook"
    assert start.timestamp() <= row["sent_at"] <= time.time()
    assert row["payload"]["files"] == 2
    [recorded] = events(site.engine, "notice")
    assert any(recorded.payload["delta"])

    # the same plan again (as after a crash) is accepted and tells nobody twice
    site.apply(first)
    assert len(site.hooks.received) == 1

    # now: the notice is sent but young; the deletes still wait
    waiting, plan = site.plan("p2.json")
    assert plan["notices"] == [] and plan["actions"] == []
    assert all("deletes wait until" in b["reason"] for b in plan["blocked"])
    site.apply(waiting)
    assert len(site.hooks.received) == 1

    # a plan made as of eight days on does not make the deletes run early: apply runs
    # now, and each delete re-checks its notice when it runs
    early, plan = site.plan("p3.json", at=start + timedelta(days=8))
    assert [(a["kind"], a["target"]) for a in plan["actions"]] == [("delete", "daq-8idi")] * 2
    held = cli("apply", early)
    assert held.exit_code == 1
    assert "the notice to hook is not 7 days old yet [refused]" in held.output
    assert (site.root / "storage" / "daq-8idi" / "8IDI" / "Smith" / "a.h5").exists()

    # eight days on (the notice's time moved back as the clock would have), they go through
    with site.engine.begin() as conn:
        conn.execute(update(notices).values(sent_at=notices.c.sent_at - 8 * 86400))
    later, plan = site.plan("p4.json")
    assert [(a["kind"], a["target"]) for a in plan["actions"]] == [("delete", "daq-8idi")] * 2
    site.apply(later)
    left = {k[1:] for k in catalog_replicas(site.engine)}
    assert left == {("a.h5", "voyager"), ("b.h5", "voyager")}
    assert not (site.root / "storage" / "daq-8idi" / "8IDI" / "Smith" / "a.h5").exists()
    assert cli("ledger", "verify").exit_code == 0


def test_failed_notice_is_reported_and_tried_again(site: Site) -> None:
    site.rules(RELEASE)
    site.files("Smith", ["a.h5"], on=["daq-8idi", "voyager"])
    site.hooks.status = 500
    first, _ = site.plan("p1.json")
    result = site.apply(first)
    assert "notification to hook failed: HTTP 500" in result.output
    with site.engine.connect() as conn:
        assert conn.execute(select(notices)).first() is None
    [failed] = events(site.engine, "notify_failed")
    assert failed.payload["about"] == "notice" and failed.payload["error"].startswith("HTTP 500")

    # the next plan holds the notice again; this time it goes out
    site.hooks.status = 204
    second, plan = site.plan("p2.json")
    assert len(plan["notices"]) == 1
    site.apply(second)
    with site.engine.connect() as conn:
        assert len(conn.execute(select(notices)).all()) == 1


def test_apply_killed_between_notices_resumes(site: Site) -> None:
    site.rules(RELEASE)
    site.files("E1", ["a.h5"], on=["daq-8idi", "voyager"])
    site.files("E2", ["b.h5"], on=["daq-8idi", "voyager"])
    first, plan = site.plan("p1.json")
    assert [n["experiment"] for n in plan["notices"]] == ["E1", "E2"]
    victim: dict[str, int] = {}

    def kill_on_second(count: int) -> None:
        if count == 2:  # E1's notice is recorded by now; E2's answer never arrives
            os.kill(victim["pid"], signal.SIGKILL)

    site.hooks.on_request = kill_on_second
    process = subprocess.Popen(
        [sys.executable, "-m", "policyd", "apply", str(first)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    victim["pid"] = process.pid
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == -signal.SIGKILL, output.decode()
    with site.engine.connect() as conn:
        sent = [r.payload["plan_id"] for r in conn.execute(select(notices))]
    assert len(sent) == 1

    site.hooks.on_request = None
    site.apply(first)  # accepted: E1's notice is this plan's own change
    told = [h["experiment"] for h in site.hooks.bodies("notice")]
    assert told == ["E1", "E2", "E2"]  # at least once: E2 was sent when the kill came
    with site.engine.connect() as conn:
        assert len(conn.execute(select(notices)).all()) == 2
    assert cli("ledger", "verify").exit_code == 0


def test_corrupt_replica_goes_to_default_notify(site: Site) -> None:
    site.rules("station 8IDI\nrule fixity\n  verify files on voyager every 1 day\n")
    site.files("Smith", ["a.h5", "b.h5"], on=["voyager"])
    (site.root / "storage" / "voyager" / "8IDI" / "Smith" / "a.h5").write_bytes(b"bit rot")
    later = datetime.now(UTC) + timedelta(days=2)
    plan_file, plan = site.plan("p1.json", at=later)
    assert [a["kind"] for a in plan["actions"]] == ["verify", "verify"]
    site.apply(plan_file)
    [mail] = site.smtp.mails
    assert mail.subject == "[policyd test] policyd alarm: 1 corrupt replicas, 0 suspended actions"
    assert "corrupt replicas:\n  Smith:a.h5 on voyager (verify a1)\n" in mail.body
    [own] = events(site.engine, "policyd_alarm")
    assert own.payload["corrupt"] == 1 and own.payload["channels"] == ["ops"]
    site.apply(plan_file)  # the same plan again: already told
    assert len(site.smtp.mails) == 1


def test_suspended_action_goes_to_default_notify(site: Site) -> None:
    site.rules(
        'station 8IDI\nrule layout\n  place files where true on voyager at "{station}/{file.path}"\n'
    )
    site.files("Smith", ["a.h5"], on=["daq-8idi"])
    (site.root / "storage" / "daq-8idi" / "8IDI" / "Smith" / "a.h5").unlink()
    plan_file, plan = site.plan("p1.json")
    assert [a["kind"] for a in plan["actions"]] == ["copy", "verify"]
    result = cli("apply", plan_file)
    assert result.exit_code == 1  # a suspended action fails the apply, as before
    [mail] = site.smtp.mails
    assert mail.subject == "[policyd test] policyd alarm: 0 corrupt replicas, 1 suspended actions"
    assert "suspended actions:\n  a1 copy Smith:a.h5: " in mail.body
    assert "does not exist" in mail.body
