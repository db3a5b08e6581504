import http.client
import pytest

from rpi2braze.braze_client import classify, reset_delay
from rpi2braze.errors import PermanentDeliveryError, RetryableDeliveryError, SplittableDeliveryError

NOW = 1_800_000_000.0


def headers(values: dict | None = None) -> http.client.HTTPMessage:
    """Response headers as BrazeClient passes them to classify: http.client's message."""
    message = http.client.HTTPMessage()
    for name, value in (values or {}).items():
        message[name] = value
    return message


@pytest.mark.parametrize("value, expected", [
    (None, None),
    ("", None),
    ("abc", None),
    ("5", 5.0),
    (" 12 ", 12.0),
    ("0", 0.0),
    (str(int(NOW) + 7), 7.0),        # epoch seconds
    (str(int(NOW) - 7), 0.0),        # an epoch already past: no wait
])
def test_reset_delay_accepts_delta_and_epoch(value, expected):
    assert reset_delay(value, NOW) == expected


def test_success_with_errors_and_rate_headers():
    answer_headers = headers({"X-RateLimit-Remaining": "0", "x-ratelimit-reset": str(int(NOW) + 2)})
    body = b'{"message":"success","errors":[{"type":"EMAIL_BAD_FORMAT","input_array":"attributes","index":1}]}'
    response = classify(201, answer_headers, body, NOW)
    assert response.errors == ({"type": "EMAIL_BAD_FORMAT", "input_array": "attributes", "index": 1},)
    assert response.rate_remaining == 0
    assert response.rate_reset_seconds == 2.0


@pytest.mark.parametrize("status, body", [
    (200, b"<html>Access denied by policy</html>"), (200, b""), (201, b"[]"), (204, b""),
    (200, b'{"status":"ok"}'), (202, b'{"message":7}')])
def test_a_2xx_that_is_not_brazes_is_retried_not_taken_as_delivered(status, body):
    with pytest.raises(RetryableDeliveryError, match="not Braze's") as raised:
        classify(status, headers(), body, NOW)
    assert raised.value.status == status


def test_brazes_queued_answer_in_maintenance_is_delivered():
    assert classify(202, headers(), b'{"message":"queued"}', NOW).errors == ()


@pytest.mark.parametrize("status, given, retry_after", [
    (429, {"X-Ratelimit-Retry-After": "3"}, 3.0),
    (429, {"x-ratelimit-reset": str(int(NOW) + 9)}, 9.0),
    (429, {}, None),
    (500, {}, None),
    (502, {}, None),
    (503, {"Retry-After": "4"}, 4.0),
    (504, {}, None),
    (408, {}, None),
])
def test_retryable_statuses(status, given, retry_after):
    with pytest.raises(RetryableDeliveryError) as raised:
        classify(status, headers(given), b"{}", NOW)
    assert raised.value.status == status
    assert raised.value.retry_after == retry_after


@pytest.mark.parametrize("status", [400, 413])
def test_splittable_statuses(status):
    with pytest.raises(SplittableDeliveryError) as raised:
        classify(status, headers(), b'{"message":"Max Input Length Exceeded"}', NOW)
    assert "Max Input Length Exceeded" in str(raised.value)


@pytest.mark.parametrize("body", [b"<html><body>400 Bad Request</body></html>", b"", b'["not", "braze"]'])
def test_a_400_without_brazes_json_is_retried_not_split(body):
    """A proxy's or firewall's 400 says nothing about the objects: bisecting would dead-letter them all."""
    with pytest.raises(RetryableDeliveryError) as raised:
        classify(400, headers(), body, NOW)
    assert raised.value.status == 400
    assert "not Braze's" in str(raised.value)


def test_a_413_without_json_is_still_split():
    """A proxy with a smaller body limit than Braze's: halves get through."""
    with pytest.raises(SplittableDeliveryError):
        classify(413, headers(), b"<html>413 Request Entity Too Large</html>", NOW)


@pytest.mark.parametrize("status", [401, 403, 404, 415])
def test_permanent_statuses(status):
    with pytest.raises(PermanentDeliveryError) as raised:
        classify(status, headers(), b'{"message":"Invalid API key: secret-value"}', NOW)
    assert raised.value.status == status


def test_non_json_body_gives_readable_message():
    with pytest.raises(RetryableDeliveryError) as raised:
        classify(502, headers(), b"<html>Bad Gateway</html>", NOW)
    assert "Bad Gateway" in str(raised.value)
