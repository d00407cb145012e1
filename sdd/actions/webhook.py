"""`call_webhook`: one JSON request to an http(s) URL, signed, with an idempotency key and a timeout.

- Only `http` and `https`; redirects are not followed (a 3xx fails the step).
- The body is signed with HMAC-SHA256 when a secret is configured (`actions.webhook_secret_file`, else the
  environment variable `SDD_WEBHOOK_SECRET`; never workflow text): header `X-Sdd-Signature: sha256=<hex>`.
- `Idempotency-Key: run_id:step_id` on every call, so a receiver can drop a repeat after a crash.
- 2xx succeeds; 4xx fails without retry; 5xx, timeouts and network errors are retryable and count
  against the circuit breaker of the URL's host.
- `https` verifies the certificate and the host name against the system's CAs (OpenSSL's `SSL_CERT_FILE` /
  `SSL_CERT_DIR` point elsewhere, e.g. at a private CA). A certificate that does not verify fails without
  retry: retrying cannot fix it, and sending the payload anyway is what an attacker in the middle wants.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import re
import ssl
import uuid
from typing import Any
from urllib.parse import urlsplit

from . import outbound, runinfo
from .errors import ActionError
from .params import Params, plain
from .replies import parse_reply
from .services import ActionServices

METHODS = ("POST", "PUT", "PATCH")
MAX_BODY = 1 << 20
MAX_RESPONSE = 64 * 1024
_RESERVED = {"host", "content-length", "content-type", "idempotency-key", "x-sdd-signature",
             "transfer-encoding", "connection"}
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"


def webhook_secret(services: ActionServices) -> bytes | None:
    path = services.config.webhook_secret_file
    if path:
        try:
            with open(path, "rb") as fh:
                return fh.read(4096).strip() or None
        except OSError as exc:
            raise ActionError(f"call_webhook: cannot read webhook_secret_file {path}: {exc}",
                              retryable=False) from exc
    env = os.environ.get("SDD_WEBHOOK_SECRET")
    return env.encode() if env else None


def _request(scheme: str, host: str, port: int | None, method: str, target: str, body: bytes,
             headers: dict[str, str], timeout: float) -> tuple[int, str, bytes]:
    if scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read(MAX_RESPONSE)
        return resp.status, resp.getheader("Content-Type", "") or "", data
    finally:
        conn.close()


async def call_webhook(services: ActionServices, *, context: dict[str, Any] | None = None,
                       **params: Any) -> dict[str, Any]:
    p = Params("call_webhook", params)
    url = p.req_string("url", max_len=8192)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise p.fail("url", f"only http and https URLs are allowed, got scheme {parts.scheme or '(none)'!r}")
    if not parts.hostname or re.search(r"[\s\x00-\x1f]", url):
        raise p.fail("url", f"{url!r:.200} is not a valid URL")
    if parts.username or parts.password:
        raise p.fail("url", "credentials in the URL are not allowed; use a configured secret")
    try:
        port = parts.port
    except ValueError as exc:
        raise p.fail("url", str(exc)) from None
    method = (p.string("method", default="POST") or "POST").upper()
    if method not in METHODS:
        raise p.fail("method", f"expected one of {', '.join(METHODS)}, got {method!r:.20}")
    timeout = p.number("timeout", default=10.0, minimum=0.1, maximum=300.0)
    assert timeout is not None
    extra = p.str_map("headers", key_pattern=_TOKEN)
    for name, value in extra.items():
        if name.lower() in _RESERVED:
            raise p.fail("headers", f"{name} is set by sdd and cannot be overridden")
        if re.search(r"[\r\n]", value):
            raise p.fail("headers", f"value of {name} contains a line break")
    try:
        body = json.dumps(plain(p.raw.get("payload", {})), allow_nan=False, separators=(",", ":"),
                          sort_keys=True).encode()
    except (TypeError, ValueError) as exc:
        raise p.fail("payload", f"is not JSON-serialisable: {exc}") from None
    if len(body) > MAX_BODY:
        raise p.fail("payload", f"is larger than {MAX_BODY} bytes as JSON")
    _, _, key = runinfo.ids()
    idem = key or f"adhoc:{uuid.uuid4()}"
    headers = {**extra, "Content-Type": "application/json", "Idempotency-Key": idem,
               "User-Agent": "sdd/0.1"}
    secret = webhook_secret(services)
    if secret:
        headers["X-Sdd-Signature"] = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    breaker = f"webhook:{parts.hostname}:{port or (443 if parts.scheme == 'https' else 80)}"
    try:
        status, ctype, data = await outbound.call(
            _request, parts.scheme, parts.hostname, port, method, target, body, headers, timeout,
            on_outbound=services.on_outbound, before=lambda: services.guards.before_call(breaker))
    except ssl.SSLCertVerificationError as exc:
        raise ActionError(f"call_webhook: {method} {parts.hostname}: the TLS certificate was not accepted "
                          f"({exc.verify_message or exc.reason}); nothing was sent", retryable=False) from exc
    except (OSError, http.client.HTTPException) as exc:
        services.guards.record_failure(breaker, f"{type(exc).__name__}: {exc}")
        raise ActionError(f"call_webhook: {method} {parts.hostname} failed: {type(exc).__name__}: {exc}") from exc
    response: Any = data.decode("utf-8", "replace")
    if "json" in ctype:
        parsed, unparsed = parse_reply(data)  # (kept as text when it is not JSON safe to keep)
        if unparsed is None:
            response = parsed
    result = {"status": status, "ok": 200 <= status < 300, "url": f"{parts.scheme}://{parts.netloc}{parts.path}",
              "method": method, "idempotency_key": idem, "signed": bool(secret), "response": response}
    if 200 <= status < 300:
        services.guards.record_success(breaker)
        return result
    if status >= 500:
        services.guards.record_failure(breaker, f"HTTP {status}")
        raise ActionError(f"call_webhook: {method} {result['url']} answered {status}")
    services.guards.record_success(breaker)  # the peer is up; the request is what is wrong
    what = "redirects are not followed" if 300 <= status < 400 else "the request was refused"
    raise ActionError(f"call_webhook: {method} {result['url']} answered {status}; {what}", retryable=False)
