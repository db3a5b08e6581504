"""One keep-alive HTTP connection to Braze's /users/track, and the classification of its answers.

Failure is classified once, here (DESIGN.md): callers only ever see a `TrackResponse` or one of
RetryableDeliveryError, SplittableDeliveryError, PermanentDeliveryError. Socket, TLS and HTTP
exceptions do not escape this module, and the API key is never part of a message.
"""

from __future__ import annotations

import base64
import functools
import http.client
import select
import ssl
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Mapping

import orjson

from rpi2braze.errors import PermanentDeliveryError, RetryableDeliveryError, SplittableDeliveryError
from rpi2braze.settings import BrazeSettings

TRACK_PATH = "/users/track"
EPOCH_THRESHOLD = 1_000_000_000  # X-RateLimit-Reset above this is epoch seconds, below a delta
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
SPLITTABLE_STATUSES = frozenset({400, 413})
PERMANENT_STATUSES = frozenset({401, 403, 404, 405, 415})


@dataclass(frozen=True)
class TrackResponse:
    """A 2xx answer: `errors` are Braze's per-object error items (may be empty)."""

    status: int
    errors: tuple[dict, ...] = ()
    rate_remaining: int | None = None
    rate_reset_seconds: float | None = None


def reset_delay(value: str | None, now: float) -> float | None:
    """Given an X-RateLimit-Reset or Retry-After header, return seconds from now, or None.

    Braze documents the reset both as UTC epoch seconds and as seconds remaining: a value above
    10**9 is taken as epoch seconds.
    """
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if number > EPOCH_THRESHOLD:
        number -= now
    return max(0.0, number)


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    try:
        return int(float(headers.get(name, "")))
    except ValueError:
        return None


def classify(status: int, headers: Mapping[str, str], body: bytes, now: float | None = None) -> TrackResponse:
    """Given a /users/track answer, return a TrackResponse for 2xx or raise what the caller must do.

    `headers` must match names case-insensitively (http.client's HTTPMessage does). Raise RetryableDeliveryError
    for 408/429/5xx (with Braze's retry delay when given), and for a 2xx or a 400 without Braze's
    JSON body,
    SplittableDeliveryError for 400/413,
    PermanentDeliveryError for 401/403/404 and other 4xx that resending cannot fix.
    """
    now = time.time() if now is None else now
    decoded = _decode(body)   # once: the message, the errors[] and the 400 check all read it
    message = _message(decoded, body)
    if 200 <= status < 300 and not (isinstance(decoded, dict) and isinstance(decoded.get("message"), str)):
        # Braze's 2xx always carries {"message": ...}. Anything else (a proxy's page, a wrong
        # endpoint) must not acknowledge batches Braze never saw.
        raise RetryableDeliveryError(f"a {status} that is not Braze's (no JSON message; a proxy or a wrong "
                                     f"braze.rest_endpoint?): {message}", status)
    if 200 <= status < 300:
        return TrackResponse(
            status=status,
            errors=_errors(decoded),
            rate_remaining=_header_int(headers, "x-ratelimit-remaining"),
            rate_reset_seconds=reset_delay(headers.get("x-ratelimit-reset"), now),
        )
    if status in RETRYABLE_STATUSES or status >= 500:
        retry_after = reset_delay(
            headers.get("x-ratelimit-retry-after") or headers.get("retry-after") or (
                headers.get("x-ratelimit-reset") if status == 429 else None),
            now,
        )
        raise RetryableDeliveryError(f"Braze answered {status}: {message}", status, retry_after)
    if status == 400 and not isinstance(decoded, dict):
        # Braze answers a 400 with a JSON object. Anything else came from something in the way (a
        # proxy, a firewall): splitting would dead-letter every row of the export for it.
        raise RetryableDeliveryError(f"a 400 that is not Braze's (no JSON body; a proxy or firewall in "
                                     f"the way?): {message}", status)
    if status in SPLITTABLE_STATUSES:
        raise SplittableDeliveryError(f"Braze answered {status}: {message}", status)
    hint = " (check braze.api_key, its users.track permission and braze.rest_endpoint)" if status in (401, 403, 404) else ""
    raise PermanentDeliveryError(f"Braze answered {status}: {message}{hint}", status)


def _decode(body: bytes) -> object:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def _message(decoded: object, body: bytes) -> str:
    if isinstance(decoded, dict) and isinstance(decoded.get("message"), str):
        return decoded["message"][:300]
    return body[:200].decode("utf-8", "replace") or "(empty body)"


def _errors(decoded: object) -> tuple[dict, ...]:
    if not isinstance(decoded, dict) or not isinstance(decoded.get("errors"), list):
        return ()
    return tuple(item if isinstance(item, dict) else {"type": str(item)} for item in decoded["errors"])


@functools.lru_cache(maxsize=8)
def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The system's trusted CAs, plus `ca_file` when given (a TLS-inspecting proxy's CA).

    Shared by every sender: building a context costs ~1 MB and ~50 ms of CPU, once per client otherwise.
    """
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def _connection(endpoint: urllib.parse.SplitResult, settings: BrazeSettings) -> http.client.HTTPConnection:
    """A connection to `endpoint`, through the proxy the environment names (HTTPS_PROXY for
    https, HTTP_PROXY for http, NO_PROXY to bypass) as a CONNECT tunnel, so TLS and the
    certificate check still run end to end with Braze. Plain http only reaches here with
    allow_insecure_http (config_check refuses it otherwise)."""
    secure = endpoint.scheme == "https"
    port = endpoint.port or (443 if secure else 80)
    proxy = _proxy_for(endpoint)
    host, connect_port = (proxy.hostname, proxy.port or 80) if proxy else (endpoint.hostname, port)
    if secure:
        connection = http.client.HTTPSConnection(host, connect_port, timeout=settings.timeout_seconds,
                                                 context=tls_context(settings.ca_file))
    else:
        connection = http.client.HTTPConnection(host, connect_port, timeout=settings.timeout_seconds)
    if proxy:
        credentials = f"{urllib.parse.unquote(proxy.username or '')}:{urllib.parse.unquote(proxy.password or '')}"
        headers = {"Proxy-Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()} \
            if proxy.username else None
        connection.set_tunnel(endpoint.hostname, port, headers)
    return connection


def proxy_problem(rest_endpoint: str) -> str | None:
    """Why the proxy the environment names for `rest_endpoint` cannot be used, or None."""
    try:
        _proxy_for(urllib.parse.urlsplit(rest_endpoint))
    except ValueError as error:
        return str(error)
    return None


def _proxy_for(endpoint: urllib.parse.SplitResult) -> urllib.parse.SplitResult | None:
    """The proxy the environment names for `endpoint`, or None. Raise ValueError, without quoting
    the address (it may hold a password), if it is unusable: not a URL, or not an http:// proxy,
    which would get the proxy's password in clear text."""
    if urllib.request.proxy_bypass(endpoint.hostname or ""):
        return None
    url = urllib.request.getproxies().get(endpoint.scheme)
    if not url:
        return None
    variable = f"{endpoint.scheme.upper()}_PROXY"
    proxy = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    try:
        proxy.port
    except ValueError:
        proxy = None
    if proxy is None or not proxy.hostname:
        raise ValueError(f"{variable} is not a usable proxy URL (not shown: it may hold a password); "
                         f"percent-encode any '/', '#', '?' or '@' in its user name or password")
    if proxy.scheme != "http":
        raise ValueError(f"{variable} names a {proxy.scheme}:// proxy; only http:// proxies are supported "
                         f"(the tunnel through it to Braze is TLS either way)")
    return proxy


class BrazeClient:
    """A keep-alive connection to one Braze REST endpoint. Not shared between threads: each
    sender thread has its own, so no request waits for another's connection.

    Built on the standard library's http.client: one request of 75 objects costs ~210 µs of CPU
    against httpx's ~810 µs (bench/bench_stages.py), and at Braze's 1,000 requests a second that
    difference is most of a core.
    """

    def __init__(self, settings: BrazeSettings):
        endpoint = urllib.parse.urlsplit(settings.rest_endpoint)
        self._path = endpoint.path.rstrip("/") + TRACK_PATH
        self._headers = {
            "Authorization": f"Bearer {settings.api_key.reveal()}",
            "Content-Type": "application/json",
            "User-Agent": "rpi2braze",
        }
        self._connection = _connection(endpoint, settings)

    def track(self, body: bytes) -> TrackResponse:
        """POST one encoded {"attributes": [...]} body; return or raise as `classify` does.

        Connection errors, timeouts and garbled answers raise RetryableDeliveryError (status None).
        """
        try:
            self._drop_if_closed_by_server()
            self._connection.request("POST", self._path, body, self._headers)
            response = self._connection.getresponse()
            content = response.read()
        except ssl.SSLCertVerificationError as error:  # retrying cannot fix it: stop the workspace and alert
            self._connection.close()
            raise PermanentDeliveryError(f"Braze's TLS certificate is not trusted: {error.verify_message} "
                                         "(check braze.rest_endpoint and braze.ca_file)") from None
        except (OSError, http.client.HTTPException) as error:
            self._connection.close()   # in an unknown state: the next request opens a new one
            raise RetryableDeliveryError(f"no answer from Braze: {type(error).__name__}: {error}") from None
        except ValueError:   # a header http.client refuses; its message would quote the API key
            self._connection.close()
            raise PermanentDeliveryError("the request could not be built: a header value is invalid "
                                         "(check braze.api_key for a line break)") from None
        return classify(response.status, response.headers, content)

    def _drop_if_closed_by_server(self) -> None:
        """An idle keep-alive connection the server has closed reads as ready (EOF): open a new one
        instead of sending a request into it and calling the failure Braze's."""
        sock = self._connection.sock
        if sock is None:
            return
        readiness = select.poll()   # not select.select: it cannot watch descriptors above 1023
        readiness.register(sock, select.POLLIN)
        if readiness.poll(0):
            self._connection.close()

    def close(self) -> None:
        self._connection.close()
