"""`send_notification`: desktop (the daemon's `Notification` D-Bus signal), email (SMTP relay from config),
syslog, or the daemon's log.

Message text is data (it often carries detection fields): it is length-bounded, control characters other
than newlines are replaced, and header values (title, recipients) may not contain line breaks, so nothing
can inject mail headers. The SMTP relay sits behind a circuit breaker keyed by host and port.
"""

from __future__ import annotations

import asyncio
import logging
import re
import smtplib
import ssl
import syslog
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from .errors import ActionError, InvalidParams
from .params import Params
from .services import ActionServices

log = logging.getLogger("sdd.notify")

CHANNELS = ("desktop", "email", "syslog", "log")
URGENCIES = ("low", "normal", "critical")
_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_ADDR = re.compile(r"[^@\s<>\"',;:()\[\]\\]+@[^@\s<>\"',;:()\[\]\\]+")
_SYSLOG_PRIORITY = {"low": syslog.LOG_INFO, "normal": syslog.LOG_NOTICE, "critical": syslog.LOG_CRIT}


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


def _send_mail(services: ActionServices, msg: EmailMessage, recipients: list[str]) -> None:
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
    msg = EmailMessage()
    msg["From"] = cfg.sender
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = title
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain="sdd.localhost")
    if urgency == "critical":
        msg["X-Priority"] = "1"
    msg.set_content(body)
    services.guards.before_call(key)
    try:
        await asyncio.to_thread(_send_mail, services, msg, recipients)
    except (TimeoutError, smtplib.SMTPException, OSError) as exc:
        services.guards.record_failure(key, f"{type(exc).__name__}: {exc}")
        raise ActionError(f"send_notification: email via {cfg.host}:{cfg.port} failed: {exc}",
                          retryable=not _permanent(exc)) from exc
    services.guards.record_success(key)
    return {"channel": "email", "recipients": recipients, "relay": f"{cfg.host}:{cfg.port}",
            "message_id": msg["Message-ID"]}


async def send_notification(services: ActionServices, *, context: dict[str, Any] | None = None,
                            **params: Any) -> dict[str, Any]:
    p = Params("send_notification", params)
    body = _clean(p.req_string("message", max_len=1 << 20), 64 * 1024)
    title = _clean(p.string("title", default="sdd", max_len=4096) or "sdd", 200).replace("\n", " ").strip()
    urgency = p.string("urgency", default="normal", choices=URGENCIES) or "normal"
    recipients = _recipients(p)
    channels = _channels(p, recipients, services)
    delivered: list[dict[str, Any]] = []
    for channel in channels:
        if channel == "desktop":
            if services.notify is None:
                raise ActionError("send_notification: no desktop notification sink (the daemon has no bus "
                                  "bridge); use channel: log or syslog", retryable=False)
            services.notify(title, body, urgency)
            delivered.append({"channel": "desktop"})
        elif channel == "email":
            delivered.append(await _email(services, title, body, recipients, urgency))
        elif channel == "syslog":
            line = f"{title}: {body}".replace("\n", " | ")
            await asyncio.to_thread(_syslog, _SYSLOG_PRIORITY[urgency], line)
            delivered.append({"channel": "syslog"})
        else:
            level = logging.WARNING if urgency == "critical" else logging.INFO
            log.log(level, "%s: %s", title, body)
            delivered.append({"channel": "log"})
    return {"sent": True, "title": title, "urgency": urgency, "channels": [d["channel"] for d in delivered],
            "deliveries": delivered}


def _syslog(priority: int, line: str) -> None:
    syslog.openlog("sdd", syslog.LOG_PID, syslog.LOG_DAEMON)
    syslog.syslog(priority, line[:8192])
