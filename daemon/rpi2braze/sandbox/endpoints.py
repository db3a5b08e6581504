"""The two Braze endpoints the sandbox answers, as functions from a decoded JSON body to a Reply.

`POST /users/track` (braze-users-track.md §1-3): at most `max_objects` objects combined across attributes,
events and purchases, else `400 Max Input Length Exceeded`; objects are applied attributes, then events,
then purchases; `201` carries `errors[]` items (`type`, `input_array`, `index`) for objects not applied
cleanly, everything else is applied. `<array>_processed` counts that array's objects without an error item
and is present only when the array was sent.

`POST /users/export/ids`: up to 50 `external_ids`, optional `fields_to_export`; users in the profile store's
export shape, unknown ids in `invalid_user_ids`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from rpi2braze.sandbox.profiles import ProfileStore

INPUT_ARRAYS = ("attributes", "events", "purchases")
EXPORT_MAX_IDS = 50
NO_DATA_MESSAGE = "Valid data must be provided in the 'attributes', 'events', or 'purchases' fields."
MAX_INPUT_MESSAGE = "Max Input Length Exceeded"


@dataclass(frozen=True)
class Reply:
    """An HTTP answer. Status 0 means: close the connection without answering."""

    status: int
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()

    def with_headers(self, headers: tuple[tuple[str, str], ...]) -> "Reply":
        return Reply(self.status, self.body, self.headers + headers)


def fatal(status: int, message: str) -> Reply:
    """A fatal error in Braze's shape: the message, repeated as the single error item."""
    return Reply(status, {"message": message, "errors": [{"message": message}]})


def track(store: ProfileStore, payload: Any, max_objects: int) -> Reply:
    """Given the decoded body of a /users/track request, apply it to `store` and return Braze's answer."""
    problem = _track_shape_problem(payload)
    if problem:
        return fatal(400, problem)
    sent = [name for name in INPUT_ARRAYS if name in payload]
    total = sum(len(payload[name]) for name in sent)
    if total > max_objects:
        return fatal(400, MAX_INPUT_MESSAGE)
    appliers: dict[str, Callable[[Any], dict | None]] = {
        "attributes": store.apply, "events": store.apply_event, "purchases": store.apply_purchase,
    }
    body: dict[str, Any] = {"message": "success"}
    errors: list[dict] = []
    for name in sent:
        failed = _apply_all(appliers[name], payload[name], errors)
        body[f"{name}_processed"] = len(payload[name]) - failed
    if errors:
        body["errors"] = errors
    return Reply(201, body)


def _track_shape_problem(payload: Any) -> str | None:
    if not isinstance(payload, dict) or not any(name in payload for name in INPUT_ARRAYS):
        return NO_DATA_MESSAGE
    for name in INPUT_ARRAYS:
        if name in payload and not isinstance(payload[name], list):
            return f"'{name}' must be an array"
    return None


def _apply_all(apply: Callable[[Any], dict | None], objects: list, errors: list[dict]) -> int:
    failed = 0
    for index, obj in enumerate(objects):
        error = apply(obj)
        if error:
            errors.append({**error, "index": index})
            failed += 1
    return failed


def external_ids_of(payload: Any) -> tuple[str, ...]:
    """Every string `external_id` in a /users/track body, in request order, repeats kept."""
    if not isinstance(payload, dict):
        return ()
    return tuple(
        obj["external_id"]
        for name in INPUT_ARRAYS if isinstance(payload.get(name), list)
        for obj in payload[name] if isinstance(obj, dict) and isinstance(obj.get("external_id"), str)
    )


def object_count_of(payload: Any) -> int:
    if not isinstance(payload, dict):
        return 0
    return sum(len(payload[name]) for name in INPUT_ARRAYS if isinstance(payload.get(name), list))


def export_ids(store: ProfileStore, payload: Any) -> Reply:
    """Given the decoded body of a /users/export/ids request, return the users it names."""
    problem = _export_shape_problem(payload)
    if problem:
        return fatal(400, problem)
    fields = payload.get("fields_to_export")
    users, invalid = [], []
    for external_id in payload["external_ids"]:
        profile = store.get(external_id)
        if profile is None:
            invalid.append(external_id)
        else:
            users.append(profile if fields is None else {key: profile[key] for key in fields if key in profile})
    return Reply(200, {"users": users, "invalid_user_ids": invalid, "message": "success"})


def _export_shape_problem(payload: Any) -> str | None:
    if not isinstance(payload, dict) or not _is_string_list(payload.get("external_ids")):
        return "'external_ids' must be an array of strings"
    if len(payload["external_ids"]) > EXPORT_MAX_IDS:
        return f"'external_ids' may hold at most {EXPORT_MAX_IDS} ids"
    if "fields_to_export" in payload and not _is_string_list(payload["fields_to_export"]):
        return "'fields_to_export' must be an array of strings"
    return None


def _is_string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)

