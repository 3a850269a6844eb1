"""Notification channels: email, webhook and log, as the site config's `notify:` names them.

A notification is never allowed to stop an apply: the catalog work is done by the time
alarms and notices go out, and a mail relay that is down must not undo or crash it.
So `Notifier.send` returns an `Outcome` instead of raising; the caller records it in
the ledger and reports it, and whatever depended on it (a notice's deletes, an alarm's
re-notification) is tried again by the next apply.

Credentials stay out of every message, log line and ledger event: the SMTP password
is read from `smtp.password_file` only when logging in, and a webhook is named by its
channel, never by its URL (chat webhook URLs carry their secret in the path).
"""

from __future__ import annotations

import http.client
import logging
import smtplib
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, Final

import orjson

from policyd.stations.config import NotifyChannel, SiteConfig, Smtp

log = logging.getLogger("policyd.notify")

#: Seconds to wait for a webhook or a mail relay: long enough for a slow relay, short
#: enough that a dead one does not hold an apply (and its catalog lock) for minutes.
WEBHOOK_TIMEOUT: Final = 10.0
SMTP_TIMEOUT: Final = 30.0

#: What a channel can fail with: network, TLS, SMTP, HTTP and file errors (all OSError
#: but for http.client's protocol errors), and the configuration problems raised here.
_FAILURES: Final = (OSError, http.client.HTTPException, UnicodeError, ValueError)


class ChannelError(ValueError):
    """A channel that cannot be used as configured (no `smtp:` section, no password)."""


@dataclass(frozen=True)
class Message:
    """One notification. `subject` is one self-contained line (mail subject, log line,
    chat text head); `body` adds the details for people; `data` holds the same facts
    as JSON for machines reading a webhook."""

    subject: str
    body: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What happened to one message on one channel; `error` is safe to log."""

    channel: str
    kind: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook that answers 3xx did not take the message: urllib would otherwise
    follow a 301/302 with a GET and drop the body, and call that success."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Notifier:
    """Sends messages to the site's channels. One per apply: a channel that failed is
    not tried again in the same apply, so a dead relay costs one timeout, not one per
    notice."""

    def __init__(
        self,
        config: SiteConfig,
        webhook_timeout: float = WEBHOOK_TIMEOUT,
        smtp_timeout: float = SMTP_TIMEOUT,
    ) -> None:
        self.config = config
        self.webhook_timeout = webhook_timeout
        self.smtp_timeout = smtp_timeout
        self._failed: dict[str, str] = {}
        self._opener = urllib.request.build_opener(_NoRedirect)

    def send(self, channel: str, message: Message) -> Outcome:
        """Deliver `message` on `channel`; never raises for a delivery problem."""
        spec = self.config.notify.get(channel)
        if spec is None:
            return Outcome(channel, "unknown", f"no notify channel {channel!r} in the site config")
        if channel in self._failed:
            return Outcome(
                channel,
                spec.kind,
                f"not tried: it failed earlier in this apply ({self._failed[channel]})",
            )
        try:
            self._deliver(spec, message)
        except _FAILURES as exc:
            error = describe_error(exc)
            self._failed[channel] = error
            log.warning("notification to %s (%s) failed: %s", channel, spec.kind, error)
            return Outcome(channel, spec.kind, error)
        return Outcome(channel, spec.kind)

    def _deliver(self, spec: NotifyChannel, message: Message) -> None:
        if spec.email is not None:
            self._email(spec.email, message)
        elif spec.webhook is not None:
            self._webhook(spec.webhook, message)
        elif spec.log is not None:
            self._log(spec.log, message)

    def _email(self, recipients: list[str], message: Message) -> None:
        smtp = self.config.smtp
        if smtp is None:
            raise ChannelError("the site config has no smtp: section for email channels")
        mail = EmailMessage()
        mail["Subject"] = f"[policyd {self.config.site}] {message.subject}"
        mail["From"] = sender(smtp)
        mail["To"] = ", ".join(recipients)
        mail["Date"] = formatdate(localtime=False, usegmt=True)
        mail["Message-ID"] = make_msgid(domain=smtp.host)
        mail.set_content(f"{message.subject}\n\n{message.body}\n")
        with smtplib.SMTP(smtp.host, smtp.port, timeout=self.smtp_timeout) as client:
            client.ehlo()
            if smtp.starttls:
                client.starttls(context=ssl.create_default_context())
                client.ehlo()
            if smtp.user is not None:
                client.login(smtp.user, _password(smtp))
            client.send_message(mail)

    def _webhook(self, url: str, message: Message) -> None:
        payload = {
            # `text` is what Slack, Mattermost and most chat hooks show as the message.
            "text": f"{message.subject}\n{message.body}",
            "site": self.config.site,
            "subject": message.subject,
            **message.data,
        }
        request = urllib.request.Request(
            url,
            data=orjson.dumps(payload),
            headers={"Content-Type": "application/json", "User-Agent": "policyd"},
            method="POST",
        )
        # urllib raises HTTPError for every status outside 2xx (3xx too, see _NoRedirect).
        try:
            with self._opener.open(request, timeout=self.webhook_timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            exc.close()
            raise

    def _log(self, target: str, message: Message) -> None:
        line = f"policyd[{self.config.site}] {message.subject}"
        if target == "-":
            # WARNING: policyd's default level, so the channel shows without -v.
            log.warning("%s", line)
            return
        stamp = formatdate(localtime=False, usegmt=True)
        with Path(target).open("a", encoding="utf-8") as handle:
            handle.write(f"{stamp} {line}\n")


def sender(smtp: Smtp) -> str:
    """`smtp.sender`, else policyd at this host: what a cron job's mail would say."""
    return smtp.sender or f"policyd@{socket.gethostname()}"


def _password(smtp: Smtp) -> str:
    if smtp.password_file is None:
        raise ChannelError("smtp.user is set but smtp.password_file is not")
    # The file holds the password alone; an editor's final newline is not part of it.
    return Path(smtp.password_file).read_text(encoding="utf-8").rstrip("\r\n")


def describe_error(exc: BaseException) -> str:
    """A failure in words that name no URL and no secret.

    urllib's errors can carry the request URL (a webhook's secret), so they are
    described by status or reason only.
    """
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}".rstrip()
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return describe_error(reason) if isinstance(reason, BaseException) else str(reason)
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else ""
        return f"SMTP {exc.smtp_code} {text}".strip()
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror if exc.filename is None else f"{exc.strerror}: {exc.filename}"
    return str(exc) or type(exc).__name__
