"""call_webhook against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdd.actions import BreakerOpen
from sdd.actions.replies import MAX_NESTING
from sdd.engine import ActionError, InvalidParams, RunStatus

from .conftest import Env
from .servers import Server, make_certificates


@pytest.fixture(scope="module")
def shared_server() -> Iterator[Server]:
    with Server() as s:
        yield s


@pytest.fixture
def server(shared_server: Server) -> Server:
    shared_server.requests.clear()
    shared_server.release.clear()
    return shared_server


async def test_posts_signed_json_with_idempotency_key(env: Env, server: Server, tmp_path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cret\n")
    env.configure(webhook_secret_file=str(secret))
    result = await env.step("call_webhook", {"url": server.url + "/hook?x=1",
                                             "payload": {"file": "{{ detection.file_path }}"},
                                             "headers": {"X-Team": "soc"}},
                            detection={"file_path": "/home/a/x.exe"})
    assert result.status is RunStatus.COMPLETED, result.error
    [req] = server.requests
    assert req["path"] == "/hook?x=1"
    assert json.loads(req["body"]) == {"file": "/home/a/x.exe"}
    assert req["headers"]["Idempotency-Key"] == f"{result.run_id}:s"
    expected = "sha256=" + hmac.new(b"s3cret", req["body"], hashlib.sha256).hexdigest()
    assert req["headers"]["X-Sdd-Signature"] == expected
    assert req["headers"]["X-Team"] == "soc"
    out = result.step_results["s"].result
    assert out["status"] == 200 and out["response"] == {"received": True} and out["signed"]


async def test_a_response_too_deep_to_keep_is_kept_as_text_and_the_delivered_call_succeeds(
        env: Env, server: Server) -> None:
    # json.loads raised RecursionError on `[[[[...`: the step failed after its request had been delivered
    # (and would be sent again on a retry); a few hundred levels parsed, and no `sddctl show` of the run
    # could then be read (its reply nested past the client's bound).
    nested = lambda n: ("[" * n + "]" * n).encode()
    server.answers.update({"/deepest": b"[" * 60_000, "/deep": nested(MAX_NESTING + 1),
                           "/bound": nested(MAX_NESTING), "/nan": b'{"a": NaN}'})
    for path, expected in (("/deepest", "[" * 60_000), ("/deep", nested(MAX_NESTING + 1).decode()),
                           ("/nan", '{"a": NaN}')):
        server.requests.clear()
        result = await env.step("call_webhook", {"url": server.url + path}, max_retries=2, retry_delay=0)
        assert result.status is RunStatus.COMPLETED, (path, result.error)
        assert result.step_results["s"].result["response"] == expected
        assert len(server.requests) == 1
    # Positive control: nested as deep as a detection may be, it is parsed.
    out = await env.call("call_webhook", url=server.url + "/bound", payload={})
    assert out["response"] == json.loads(nested(MAX_NESTING))


async def test_secret_from_environment(env: Env, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDD_WEBHOOK_SECRET", "envkey")
    await env.call("call_webhook", url=server.url + "/", payload=[1, 2])
    req = server.requests[0]
    assert req["headers"]["X-Sdd-Signature"] == "sha256=" + hmac.new(b"envkey", req["body"], "sha256").hexdigest()
    assert req["headers"]["Idempotency-Key"].startswith("adhoc:")


async def test_4xx_is_not_retried_5xx_is(env: Env, server: Server) -> None:
    with pytest.raises(ActionError, match="answered 400") as err:
        await env.call("call_webhook", url=server.url + "/bad", payload={})
    assert not err.value.retryable
    with pytest.raises(ActionError, match="answered 503") as err:
        await env.call("call_webhook", url=server.url + "/err", payload={})
    assert err.value.retryable
    with pytest.raises(ActionError, match="redirects are not followed") as err:
        await env.call("call_webhook", url=server.url + "/moved", payload={})
    assert not err.value.retryable


async def test_engine_retries_5xx(env: Env, server: Server) -> None:
    result = await env.step("call_webhook", {"url": server.url + "/err"}, max_retries=2, retry_delay=0)
    assert result.status is RunStatus.FAILED
    assert len(server.requests) == 3
    assert len({r["headers"]["Idempotency-Key"] for r in server.requests}) == 1


async def test_timeout_is_retryable(env: Env, server: Server) -> None:
    with pytest.raises(ActionError, match="timed out") as err:
        await env.call("call_webhook", url=server.url + "/slow", payload={}, timeout=0.3)
    assert err.value.retryable


async def test_breaker_opens_after_consecutive_failures(env: Env, server: Server) -> None:
    env.configure(breaker_failures=2)
    for _ in range(2):
        with pytest.raises(ActionError):
            await env.call("call_webhook", url=server.url + "/err")
    with pytest.raises(BreakerOpen, match="circuit breaker for webhook:127.0.0.1"):
        await env.call("call_webhook", url=server.url + "/")
    assert len(server.requests) == 2  # failed fast: the third call never reached the server


async def test_network_error_is_retryable(env: Env) -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ActionError, match="ConnectionRefused") as err:
        await env.call("call_webhook", url=f"http://127.0.0.1:{port}/", timeout=2)
    assert err.value.retryable


@pytest.mark.parametrize("params, message", [
    ({}, "'url': is required"), ({"url": "file:///etc/passwd"}, "only http and https"),
    ({"url": "ftp://127.0.0.1/x"}, "only http and https"), ({"url": "gopher://x"}, "only http and https"),
    ({"url": "http://"}, "not a valid URL"), ({"url": "http://u:p@127.0.0.1/"}, "credentials"),
    ({"url": "http://127.0.0.1/\r\nX: y"}, "not a valid URL"), ({"url": 5}, "expected a string"),
    ({"url": "http://127.0.0.1/", "method": "DELETE"}, "method"),
    ({"url": "http://127.0.0.1/", "headers": {"Idempotency-Key": "x"}}, "cannot be overridden"),
    ({"url": "http://127.0.0.1/", "headers": {"X-A": "a\r\nb"}}, "line break"),
    ({"url": "http://127.0.0.1/", "timeout": 0}, "timeout"),
    ({"url": "http://127.0.0.1/", "payload": {"x": float("nan")}}, "JSON"),
    ({"url": "http://127.0.0.1/", "payload": {"x": object()}}, "JSON")])
async def test_bad_parameters(env: Env, server: Server, params: dict, message: str) -> None:
    with pytest.raises(InvalidParams, match=message):
        await env.call("call_webhook", **params)
    assert server.requests == []


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_certificates(tmp_path_factory.mktemp("tls"))


async def test_https_with_a_trusted_certificate_posts_the_signed_body(
        env: Env, tls_files: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    ca, cert, key = tls_files
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # OpenSSL's own way to trust a private CA
    monkeypatch.setenv("SDD_WEBHOOK_SECRET", "tlskey")
    with Server(tls=(cert, key)) as server:
        assert server.url.startswith("https://127.0.0.1:")
        out = await env.call("call_webhook", url=server.url + "/hook", payload={"threat": "EICAR"})
        [req] = server.requests
    assert out["status"] == 200 and out["url"] == server.url + "/hook" and out["response"] == {"received": True}
    assert json.loads(req["body"]) == {"threat": "EICAR"}
    assert req["headers"]["X-Sdd-Signature"] == "sha256=" + hmac.new(b"tlskey", req["body"], "sha256").hexdigest()


@pytest.mark.parametrize("case", ["untrusted CA", "wrong host name"])
async def test_https_refuses_a_certificate_that_does_not_verify_and_sends_nothing(
        env: Env, tls_files: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        case: str) -> None:
    _, cert, key = tls_files
    if case == "untrusted CA":
        other_ca, _, _ = make_certificates(tmp_path)
        monkeypatch.setenv("SSL_CERT_FILE", str(other_ca))
    else:  # from a trusted CA, but for another name than the URL's
        other_ca, cert, key = make_certificates(tmp_path, names="DNS:elsewhere.example")
        monkeypatch.setenv("SSL_CERT_FILE", str(other_ca))
    with Server(tls=(cert, key)) as server:
        with pytest.raises(ActionError, match="TLS certificate was not accepted") as err:
            await env.call("call_webhook", url=server.url + "/hook", payload={"secret": "payload"})
        assert server.requests == []
    assert err.value.retryable is False
    assert ("unable to get local issuer" in str(err.value)) if case == "untrusted CA" else \
        ("IP address mismatch" in str(err.value))
    # Not a failure of the host: its circuit breaker counts nothing.
    breakers = env.services.guards.status()["breakers"]
    assert all(b["consecutive_failures"] == 0 for b in breakers.values()), breakers


async def test_the_call_waits_in_a_pool_of_its_own_and_a_slow_one_lends_its_run_s_slot(
        env: Env, server: Server) -> None:
    # asyncio's default pool (local work: reports, index look-ups) is full: the webhooks go out regardless.
    import asyncio
    import threading

    told: list[tuple[str, bool]] = []
    env.services.on_outbound = lambda run_id, waiting: told.append((run_id, waiting))
    release = threading.Event()
    loop = asyncio.get_running_loop()
    blockers = [loop.run_in_executor(None, release.wait, 30) for _ in range(64)]
    try:
        fast = await asyncio.wait_for(env.step("call_webhook", {"url": server.url + "/"}), 20)
        assert fast.status is RunStatus.COMPLETED and told == []  # answered at once: the run kept its slot
        slow = asyncio.ensure_future(env.step("call_webhook", {"url": server.url + "/slow"}))
        deadline = loop.time() + 20
        while not told and loop.time() < deadline:  # the server holds the answer until released
            await asyncio.sleep(0.01)
        assert len(told) == 1 and told[0][1] is True
        server.release.set()
        result = await asyncio.wait_for(slow, 20)
    finally:
        release.set()
        server.release.set()
        await asyncio.gather(*blockers)
    assert result.status is RunStatus.COMPLETED and len(server.requests) == 2
    assert told == [(result.run_id, True), (result.run_id, False)]
