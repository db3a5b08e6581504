"""Test and admin endpoints under `/_sandbox/`: no API key, answered only to loopback clients.

    GET  /_sandbox/profiles   every profile, keyed as ProfileStore.all()
    GET  /_sandbox/requests   the request log (RequestRecord fields), oldest first
    GET  /_sandbox/faults     the current Faults
    POST /_sandbox/faults     replace the Faults with the JSON body (unknown keys are a 400)
    POST /_sandbox/api-key    {"api_key": "..."}: accept this key from now on
    POST /_sandbox/reset      forget profiles and the request log
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any, Callable

import orjson

from rpi2braze.sandbox.endpoints import Reply, fatal
from rpi2braze.sandbox.faults import Faults
from rpi2braze.sandbox.state import SandboxState

ADMIN_PREFIX = "/_sandbox/"


def handle_admin(state: SandboxState, method: str, path: str, body: bytes | None, client_host: str) -> Reply:
    """Answer one `/_sandbox/` request from `client_host`."""
    if not _is_loopback(client_host):
        return fatal(403, "the /_sandbox/ endpoints answer loopback clients only")
    route = _ROUTES.get((method, path))
    if route is None:
        return fatal(404, "Not Found")
    if method == "GET":
        return Reply(200, route(state, None))
    if body is None:
        return fatal(413, "Request Entity Too Large")
    try:
        payload = orjson.loads(body) if body else {}
        return Reply(200, route(state, payload))
    except orjson.JSONDecodeError:
        return fatal(400, "the body must be JSON")
    except (ValueError, TypeError) as problem:
        return fatal(400, str(problem))


def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def _profiles(state: SandboxState, _payload: Any) -> dict:
    return state.store.all()


def _requests(state: SandboxState, _payload: Any) -> list:
    return [record.to_json() for record in state.requests()]


def _faults(state: SandboxState, _payload: Any) -> dict:
    return dataclasses.asdict(state.injector.faults)


def _replace_faults(state: SandboxState, payload: Any) -> dict:
    state.injector.replace(Faults.from_json(payload))
    return {"message": "success", "faults": _faults(state, None)}


def _api_key(state: SandboxState, payload: Any) -> dict:
    key = payload.get("api_key") if isinstance(payload, dict) else None
    if not isinstance(key, str) or not key:
        raise ValueError("api_key: must be a non-empty string")
    state.set_api_key(key)
    return {"message": "success"}   # never echo the key


def _reset(state: SandboxState, _payload: Any) -> dict:
    state.reset()
    return {"message": "success"}


_ROUTES: dict[tuple[str, str], Callable[[SandboxState, Any], Any]] = {
    ("GET", ADMIN_PREFIX + "profiles"): _profiles,
    ("GET", ADMIN_PREFIX + "requests"): _requests,
    ("GET", ADMIN_PREFIX + "faults"): _faults,
    ("POST", ADMIN_PREFIX + "faults"): _replace_faults,
    ("POST", ADMIN_PREFIX + "api-key"): _api_key,
    ("POST", ADMIN_PREFIX + "reset"): _reset,
}
