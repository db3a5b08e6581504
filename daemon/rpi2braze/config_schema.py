"""The config file's key table: every key, its type, bounds and a one-line description, and the
same table as a JSON Schema (draft 2020-12) for editors (`check-config --print-schema`).

The description of each key is the one place its meaning is written down in code; the example
files in config/ say the same at more length.
"""

from __future__ import annotations

from rpi2braze import settings
from rpi2braze.config_check import ListOf, MapOf, Scalar, Section
from rpi2braze.model import ChannelMode

SECRET_KEYS = ("api_key", "password", "private_key_passphrase", "token")  # each also as <key>_file
BRAZE_TARGETS = (
    "external_id", "first_name", "last_name", "email", "country", "dob", "gender", "home_city",
    "phone", "rpi_audience_outputs", "rpi_contact_ids", "rpi_channel_exec_ids",
)
LOCAL_TYPES = ("local", "poll")
DEFAULT_PORTS = {"sftp": 22, "ftp": 21}
REMOTE_REQUIRED = ("host", "username")
_JSON_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "time": "string"}


def text(doc: str, choices: tuple[str, ...] = (), secret: bool = False) -> Scalar:
    return Scalar("str", doc, choices=choices, secret=secret)


def integer(doc: str, minimum: int, maximum: int | None = None) -> Scalar:
    return Scalar("int", doc, minimum=minimum, maximum=maximum)


def seconds(doc: str, maximum: float, above: float | None = 0, minimum: float | None = None) -> Scalar:
    return Scalar("float", doc, above=above, minimum=minimum, maximum=maximum)


def flag(doc: str) -> Scalar:
    return Scalar("bool", doc)


def secret_pair(key: str, doc: str) -> dict[str, Scalar]:
    """The keys `key` (the secret itself, usually ${VAR}) and `key_file` (a file holding it)."""
    return {key: text(f"{doc}; write ${{VAR}} rather than the value", secret=True),
            f"{key}_file": text(f"file holding the {doc} (one trailing newline is ignored)")}


BRAZE = Section({
    "rest_endpoint": text("your instance's REST endpoint, e.g. https://rest.iad-01.braze.com (no path)"),
    **secret_pair("api_key", "REST API key with the users.track permission"),
    "allow_insecure_http": flag("allow an http:// rest_endpoint (the local sandbox only)"),
    "rate_limit": Section({
        "requests": integer("requests allowed per window", 1),
        "per_seconds": seconds("window length in seconds", 86_400),
    }, "the rate limit shared by every sender (Braze: 3000 requests per 3 seconds)"),
    "concurrency": integer("requests in flight, at most", 1, 1024),
    "timeout_seconds": seconds("timeout of one request", 3600),
    "max_objects_per_request": integer("attribute objects per request (Braze: 75)", 1,
                                       settings.DEFAULT_MAX_OBJECTS),
    "max_request_bytes": integer("request body size limit (Braze: 4 MB)", 1024,
                                 settings.DEFAULT_MAX_REQUEST_BYTES),
    "ca_file": text("extra CA bundle (PEM) for a TLS-intercepting proxy"),
}, "the Braze workspace to deliver to", required=("rest_endpoint",))

READING = Section({
    "delimiter": text('field delimiter: auto sniffs; "," "\\t" "|" ";"', ("auto", ",", "\t", "|", ";")),
    "encoding": text("auto (UTF-8, BOM-sniffed UTF-8/UTF-16) or a Python codec name"),
    "skip_lines": integer("lines before the header row (RPI custom header lines)", 0, 1000),
    "quoting": text('standard: a field in "double quotes" may hold delimiters and line breaks; '
                    'none: a quote is an ordinary character (exports without a text qualifier)',
                    ("standard", "none")),
}, "how export files are parsed")

SOURCE = Section({
    "name": Scalar("str", "unique name of this source (letters, digits, . _ -)",
                   pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$"),
    "type": text("local (inotify + rescan), poll (network mounts), sftp or ftp", settings.SOURCE_TYPES),
    "path": text("base folder: <path>/<Channel>/<Offer>/<Workflow ID>/ (RPDM's BASE_OUTPUT_DIRECTORY)"),
    "settle_seconds": seconds("a folder unchanged this long is complete", 86_400, above=None, minimum=0),
    "scan_interval_seconds": seconds("time between two full scans", 86_400),
    "marker_file": text("a file name whose presence marks a folder complete at once"),
    "data_files": ListOf(text("a glob"), "globs naming the data files of a workflow folder"),
    "archive_path": text("delivered folders are moved below it; absent: left in place"),
    "ignore_folders_before": Scalar("time", "folders whose data files are all older than this moment are "
                                            "left alone (a cutover from another tool: e.g. 2026-12-01T00:00:00Z)"),
    "quarantine_path": text("unreadable folders are moved below it; absent: left in place"),
    "reading": READING,
    "host": text("server name or address (sftp, ftp)"),
    "port": integer("server port (default: sftp 22, ftp 21)", 1, 65_535),
    "username": text("login name (sftp, ftp)"),
    **secret_pair("password", "login password (sftp, ftp)"),
    "private_key_file": text("SSH private key (sftp)"),
    **secret_pair("private_key_passphrase", "passphrase of the private key (sftp)"),
    "known_hosts_file": text("OpenSSH known_hosts file; unknown or changed host keys are refused (sftp)"),
    "accept_new_host_keys": flag("trust a host key not yet in known_hosts_file on first use (sftp)"),
    "tls": flag("explicit FTPS: AUTH TLS before login (ftp; default true; false sends the password in clear)"),
    "tls_verify": flag("verify the server's TLS certificate (ftp; default true)"),
    "ca_file": text("CA bundle (PEM) to verify the FTPS server with (ftp)"),
    "staging_path": text("local folder remote files are downloaded to before reading (sftp, ftp)"),
}, "one place export folders appear", required=("name", "type", "path"))

_COMMON_SOURCE_KEYS = ("name", "type", "path", "settle_seconds", "scan_interval_seconds", "marker_file",
                       "data_files", "archive_path", "quarantine_path", "reading", "ignore_folders_before")
_REMOTE_SOURCE_KEYS = _COMMON_SOURCE_KEYS + ("host", "port", "username", "password", "password_file",
                                             "staging_path")
SOURCE_KEYS_BY_TYPE = {
    "local": _COMMON_SOURCE_KEYS,
    "poll": _COMMON_SOURCE_KEYS,
    "sftp": _REMOTE_SOURCE_KEYS + ("private_key_file", "private_key_passphrase",
                                   "private_key_passphrase_file", "known_hosts_file",
                                   "accept_new_host_keys"),
    "ftp": _REMOTE_SOURCE_KEYS + ("tls", "tls_verify", "ca_file"),
}

HTTP = Section({
    "listen": text("host:port to listen on, e.g. 127.0.0.1:8787 or [::1]:8787; port 0 picks a free one"),
    **secret_pair("token", "bearer token required by POST /rpi/post-execution"),
    "post_execution_source": text("source whose base RPI's Post-Execution call points into "
                                  "(default: the first local or poll source)"),
}, "optional HTTP listener: POST /rpi/post-execution, GET /metrics, GET /healthz; off when absent")

MAPPING = Section({
    "default_phone_region": text("ISO 3166 alpha-2 region for phone numbers without +country code, after the row's "
                                 "country (default US)"),
    "types": MapOf(text("column type", settings.COLUMN_TYPES),
                   "column name (any spelling) -> type of its rpi_cdp_attributes value"),
    "fields": MapOf(text("Braze field", BRAZE_TARGETS), "column name (any spelling) -> Braze field"),
    "prepended_columns": text("RPI's two prepended columns: auto-detect, always named in the header, "
                              "or none", ("auto", "header", "none")),
}, "how export columns become Braze attributes")

CONFIG = Section({
    "braze": BRAZE,
    "state": Section({"path": text("SQLite state file (default: $STATE_DIRECTORY/state.db, else "
                                   f"{settings.DEFAULT_STATE_PATH})")}, "where progress is recorded"),
    "sources": ListOf(SOURCE, "places export folders appear"),
    "http": HTTP,
    "channels": MapOf(text("what the channel does", tuple(mode.value for mode in ChannelMode)),
                      "RPI channel folder name -> upsert (create or update) or append (update only)",
                      non_empty=True),
    "mapping": MAPPING,
    "workers": integer("workflow folders delivered at once, plus one worker for folders under 16 MB "
                       "(they never wait behind big ones)", 1, 64),
    "parse_process_min_bytes": integer(
        "folders of at least this many bytes are read and mapped in child processes, leaving this "
        f"one's core to sending (default {settings.DEFAULT_PARSE_PROCESS_MIN_BYTES}; 0: every folder)", 0),
    "log": Section({
        "level": text("log level", ("debug", "info", "warning", "error", "critical")),
        "format": text("json lines (journald) or console (a terminal)", ("json", "console")),
    }, "logging"),
}, "rpi2braze configuration", required=("braze", "sources"))


def json_schema() -> dict:
    """Return the config file's JSON Schema (draft 2020-12), with the per-source-type rules."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "title": "rpi2braze configuration", **_render(CONFIG)}
    properties = schema["properties"]
    properties["braze"]["oneOf"] = [{"required": ["api_key"]}, {"required": ["api_key_file"]}]
    for section in (properties["braze"], properties["http"], properties["sources"]["items"]):
        section["allOf"] = [{"not": {"required": [key, f"{key}_file"]}}
                            for key in SECRET_KEYS if key in section["properties"]]
    properties["sources"]["items"]["allOf"] += [_source_type_rule(kind) for kind in SOURCE_KEYS_BY_TYPE]
    return schema


def _source_type_rule(kind: str) -> dict:
    then: dict = {"propertyNames": {"enum": list(SOURCE_KEYS_BY_TYPE[kind])}}
    if kind not in LOCAL_TYPES:
        then["required"] = list(REMOTE_REQUIRED)
    return {"if": {"properties": {"type": {"const": kind}}, "required": ["type"]}, "then": then}


def _render(spec: Scalar | ListOf | MapOf | Section) -> dict:
    if isinstance(spec, Section):
        schema = {"type": "object", "description": spec.doc, "additionalProperties": False,
                  "properties": {key: _render(child) for key, child in spec.keys.items()}}
        return {**schema, "required": list(spec.required)} if spec.required else schema
    if isinstance(spec, ListOf):
        return {"type": "array", "description": spec.doc, "minItems": 1, "items": _render(spec.item)}
    if isinstance(spec, MapOf):
        return {"type": "object", "description": spec.doc, "minProperties": int(spec.non_empty),
                "additionalProperties": _render(spec.value)}
    return _render_scalar(spec)


def _render_scalar(spec: Scalar) -> dict:
    schema: dict = {"type": _JSON_TYPES[spec.kind], "description": spec.doc}
    if spec.kind == "str":
        schema["minLength"] = 1
    if spec.kind == "time":
        schema["format"] = "date-time"
    if spec.choices:
        schema["enum"] = list(spec.choices)
    if spec.pattern:
        schema["pattern"] = spec.pattern
    for keyword, bound in (("minimum", spec.minimum), ("maximum", spec.maximum), ("exclusiveMinimum", spec.above)):
        if bound is not None:
            schema[keyword] = bound
    if spec.kind == "str":
        return schema
    # `port: ${SFTP_PORT}` is text until it is substituted
    return {"description": spec.doc, "anyOf": [schema, {"type": "string", "pattern": r"\$\{"}]}
