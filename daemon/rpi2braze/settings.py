"""The validated configuration, as frozen values. `config.py` builds these from YAML.

Defaults are the named constants below; `config/*.yaml` documents every key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from rpi2braze.model import ChannelMode
from rpi2braze.secret import Secret

DEFAULT_CONFIG_PATH = "/etc/rpi2braze/config.yaml"
DEFAULT_STATE_PATH = "/var/lib/rpi2braze/state.db"
DEFAULT_RATE_REQUESTS = 3000
DEFAULT_RATE_PER_SECONDS = 3.0
DEFAULT_CONCURRENCY = 16
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_OBJECTS = 75               # Braze: 75 objects combined per request
DEFAULT_MAX_REQUEST_BYTES = 4_000_000  # Braze: 4 MB payload
DEFAULT_SETTLE_SECONDS = 30.0
DEFAULT_SCAN_INTERVAL_SECONDS = 10.0
# Folders this big are read and mapped in child processes (children.py); ~80,000 rows of a typical export.
DEFAULT_PARSE_PROCESS_MIN_BYTES = 16_000_000
DEFAULT_DATA_FILES = ("RPI_Export_*.txt", "RPI_Export_*.csv", "RPI_Export_*.txt.gz", "RPI_Export_*.csv.gz")
DEFAULT_PHONE_REGION = "US"
RESEND_SOURCE = "resend"   # the source `rpi2braze resend` records its workflows under
RESERVED_SOURCE_NAMES = (RESEND_SOURCE,)
AD_HOC_SOURCE = "local"    # `process` on a folder below no configured source records it under this
DEFAULT_CHANNELS = {
    "Braze Onboarding and Upsert": ChannelMode.UPSERT,
    "Braze Append": ChannelMode.APPEND,
}
SOURCE_TYPES = ("local", "poll", "sftp", "ftp")
COLUMN_TYPES = ("string", "number", "boolean", "time")


@dataclass(frozen=True)
class RateLimit:
    requests: int = DEFAULT_RATE_REQUESTS
    per_seconds: float = DEFAULT_RATE_PER_SECONDS


@dataclass(frozen=True)
class BrazeSettings:
    rest_endpoint: str
    api_key: Secret
    allow_insecure_http: bool = False
    rate_limit: RateLimit = RateLimit()
    concurrency: int = DEFAULT_CONCURRENCY        # requests in flight, at most
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    max_objects_per_request: int = DEFAULT_MAX_OBJECTS
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    ca_file: str | None = None                    # extra CA bundle for a TLS-intercepting proxy


@dataclass(frozen=True)
class ReadingSettings:
    """How export files are parsed. "auto" sniffs."""

    delimiter: str = "auto"      # auto | "," | "\t" | "|" | ";"
    encoding: str = "auto"       # auto (UTF-8, BOM-sniffed UTF-8/UTF-16) | any Python codec name
    skip_lines: int = 0          # lines before the header (RPI custom header lines)
    quoting: str = "standard"    # standard: "..." may hold delimiters and line breaks | none: " is a character


@dataclass(frozen=True)
class SourceSettings:
    name: str
    type: str                                   # one of SOURCE_TYPES
    path: str                                   # base folder: <path>/<Channel>/<Offer>/<Workflow ID>/
    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    scan_interval_seconds: float = DEFAULT_SCAN_INTERVAL_SECONDS
    marker_file: str | None = None              # a file whose presence means "complete now"
    data_files: tuple[str, ...] = DEFAULT_DATA_FILES
    archive_path: str | None = None             # delivered folders are moved here; None: left in place
    quarantine_path: str | None = None          # unreadable folders are moved here; None: left in place
    ignore_folders_before: float | None = None  # epoch seconds: folders whose data files are all older are left alone
    reading: ReadingSettings = ReadingSettings()
    # remote sources (sftp, ftp)
    host: str | None = None
    port: int | None = None
    username: str | None = None
    password: Secret | None = None
    private_key_file: str | None = None
    private_key_passphrase: Secret | None = None
    known_hosts_file: str | None = None
    accept_new_host_keys: bool = False
    tls: bool = True                            # ftp: explicit FTPS (AUTH TLS); false sends the password in clear
    tls_verify: bool = True
    ca_file: str | None = None
    staging_path: str | None = None             # remote files are downloaded here before reading


@dataclass(frozen=True)
class MappingSettings:
    default_phone_region: str = DEFAULT_PHONE_REGION
    types: dict[str, str] = field(default_factory=dict)     # normalised column name -> COLUMN_TYPES
    fields: dict[str, str] = field(default_factory=dict)    # normalised column name -> Braze field
    prepended_columns: str = "auto"                         # auto | header | none


@dataclass(frozen=True)
class HttpSettings:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8787
    token: Secret | None = None
    post_execution_source: str | None = None   # the source whose base the RPI call points into


@dataclass(frozen=True)
class StateSettings:
    path: str = DEFAULT_STATE_PATH

    @property
    def directory(self) -> str:
        """The state file's folder, which also holds the dead-letter files, quarantine reasons and locks."""
        return os.path.dirname(os.path.abspath(self.path))


@dataclass(frozen=True)
class Settings:
    braze: BrazeSettings
    state: StateSettings
    sources: tuple[SourceSettings, ...]
    channels: dict[str, ChannelMode] = field(default_factory=lambda: dict(DEFAULT_CHANNELS))
    mapping: MappingSettings = MappingSettings()
    http: HttpSettings | None = None
    workers: int = 2                            # folders delivered at once (and one more, small folders only)
    parse_process_min_bytes: int = DEFAULT_PARSE_PROCESS_MIN_BYTES   # 0: every folder in child processes
    log_level: str = "info"
    log_format: str = "json"                    # json | console
