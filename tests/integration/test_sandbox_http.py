"""The sandbox over real HTTP on loopback: Braze's request checks, per-object errors, faults, rate limits."""

import os
import signal
import subprocess
import sys

import httpx
import orjson
import pytest

from rpi2braze.sandbox import Faults, SandboxServer

KEY = "sandbox-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def sandbox():
    with SandboxServer() as server:
        yield server


@pytest.fixture(scope="module")
def client():
    # One client for the module: building its TLS context costs ~0.1 s, and it starts no threads.
    with httpx.Client(timeout=10) as http:
        yield http


def track(client: httpx.Client, sandbox: SandboxServer, payload, headers=None, **kwargs) -> httpx.Response:
    headers = AUTH if headers is None else headers
    return client.post(f"{sandbox.url}/users/track", json=payload, headers=headers, **kwargs)


def attributes(*objects: dict) -> dict:
    return {"attributes": list(objects)}


# --- request checks ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": f'Bearer "{KEY}"'},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": "Bearer"},
        {"Authorization": KEY},
    ],
)
def test_a_missing_or_malformed_key_is_401_and_applies_nothing(sandbox, client, headers):
    response = track(client, sandbox, attributes({"external_id": "u1"}), headers=headers)
    assert response.status_code == 401
    assert KEY not in response.text
    assert sandbox.store.all() == {}


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_that_is_not_declared_json_is_415(sandbox, client, content_type):
    headers = dict(AUTH) | ({"Content-Type": content_type} if content_type else {})
    response = client.post(f"{sandbox.url}/users/track", content=b'{"attributes": []}', headers=headers)
    assert response.status_code == 415


def test_json_with_a_charset_parameter_is_accepted(sandbox, client):
    headers = AUTH | {"Content-Type": "application/json; charset=utf-8"}
    body = orjson.dumps(attributes({"external_id": "u1"}))
    assert client.post(f"{sandbox.url}/users/track", content=body, headers=headers).status_code == 201


@pytest.mark.parametrize(
    "body",
    [b'{"attributes": [{"external_id": "u1"},]}', b"{'attributes': []}", b'{"attributes": [] // c\n}', b"{{}"],
)
def test_invalid_json_is_400_with_brazes_message(sandbox, client, body):
    headers = AUTH | {"Content-Type": "application/json"}
    response = client.post(f"{sandbox.url}/users/track", content=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["message"] == "Error while parsing request body. Please check your syntax."


@pytest.mark.parametrize("payload", [{}, {"unrelated": 1}, [], {"attributes": {"external_id": "u1"}}])
def test_a_body_without_arrays_of_objects_is_400(sandbox, client, payload):
    assert track(client, sandbox, payload).status_code == 400


@pytest.mark.parametrize(("attribute_count", "event_count", "status"), [(40, 35, 201), (40, 36, 400), (76, 0, 400)])
def test_at_most_75_objects_combined(sandbox, client, attribute_count, event_count, status):
    payload = {
        "attributes": [{"external_id": f"a{number}"} for number in range(attribute_count)],
        "events": [{"external_id": f"e{number}", "name": "x", "time": "2024-01-01"} for number in range(event_count)],
    }
    response = track(client, sandbox, payload)
    assert response.status_code == status
    if status == 400:
        assert response.json()["message"] == "Max Input Length Exceeded"
        assert sandbox.store.all() == {}
    else:
        assert len(sandbox.store.all()) == 75


def test_a_body_over_the_byte_limit_is_413_and_the_connection_stays_usable(client):
    with SandboxServer(max_bytes=10_000) as sandbox:
        big = attributes({"external_id": "u1", "padding": "x" * 200, **{f"k{n}": "v" * 200 for n in range(60)}})
        assert track(client, sandbox, big).status_code == 413
        assert track(client, sandbox, attributes({"external_id": "u2"})).status_code == 201
        assert sandbox.store.get("u1") is None and sandbox.store.get("u2") is not None


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/users/track/", 403),
        ("POST", "/users/export/ids/", 403),
        ("POST", "/users/trak", 404),
        ("GET", "/users/track", 404),
    ],
)
def test_wrong_paths_are_configuration_errors(sandbox, client, method, path, status):
    response = client.request(method, sandbox.url + path, json=attributes({"external_id": "u1"}), headers=AUTH)
    assert response.status_code == status
    assert sandbox.store.all() == {}


# --- applying ----------------------------------------------------------------------------------------------

def test_a_bad_email_is_an_error_item_and_the_other_objects_are_applied(sandbox, client):
    payload = attributes(
        {"external_id": "u1", "first_name": "Ann"},
        {"external_id": "u2", "email": "not an email", "first_name": "Bob"},
        {"external_id": "u3", "email": "cy@example.com"},
    )
    response = track(client, sandbox, payload)
    assert response.status_code == 201
    assert response.json() == {
        "message": "success",
        "attributes_processed": 2,
        "errors": [{"type": "EMAIL_BAD_FORMAT", "input_array": "attributes", "index": 1}],
    }
    assert sandbox.store.get("u1")["first_name"] == "Ann"
    assert sandbox.store.get("u3")["email"] == "cy@example.com"
    assert "email" not in sandbox.store.get("u2")


def test_update_existing_only_never_creates(sandbox, client):
    track(client, sandbox, attributes({"external_id": "known"}))
    response = track(client, sandbox, attributes(
        {"external_id": "known", "_update_existing_only": True, "rpi_audience_outputs": {"add": ["o1"]}},
        {"external_id": "unknown", "_update_existing_only": True, "rpi_audience_outputs": {"add": ["o1"]}},
    ))
    assert response.json() == {"message": "success", "attributes_processed": 2}
    assert sandbox.store.get("known")["custom_attributes"] == {"rpi_audience_outputs": ["o1"]}
    assert sandbox.store.get("unknown") is None


def test_array_add_moves_a_present_value_to_the_end_and_drops_the_oldest_at_the_cap(client):
    with SandboxServer(array_max=3) as sandbox:
        for value in ("a", "b", "c", "a", "d"):
            track(client, sandbox, attributes({"external_id": "u1", "rpi_offers": {"add": [value]}}))
        assert sandbox.store.get("u1")["custom_attributes"]["rpi_offers"] == ["c", "a", "d"]


@pytest.mark.parametrize(("merge", "expected"), [(False, {"b": 2}), (True, {"a": 1, "b": 2})])
def test_nested_objects_replace_or_merge(sandbox, client, merge, expected):
    track(client, sandbox, attributes({"external_id": "u1", "rpi_cdp_attributes": {"a": 1}}))
    track(client, sandbox, attributes({"external_id": "u1", "_merge_objects": merge, "rpi_cdp_attributes": {"b": 2}}))
    assert sandbox.store.get("u1")["custom_attributes"]["rpi_cdp_attributes"] == expected


def test_events_and_purchases_are_counted(sandbox, client):
    payload = {
        "attributes": [{"external_id": "u1"}],
        "events": [{"external_id": "u1", "name": "opened", "time": "2024-01-01T00:00:00Z"}, {"external_id": "u1"}],
        "purchases": [{"external_id": "u1", "product_id": "p", "currency": "USD", "price": 2.5, "time": "2024-01-01"}],
    }
    body = track(client, sandbox, payload).json()
    assert (body["attributes_processed"], body["events_processed"], body["purchases_processed"]) == (1, 1, 1)
    assert body["errors"] == [{"type": "SANDBOX_INVALID_EVENT", "input_array": "events", "index": 1}]
    assert sandbox.store.get("u1")["custom_events"][0]["count"] == 1


# --- export ------------------------------------------------------------------------------------------------

def test_export_ids_returns_users_in_brazes_shape(sandbox, client):
    track(client, sandbox, attributes({"external_id": "u1", "first_name": "Ann", "country": "Norway", "tier": "gold"}))
    response = client.post(f"{sandbox.url}/users/export/ids", json={"external_ids": ["u1", "nobody"]}, headers=AUTH)
    body = response.json()
    assert (response.status_code, body["message"], body["invalid_user_ids"]) == (200, "success", ["nobody"])
    [user] = body["users"]
    assert (user["external_id"], user["first_name"], user["country"]) == ("u1", "Ann", "NO")
    assert user["custom_attributes"] == {"tier": "gold"}


def test_export_ids_keeps_only_the_fields_asked_for(sandbox, client):
    track(client, sandbox, attributes({"external_id": "u1", "first_name": "Ann", "tier": "gold"}))
    request = {"external_ids": ["u1"], "fields_to_export": ["external_id", "custom_attributes"]}
    [user] = client.post(f"{sandbox.url}/users/export/ids", json=request, headers=AUTH).json()["users"]
    assert user == {"external_id": "u1", "custom_attributes": {"tier": "gold"}}


@pytest.mark.parametrize(
    ("request_body", "headers", "status"),
    [
        ({"external_ids": [f"u{number}" for number in range(51)]}, AUTH, 400),
        ({"external_ids": "u1"}, AUTH, 400),
        ({"external_ids": ["u1"]}, {}, 401),
        ({"external_ids": [f"u{number}" for number in range(50)]}, AUTH, 200),
    ],
)
def test_export_ids_limits(sandbox, client, request_body, headers, status):
    assert client.post(f"{sandbox.url}/users/export/ids", json=request_body, headers=headers).status_code == status


# --- faults ------------------------------------------------------------------------------------------------

def test_a_dropped_request_gets_no_answer_and_applies_nothing(client):
    with SandboxServer(faults=Faults(drop_rate=1.0, seed=1)) as sandbox:
        with pytest.raises(httpx.RemoteProtocolError):
            track(client, sandbox, attributes({"external_id": "u1"}))
        assert sandbox.store.all() == {}
        [record] = sandbox.requests
        assert (record.status, record.fault, record.external_ids) == (0, "drop", ("u1",))


def test_an_injected_server_error_applies_nothing(client):
    with SandboxServer(faults=Faults(error_rate=1.0, seed=1)) as sandbox:
        response = track(client, sandbox, attributes({"external_id": "u1"}))
        assert response.status_code in (500, 502, 503, 504)
        assert sandbox.store.all() == {}


def test_an_injected_429_carries_retry_after_and_applies_nothing(client):
    with SandboxServer(faults=Faults(rate_limited_rate=1.0, retry_after_seconds=7, seed=1)) as sandbox:
        response = track(client, sandbox, attributes({"external_id": "u1"}))
        assert (response.status_code, response.headers["x-ratelimit-retry-after"]) == (429, "7")
        assert sandbox.store.all() == {}


def test_a_slow_request_is_applied_before_it_is_answered(client):
    with SandboxServer(faults=Faults(slow_rate=1.0, slow_seconds=60, seed=1)) as sandbox:
        with pytest.raises(httpx.ReadTimeout):
            track(client, sandbox, attributes({"external_id": "u1"}), timeout=0.5)
        assert sandbox.store.get("u1") is not None


def test_latency_delays_every_request(client):
    with SandboxServer(faults=Faults(latency_seconds=60)) as sandbox:
        with pytest.raises(httpx.ReadTimeout):
            client.post(f"{sandbox.url}/users/export/ids", json={"external_ids": []}, headers=AUTH, timeout=0.3)


def test_the_same_seed_gives_the_same_faults(client):
    def statuses() -> list[int]:
        with SandboxServer(faults=Faults(error_rate=0.5, error_statuses=(503,), seed=7)) as sandbox:
            return [track(client, sandbox, attributes({"external_id": "u1"})).status_code for _ in range(20)]

    first = statuses()
    assert first == statuses()
    assert set(first) == {201, 503}


# --- rate limit --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("reset_style", "reset_is_epoch"), [("epoch", True), ("delta", False)])
def test_the_rate_limit_answers_429_with_retry_after(client, reset_style, reset_is_epoch):
    with SandboxServer(rate_limit=(2, 60), rate_limit_reset=reset_style) as sandbox:
        allowed = [track(client, sandbox, attributes({"external_id": f"u{n}"})) for n in range(2)]
        refused = track(client, sandbox, attributes({"external_id": "u2"}))
    assert [response.status_code for response in allowed] == [201, 201]
    assert [response.headers["x-ratelimit-remaining"] for response in allowed] == ["1", "0"]
    assert allowed[0].headers["x-ratelimit-limit"] == "2"
    assert (int(allowed[0].headers["x-ratelimit-reset"]) > 10**9) is reset_is_epoch
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["x-ratelimit-retry-after"]) <= 60
    assert "x-ratelimit-limit" not in refused.headers
    assert sandbox.store.get("u2") is None


# --- admin endpoints and lifecycle -------------------------------------------------------------------------

def test_faults_can_be_replaced_over_http(sandbox, client):
    response = client.post(f"{sandbox.url}/_sandbox/faults", json={"error_rate": 1.0, "error_statuses": [502]})
    assert response.status_code == 200
    assert track(client, sandbox, attributes({"external_id": "u1"})).status_code == 502
    client.post(f"{sandbox.url}/_sandbox/faults", json={})
    assert track(client, sandbox, attributes({"external_id": "u1"})).status_code == 201


@pytest.mark.parametrize(("faults", "named"), [({"error_rate": 2}, "error_rate"), ({"typo_rate": 1}, "typo_rate")])
def test_bad_faults_are_400_naming_the_key(sandbox, client, faults, named):
    response = client.post(f"{sandbox.url}/_sandbox/faults", json=faults)
    assert response.status_code == 400 and named in response.json()["message"]


def test_the_api_key_can_be_changed_over_http(sandbox, client):
    assert client.post(f"{sandbox.url}/_sandbox/api-key", json={"api_key": "fixed"}).status_code == 200
    assert track(client, sandbox, attributes({"external_id": "u1"})).status_code == 401
    fixed = {"Authorization": "Bearer fixed"}
    assert track(client, sandbox, attributes({"external_id": "u1"}), headers=fixed).status_code == 201


def test_profiles_requests_and_reset_over_http(sandbox, client):
    track(client, sandbox, attributes({"external_id": "u1"}, {"external_id": "u2"}))
    assert sorted(client.get(f"{sandbox.url}/_sandbox/profiles").json()) == ["u1", "u2"]
    [record] = client.get(f"{sandbox.url}/_sandbox/requests").json()
    assert (record["path"], record["status"], record["external_ids"], record["object_count"]) == (
        "/users/track", 201, ["u1", "u2"], 2)
    assert client.post(f"{sandbox.url}/_sandbox/reset").status_code == 200
    assert client.get(f"{sandbox.url}/_sandbox/profiles").json() == {}
    assert sandbox.requests == []


def test_stop_closes_kept_alive_connections(client):
    sandbox = SandboxServer().start()
    url = sandbox.url
    assert track(client, sandbox, attributes({"external_id": "u1"})).status_code == 201
    sandbox.stop()
    with pytest.raises(httpx.TransportError):
        client.post(f"{url}/users/track", json=attributes({"external_id": "u2"}), headers=AUTH)
    assert sandbox.store.get("u2") is None


def test_serve_prints_its_url_and_exits_0_on_sigterm():
    code = "from rpi2braze.sandbox import serve; raise SystemExit(serve(port=0, api_key='cli-key'))"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()
        response = httpx.post(f"{url}/users/track", json=attributes({"external_id": "u1"}),
                              headers={"Authorization": "Bearer cli-key"})
        assert response.status_code == 201
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        process.stdout.close()
