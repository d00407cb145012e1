"""send_notification on real sinks: aiosmtpd on 127.0.0.1, the desktop callback, syslog and the log."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from email import message_from_bytes

import pytest
from aiosmtpd.controller import Controller

from sdd.actions import BreakerOpen
from sdd.config import SmtpConfig
from sdd.engine import ActionError, InvalidParams

from .conftest import Env
from .servers import Inbox, free_port


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


async def test_email_reaches_the_relay(env: Env, smtp) -> None:
    inbox, port = smtp
    env.configure(smtp=SmtpConfig(host="127.0.0.1", port=port, sender="sdd@test", timeout=5))
    res = await env.call("send_notification", recipient="root@localhost", title="Threat\r\nBcc: evil@x",
                         message="Found <Win.Trojan> in /home/a", urgency="critical")
    assert res["channels"] == ["email"]
    [env_] = inbox.messages
    assert env_.rcpt_tos == ["root@localhost"]
    msg = message_from_bytes(env_.content)
    assert msg["Subject"] == "Threat  Bcc: evil@x"  # the line break is gone: no header injection
    assert msg["Bcc"] is None
    assert "Found <Win.Trojan>" in msg.get_payload()


@pytest.mark.parametrize("brk", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"])
async def test_every_line_break_python_knows_is_gone_from_the_subject_and_the_mail_goes(
        env: Env, smtp, brk: str) -> None:
    # The email package refuses a header holding any line break str.splitlines() knows (ValueError): a file
    # named with U+2028, say, in the title failed the mail, and no one was told of that detection.
    inbox, port = smtp
    env.configure(smtp=SmtpConfig(host="127.0.0.1", port=port, sender="sdd@test", timeout=5))
    res = await env.call("send_notification", recipient="root@localhost", title=f"Threat in /tmp/x{brk}Bcc: evil@x",
                         message=f"Found in /tmp/x{brk}.exe", urgency="critical")
    assert res["channels"] == ["email"]
    [env_] = inbox.messages
    msg = message_from_bytes(env_.content)
    assert msg["Subject"] == "Threat in /tmp/x Bcc: evil@x" and msg["Bcc"] is None


async def test_rejected_recipient_is_a_permanent_failure(env: Env, smtp) -> None:
    _, port = smtp
    env.configure(smtp=SmtpConfig(host="127.0.0.1", port=port, timeout=5))
    with pytest.raises(ActionError) as err:
        await env.call("send_notification", recipient="nobody@localhost", message="x")
    assert err.value.retryable is False


@pytest.mark.parametrize("recipient", ["root@localhost\r\nRCPT TO:<x@y>", "not-an-address", 5, ["a@b", 3]])
async def test_bad_recipients_are_refused(env: Env, smtp, recipient: object) -> None:
    inbox, port = smtp
    env.configure(smtp=SmtpConfig(host="127.0.0.1", port=port, timeout=5))
    with pytest.raises(InvalidParams, match="recipient"):
        await env.call("send_notification", recipient=recipient, message="x", channel="email")
    assert inbox.messages == []


async def test_dead_relay_opens_the_breaker(env: Env) -> None:
    port = free_port()  # nothing listens here
    env.configure(smtp=SmtpConfig(host="127.0.0.1", port=port, timeout=2), breaker_failures=2)
    for _ in range(2):
        with pytest.raises(ActionError) as err:
            await env.call("send_notification", recipient="a@b.c", message="x")
        assert err.value.retryable is True
    with pytest.raises(BreakerOpen, match="circuit breaker for smtp:127.0.0.1"):
        await env.call("send_notification", recipient="a@b.c", message="x")
    status = env.services.guards.status()["breakers"][f"smtp:127.0.0.1:{port}"]
    assert status["state"] == "open" and status["consecutive_failures"] == 2


async def test_desktop_goes_to_the_notify_callback(env: Env) -> None:
    seen: list[tuple[str, str, str]] = []
    env.configure(notify=lambda *a: seen.append(a))
    res = await env.call("send_notification", message="hello\x1b[31m", title="T", urgency="low")
    assert res["channels"] == ["desktop"]
    assert seen == [("T", "hello [31m", "low")]


async def test_desktop_without_a_sink_fails_clearly(env: Env) -> None:
    with pytest.raises(ActionError, match="no desktop notification sink"):
        await env.call("send_notification", message="x", channel="desktop")


async def test_log_and_syslog_channels(env: Env, caplog: pytest.LogCaptureFixture, tmp_path, monkeypatch) -> None:
    import socket

    from sdd.actions import notify

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "log"))
    monkeypatch.setattr(notify, "SYSLOG_SOCKET", str(tmp_path / "log"))
    try:
        with caplog.at_level(logging.INFO, logger="sdd.notify"):
            res = await env.call("send_notification", message="body", title="t", channel=["log", "syslog"])
        listener.settimeout(5)
        datagram = listener.recv(65536).decode()
    finally:
        listener.close()
    assert res["channels"] == ["log", "syslog"] and res["sent"] is True
    assert "t: body" in caplog.text
    assert datagram.startswith("<29>") and datagram.endswith("]: t: body")  # daemon.notice, as syslog(3)


async def test_a_channel_that_delivers_nothing_says_so_and_fails(env: Env, tmp_path, monkeypatch) -> None:
    from sdd.actions import notify

    monkeypatch.setattr(notify, "SYSLOG_SOCKET", str(tmp_path / "nobody-listens"))
    with pytest.raises(ActionError, match="syslog at .* did not take it: No such file"):
        await env.call("send_notification", message="x", channel="syslog")
    env.configure(notify=lambda *a: "not connected to the session bus")
    with pytest.raises(ActionError, match="desktop notification not delivered: not connected") as err:
        await env.call("send_notification", message="x", channel="desktop")
    assert err.value.retryable is False


async def test_a_retry_does_not_repeat_what_an_earlier_attempt_delivered(env: Env) -> None:
    seen: list[tuple[str, str, str]] = []
    port = free_port()  # nothing listens: the email fails, retryably
    env.configure(notify=lambda *a: seen.append(a), smtp=SmtpConfig(host="127.0.0.1", port=port, timeout=2))
    run = await env.step("send_notification", {"message": "x", "channel": ["desktop", "email"],
                                               "recipient": "a@b.c"}, max_retries=2, retry_delay=0.01)
    result = run.step_results["s"]
    assert result.status == "failed" and "not delivered via email" in result.error
    assert "delivered via desktop" in result.error and result.attempts == 3
    assert len(seen) == 1  # the desktop notification went out once, not once per attempt


async def test_the_log_channel_below_the_log_level_is_reported_not_delivered(env: Env,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sdd.notify"):
        res = await env.call("send_notification", message="quiet", channel="log")
    assert res["sent"] is False and res["channels"] == [] and res["deliveries"] == []
    assert res["suppressed"] == ["log"]


@pytest.mark.parametrize("params, message", [
    ({}, "'message': is required"), ({"message": 3}, "expected a string"),
    ({"message": "x", "urgency": "panic"}, "urgency"), ({"message": "x", "channel": "pager"}, "channel")])
async def test_bad_parameters(env: Env, params: dict, message: str) -> None:
    with pytest.raises(InvalidParams, match=message):
        await env.call("send_notification", **params)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_email_logs_in_with_the_password_file(env: Env, tmp_path) -> None:
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def authenticator(server, session, envelope, mechanism, data):  # type: ignore[no-untyped-def]
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"sdd", b"pw-from-file")
        return AuthResult(success=ok)

    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, auth_required=True, auth_require_tls=False,
                            authenticator=authenticator)
    controller.start()
    try:
        secret = tmp_path / "smtp-password"
        secret.write_text("pw-from-file\n")
        env.configure(smtp=SmtpConfig(host="127.0.0.1", port=port, timeout=5, username="sdd",
                                      password_file=str(secret)))
        await env.call("send_notification", recipient="root@localhost", message="authenticated")
        assert len(inbox.messages) == 1
    finally:
        controller.stop()
