"""RPI's Post Execution call: the JSON body its "HTTP Post/JSON" action sends once a channel
execution is written (reference/redpoint-rpi.md §2), checked for shape only; the daemon's
callback turns it into a folder below a source's base.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

MAX_BODY_BYTES = 64 * 1024          # RPI's body is well under 1 KiB; anything near this is not RPI
MAX_FIELD_LENGTH = 255              # a path component cannot be longer on common filesystems
REQUIRED_FIELDS = ("workflowAssociationInstanceID", "channelName", "offerName")
OPTIONAL_FIELDS = ("interactionID", "workflowAssociationID", "dataflowID", "activityName",
                   "channelOfferName", "channelExecutionID", "clientID")


@dataclass(frozen=True)
class PostExecution:
    """RPI's Post Execution call. Field names are RPI's JSON keys verbatim, so the mapping needs no
    table. Values are strings (RPI sends strings; integers are accepted and converted)."""

    workflowAssociationInstanceID: str
    channelName: str
    offerName: str
    interactionID: str | None = None
    workflowAssociationID: str | None = None
    dataflowID: str | None = None
    activityName: str | None = None
    channelOfferName: str | None = None
    channelExecutionID: str | None = None
    clientID: str | None = None

    @property
    def folder_relpath(self) -> str:
        """The export folder this call announces, relative to the source base. Not yet checked:
        pass it through sources.base.safe_join before touching the filesystem."""
        return f"{self.channelName}/{self.offerName}/{self.workflowAssociationInstanceID}"


def parse_post_execution(body: bytes) -> PostExecution:
    """Given the raw request body, return the PostExecution it describes.

    Raise ValueError, with a reason fit to send back to the caller, if the body is too large, not
    JSON, not an object, lacks a required field, or has a field that is empty or not a string or an
    integer. Unknown keys are ignored: RPI versions differ in what they send.
    """
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"body is larger than {MAX_BODY_BYTES} bytes")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError("body must be a JSON object")
    values = {name: _field(document, name, required=True) for name in REQUIRED_FIELDS}
    values.update({name: _field(document, name, required=False) for name in OPTIONAL_FIELDS})
    return PostExecution(**values)


def _field(document: dict[str, Any], name: str, required: bool) -> str | None:
    """Return `document[name]` as a string; None for an absent or empty optional field."""
    value = document.get(name)
    # bool is an int subclass, and true/false is never an RPI name or ID.
    if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
        raise ValueError(f"field {name!r} must be a string or an integer, not {type(value).__name__}")
    text = "" if value is None else str(value)
    if not text.strip():
        if required:
            raise ValueError(f"missing required field {name!r}" if value is None else f"field {name!r} is empty")
        return None
    if len(text) > MAX_FIELD_LENGTH:
        raise ValueError(f"field {name!r} is longer than {MAX_FIELD_LENGTH} characters")
    return text
