"""`send_notification`: desktop (the daemon's `Notification` D-Bus signal), email (SMTP relay from config),
syslog, or the daemon's log — and, per channel, whether it was delivered.

Message text is data (it often carries detection fields): it is length-bounded, control characters other
than newlines are replaced, and header values (title, recipients) may not contain line breaks, so nothing
can inject mail headers. The SMTP relay sits behind a circuit breaker keyed by host and port.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import smtplib
import socket
import ssl
import syslog
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from . import outbound, runinfo
from .errors import ActionError, InvalidParams
from .params import Params
from .services import ActionServices

log = logging.getLogger("sdd.notify")

CHANNELS = ("desktop", "email", "syslog", "log")
URGENCIES = ("low", "normal", "critical")
_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Every character str.splitlines() ends a line at: the email package refuses a header holding any of them
# (ValueError), so a file named with U+2028 in a title failed the mail that was to tell of it.
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_ADDR = re.compile(r"[^@\s<>\"',;:()\[\]\\]+@[^@\s<>\"',;:()\[\]\\]+")
_SYSLOG_PRIORITY = {"low": syslog.LOG_INFO, "normal": syslog.LOG_NOTICE, "critical": syslog.LOG_CRIT}
SYSLOG_SOCKET = "/dev/log"  # where syslog(3) sends (journald and rsyslog listen here)


def _clean(text: str, limit: int) -> str:
    return _CTRL.sub(" ", text)[:limit]


def _recipients(p: Params) -> list[str]:
    raw = p.raw.get("recipient")
    if raw is None:
        return []
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items) or len(items) > 100:
        raise p.fail("recipient", "expected an email address or a list of up to 100 addresses")
    out = []
    for item in items:
        for addr in (a.strip() for a in item.split(",")):
            if not addr:
                continue
            if not _ADDR.fullmatch(addr) or len(addr) > 254:
                raise p.fail("recipient", f"{addr!r:.80} is not a plain email address")
            out.append(addr)
    return out


def _channels(p: Params, recipients: list[str], services: ActionServices) -> list[str]:
    raw = p.raw.get("channel")
    if raw is None:
        # The original engine's send_notification(recipient, message) meant email.
        if recipients:
            return ["email"]
        return ["desktop"] if services.notify is not None else ["log"]
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise p.fail("channel", f"expected one of {', '.join(CHANNELS)} or a list of them")
    for item in items:
        if item not in CHANNELS:
            raise p.fail("channel", f"expected one of {', '.join(CHANNELS)}, got {item!r:.40}")
    return list(dict.fromkeys(items))


def _message(services: ActionServices, title: str, body: str, recipients: list[str], urgency: str,
             message_id: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = services.config.smtp.sender
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = title
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = message_id
    if urgency == "critical":
        msg["X-Priority"] = "1"
    msg.set_content(body)
    return msg


def _send_mail(services: ActionServices, title: str, body: str, recipients: list[str], urgency: str,
               message_id: str) -> None:
    """Build the message and send it, in a worker thread: the email package's header parsing costs about
    2 ms a message, which on the event loop held back every other run (a third of the loop's busy time in
    a 200-file outbreak, each run mailing root)."""
    msg = _message(services, title, body, recipients, urgency, message_id)
    cfg = services.config.smtp
    password = ""
    if cfg.username and cfg.password_file:
        with open(cfg.password_file, encoding="utf-8") as fh:
            password = fh.read().strip()
    with smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout, local_hostname="localhost") as smtp:
        if cfg.starttls:
            smtp.starttls(context=ssl.create_default_context())
        if cfg.username:
            smtp.login(cfg.username, password)
        refused = smtp.send_message(msg, from_addr=cfg.sender, to_addrs=recipients)
    if refused:
        raise smtplib.SMTPRecipientsRefused(refused)


def _permanent(exc: Exception) -> bool:
    """SMTP 5xx replies will not change on retry; 4xx, timeouts and connection errors may."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(code >= 500 for code, _ in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code >= 500
    return isinstance(exc, smtplib.SMTPNotSupportedError)


async def _email(services: ActionServices, title: str, body: str, recipients: list[str],
                 urgency: str) -> dict[str, Any]:
    if not recipients:
        raise InvalidParams("send_notification: parameter 'recipient': required for the email channel")
    cfg = services.config.smtp
    key = f"smtp:{cfg.host}:{cfg.port}"
    message_id = make_msgid(domain="sdd.localhost")
    try:
        await outbound.call(_send_mail, services, title, body, recipients, urgency, message_id,
                            on_outbound=services.on_outbound, before=lambda: services.guards.before_call(key))
    except (TimeoutError, smtplib.SMTPException, OSError) as exc:
        services.guards.record_failure(key, f"{type(exc).__name__}: {exc}")
        raise ActionError(f"send_notification: email via {cfg.host}:{cfg.port} failed: {exc}",
                          retryable=not _permanent(exc)) from exc
    services.guards.record_success(key)
    return {"channel": "email", "recipients": recipients, "relay": f"{cfg.host}:{cfg.port}",
            "message_id": message_id}


async def send_notification(services: ActionServices, *, context: dict[str, Any] | None = None,
                            **params: Any) -> dict[str, Any]:
    """Delivers on every channel asked for. The result lists what was delivered (`channels`, with details in
    `deliveries`); `sent` is true only when every channel was.

    A channel that could not deliver fails the step, naming what was and was not delivered; a retry of the
    step does not repeat the channels an earlier attempt delivered. The one exception is the `log` channel
    below the daemon's log level: suppressed by configuration, it is listed in `suppressed` (and `sent` is
    false) without failing the step."""
    p = Params("send_notification", params)
    body = _clean(p.req_string("message", max_len=1 << 20), 64 * 1024)
    title = _LINE_BREAKS.sub(" ", _clean(p.string("title", default="sdd", max_len=4096) or "sdd", 200)).strip()
    urgency = p.string("urgency", default="normal", choices=URGENCIES) or "normal"
    recipients = _recipients(p)
    channels = _channels(p, recipients, services)
    if len(channels) == 1:  # the common case: its outcome is the step's, and no earlier attempt delivered any
        outcome = (_deliver_now(services, channels[0], title, body, urgency)
                   or await _deliver_later(services, channels[0], title, body, recipients, urgency))
        return _result(title, urgency, [] if outcome is _SUPPRESSED else [outcome], channels)
    _, _, key = runinfo.ids()
    earlier = services.delivered(key) if key else set()
    deliveries: list[dict[str, Any]] = []
    failures: list[tuple[str, ActionError]] = []
    for channel in channels:
        if channel in earlier:
            deliveries.append({"channel": channel, "by_earlier_attempt": True})
            continue
        try:
            outcome = (_deliver_now(services, channel, title, body, urgency)
                       or await _deliver_later(services, channel, title, body, recipients, urgency))
        except ActionError as exc:
            failures.append((channel, exc))
            continue
        if outcome is not _SUPPRESSED:
            deliveries.append(outcome)
            if key:
                services.remember_delivery(key, channel)
    if failures:
        done = [d["channel"] for d in deliveries]
        what = "; ".join(f"not delivered via {c}: {_reason(e)}" for c, e in failures)
        if len(failures) == 1 and not done:
            raise failures[0][1]  # one failure and nothing delivered: its own error (and retryability) as it is
        raise ActionError(f"send_notification: {what}" + (f" (delivered via {', '.join(done)})" if done else ""),
                          retryable=any(e.retryable for _, e in failures))
    return _result(title, urgency, deliveries, channels)


# What `_deliver_now` returns for a `log` notification below the log level: not delivered, by configuration.
_SUPPRESSED: dict[str, Any] = {"channel": "log", "suppressed": True}


def _result(title: str, urgency: str, deliveries: list[dict[str, Any]], asked: list[str]) -> dict[str, Any]:
    delivered = [d["channel"] for d in deliveries]
    out = {"sent": len(delivered) == len(asked), "title": title, "urgency": urgency, "channels": delivered,
           "deliveries": deliveries}
    if len(delivered) != len(asked):
        out["suppressed"] = [c for c in asked if c not in delivered]  # below the log level (see the docstring)
    return out


def _reason(exc: ActionError) -> str:
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith("send_notification: ") else text


def _deliver_now(services: ActionServices, channel: str, title: str, body: str,
                 urgency: str) -> dict[str, Any] | None:
    """The channels that deliver without waiting (desktop, log); None for the others."""
    if channel == "desktop":
        if services.notify is None:
            raise ActionError("send_notification: no desktop notification sink (the daemon has no bus "
                              "bridge); use channel: log or syslog", retryable=False)
        why_not = services.notify(title, body, urgency)
        if why_not:
            raise ActionError(f"send_notification: desktop notification not delivered: {why_not}", retryable=False)
        return {"channel": "desktop"}
    if channel != "log":
        return None
    level = logging.WARNING if urgency == "critical" else logging.INFO
    if not log.isEnabledFor(level):
        return _SUPPRESSED
    log.log(level, "%s: %s", title, body, extra=services.log_fields(channel="log"))
    return {"channel": "log"}


async def _deliver_later(services: ActionServices, channel: str, title: str, body: str, recipients: list[str],
                         urgency: str) -> dict[str, Any]:
    if channel == "email":
        return await _email(services, title, body, recipients, urgency)
    line = f"{title}: {body}".replace("\n", " | ")
    try:
        await asyncio.to_thread(_syslog, _SYSLOG_PRIORITY[urgency], line)
    except OSError as exc:
        raise ActionError(f"send_notification: syslog at {SYSLOG_SOCKET} did not take it: "
                          f"{exc.strerror or exc}", retryable=False) from None
    return {"channel": "syslog"}


def _syslog(priority: int, line: str) -> None:
    """One RFC 3164 message on the local syslog socket, sent (or refused) for real: the C library's syslog()
    drops a message silently when nothing listens, and a result must not claim a delivery that did not
    happen."""
    message = (f"<{syslog.LOG_DAEMON | priority}>{time.strftime('%b %e %H:%M:%S')} sdd[{os.getpid()}]: "
               f"{line[:8192]}").encode("utf-8", "replace")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(2.0)
        sock.sendto(message, SYSLOG_SOCKET)
