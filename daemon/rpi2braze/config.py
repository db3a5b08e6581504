"""Read the YAML config file into validated `Settings`, reporting every problem at once.

The key table is `config_schema.py`; this module reads the YAML, applies the rules that join
several keys (a secret or its *_file, the keys each source type needs, unique source names), turns
relative paths into absolute ones against the config file's folder, and builds the frozen values.
No secret value ever enters a problem message.
"""

from __future__ import annotations

import io
import ipaddress
import os
import re
import ssl
import time
import urllib.parse
from typing import Mapping

import phonenumbers

from rpi2braze import braze_client, normalize, settings
from rpi2braze.config_check import INVALID, Checked, Checker, describe, key_path, substitute
from rpi2braze.config_schema import CONFIG, DEFAULT_PORTS, LOCAL_TYPES, REMOTE_REQUIRED, SOURCE_KEYS_BY_TYPE
from rpi2braze.config_schema import json_schema  # noqa: F401  (part of this module's API)
from rpi2braze.errors import ConfigError
from rpi2braze.model import ChannelMode
from rpi2braze.secret import Secret
from rpi2braze.settings import (BrazeSettings, HttpSettings, MappingSettings, RateLimit, ReadingSettings,
                                Settings, SourceSettings, StateSettings)
from rpi2braze.yaml_load import parse_yaml

CONFIG_ENVIRONMENT_VARIABLE = "RPI2BRAZE_CONFIG"
_ONE_VARIABLE = re.compile(r"\$\{[^}]*\}")
_SECTIONS = list(CONFIG.keys)
_LISTEN = re.compile(r"\[(?P<ipv6>[0-9A-Fa-f:.]+)\]:(?P<port6>\d{1,5})|(?P<host>[^:\[\]\s]+):(?P<port>\d{1,5})")


def resolve_config_path(cli_value: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """Return the config file to read: the -c value, else $RPI2BRAZE_CONFIG, else the default."""
    return cli_value or environ.get(CONFIG_ENVIRONMENT_VARIABLE) or settings.DEFAULT_CONFIG_PATH


def load_settings(path: str, environ: Mapping[str, str] = os.environ) -> Settings:
    """Given a config file, return its `Settings`. Relative paths in it are relative to its folder.
    Raise ConfigError listing every problem if the file cannot be read or is invalid."""
    return parse_settings(_read_document(path), environ, base_dir=os.path.dirname(os.path.abspath(path)))


def load_state_settings(path: str, environ: Mapping[str, str] = os.environ) -> StateSettings:
    """Given a config file, return where its state file is, reading only the `state:` section, so
    that `status` and `retry` work in a shell without the service's secrets and credentials.
    Raise ConfigError if the file cannot be read or that section is invalid."""
    document = _read_document(path)
    if not isinstance(document, dict):
        raise _not_a_mapping(document)
    section = document.get("state", {})
    checker = Checker(environ)
    values = CONFIG.keys["state"].check(section if section is not None else {}, "state", checker)
    if checker.problems:
        raise ConfigError(sorted(checker.problems))
    return _state(values, environ, os.path.dirname(os.path.abspath(path)))


def configured_source_names(path: str, environ: Mapping[str, str] = os.environ) -> frozenset[str] | None:
    """The names of the sources a config file lists, read without checking the rest (no secrets
    needed): what `retry` needs to know whether the daemon ever looks at a workflow's folder.
    None if a name cannot be worked out here (a ${VAR} this shell does not set)."""
    document = _read_document(path)
    sources = document.get("sources") if isinstance(document, dict) else None
    checker, names = Checker(environ), set()
    for index, source in enumerate(sources if isinstance(sources, list) else ()):
        name = source.get("name") if isinstance(source, dict) else None
        if isinstance(name, str) and "$" in name:
            name = substitute(name, f"sources[{index}].name", checker, secret=False)
            if name is INVALID:
                return None
        if isinstance(name, str):
            names.add(name)
    return frozenset(names)


def _not_a_mapping(document: object) -> ConfigError:
    return ConfigError([f"(top level): must be a mapping (braze: ..., sources: ...), not {describe(document)}"])


def _read_document(path: str) -> object:
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as error:
        raise ConfigError([f"{path}: cannot read: {error.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: is not UTF-8 text"]) from None
    return parse_yaml(text, path)


def parse_settings(document: object, environ: Mapping[str, str] = os.environ, base_dir: str = ".") -> Settings:
    """Given a parsed YAML document, return its `Settings`; relative paths are joined to `base_dir`.
    Raise ConfigError listing every problem."""
    if document is None:
        raise ConfigError(["(top level): the configuration is empty"])
    if not isinstance(document, dict):
        raise _not_a_mapping(document)
    checker = Checker(environ)
    values = CONFIG.check(document, "", checker)
    built = _settings(values, checker, os.path.abspath(base_dir))
    if checker.problems:
        raise ConfigError(sorted(checker.problems, key=_section_rank))
    return built


def _section_rank(problem: str) -> int:
    """Group problems by top-level key, in the key table's order; unknown keys last."""
    section = re.split(r"[.\[:]", problem, maxsplit=1)[0]
    return _SECTIONS.index(section) if section in _SECTIONS else len(_SECTIONS)


def _settings(values: Checked, checker: Checker, base_dir: str) -> Settings:
    """Build Settings from checked values, adding the problems of rules that join keys. With
    problems the result is incomplete and only the problems count."""
    sources = tuple(_source(source, f"sources[{index}]", checker, base_dir)
                    for index, source in enumerate(values.get("sources", [])))
    _check_unique_names(sources, checker)
    return Settings(
        braze=_braze(values["braze"], checker, base_dir) if "braze" in values else None,
        state=_state(values.get("state", {}), checker.environ, base_dir),
        sources=sources,
        http=_http(values["http"], sources, checker, base_dir) if "http" in values else None,
        channels=_channels(values.get("channels"), checker),
        mapping=_mapping(values.get("mapping", Checked({}, frozenset())), checker),
        **_pick(values, "workers", "parse_process_min_bytes"),
        **{f"log_{key}": value for key, value in values.get("log", {}).items()},  # level, format
    )


def _braze(values: Checked, checker: Checker, base_dir: str) -> BrazeSettings:
    ca_file = _local_path(values.get("ca_file"), base_dir)
    if ca_file is not None:
        _check_ca_file(ca_file, "braze.ca_file", checker)
    endpoint = _endpoint(values.get("rest_endpoint"), values.get("allow_insecure_http", False), checker)
    if endpoint and (problem := braze_client.proxy_problem(endpoint)):   # at start, not at the first request
        checker.add("braze.rest_endpoint", f"its proxy: {problem}")
    return BrazeSettings(
        rest_endpoint=endpoint,
        api_key=_header_value(_secret(values, "api_key", "braze", checker, base_dir, required=True),
                              "braze.api_key", checker),
        rate_limit=RateLimit(**values.get("rate_limit", {})),
        ca_file=ca_file,
        **_pick(values, "allow_insecure_http", "concurrency", "timeout_seconds", "max_objects_per_request",
                "max_request_bytes"),
    )


def _check_ca_file(ca_file: str, path: str, checker: Checker) -> None:
    """Record a problem unless `ca_file` holds a PEM certificate TLS can verify with."""
    try:
        ssl.create_default_context().load_verify_locations(cafile=ca_file)
    except OSError as error:   # ssl.SSLError is one: the file is there but holds no certificate
        reason = error.strerror if not isinstance(error, ssl.SSLError) else f"no PEM certificate in it ({error.reason})"
        checker.add(path, f"cannot use {ca_file}: {reason}")
    except ValueError:   # a NUL in the path
        checker.add(path, f"{ca_file!r} is not a usable path")


def _endpoint(url: str | None, allow_http: bool, checker: Checker) -> str:
    """Return the endpoint as scheme://host[:port], or "" after recording why it is unusable."""
    if url is None:
        return ""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError:
        parts = urllib.parse.urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problem = "must be a URL like https://rest.iad-01.braze.com"
    elif parts.username is not None:
        problem = "must not hold a user name or password"
    elif parts.path not in ("", "/") or parts.query or parts.fragment:
        problem = "must be the endpoint alone, without a path, like https://rest.iad-01.braze.com"
    elif parts.scheme == "http" and not allow_http:
        problem = "http:// needs allow_insecure_http: true"
    else:
        return f"{parts.scheme}://{parts.netloc}"
    checker.add("braze.rest_endpoint", problem)
    return ""


def _state(values: Mapping, environ: Mapping[str, str], base_dir: str) -> StateSettings:
    """The state file: as given, else in systemd's $STATE_DIRECTORY (its first entry), else the default."""
    if "path" in values:
        return StateSettings(path=_local_path(values["path"], base_dir))
    directory = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return StateSettings(path=os.path.join(directory, "state.db")) if directory else StateSettings()


def _source(values: Checked, path: str, checker: Checker, base_dir: str) -> SourceSettings | None:
    kind = values.get("type")
    if kind is None:
        return None
    _check_source_keys(values, kind, path, checker)
    on_server = kind not in LOCAL_TYPES  # these paths are on the server, not beside the config

    def place(key: str) -> str | None:
        return values.get(key) if on_server else _local_path(values.get(key), base_dir)

    if values.get("ignore_folders_before", 0) > time.time():   # every export until then: ignored
        checker.add(key_path(path, "ignore_folders_before"), "is in the future: every export written "
                    "before then would be left alone; set it when the other tool stops")
    if "ca_file" in values.given:   # as the FTPS connection will load it, not at the first scan
        _check_ca_file(_local_path(values.get("ca_file"), base_dir), key_path(path, "ca_file"), checker)
    return SourceSettings(
        name=values.get("name", ""), type=kind, path=place("path") or "",
        archive_path=place("archive_path"), quarantine_path=place("quarantine_path"),
        reading=_reading(values.get("reading", {}), key_path(path, "reading"), checker),
        port=values.get("port", DEFAULT_PORTS.get(kind)),
        password=_secret(values, "password", path, checker, base_dir, required=kind == "ftp"),
        private_key_passphrase=_secret(values, "private_key_passphrase", path, checker, base_dir),
        **{key: _local_path(values.get(key), base_dir)
           for key in ("private_key_file", "known_hosts_file", "ca_file", "staging_path")},
        data_files=tuple(values.get("data_files", settings.DEFAULT_DATA_FILES)),
        **_pick(values, "settle_seconds", "scan_interval_seconds", "marker_file", "host", "username",
                "accept_new_host_keys", "tls", "tls_verify", "ignore_folders_before"),
    )


def _check_source_keys(values: Checked, kind: str, path: str, checker: Checker) -> None:
    """Report keys this source type does not use, and the keys it needs that are missing."""
    for key in sorted(values.given - set(SOURCE_KEYS_BY_TYPE[kind])):
        checker.add(key_path(path, key), f"is not used by {kind} sources")
    if kind in LOCAL_TYPES:
        return
    for key in REMOTE_REQUIRED:
        if key not in values.given:
            checker.add(key_path(path, key), f"is required for {kind} sources")
    if kind == "sftp" and not values.given & {"private_key_file", "password", "password_file"}:
        checker.add(path, "sftp sources need private_key_file, password or password_file")
    if kind == "sftp" and "known_hosts_file" not in values.given and not values.get("accept_new_host_keys"):
        checker.add(key_path(path, "known_hosts_file"),
                    "is required for sftp sources unless accept_new_host_keys: true")


def _check_unique_names(sources: tuple[SourceSettings | None, ...], checker: Checker) -> None:
    first_index: dict[str, int] = {}
    for index, source in enumerate(sources):
        if source and source.name in first_index:
            checker.add(f"sources[{index}].name", f"{source.name!r} is already the name of "
                                                  f"sources[{first_index[source.name]}]")
        elif source and source.name in settings.RESERVED_SOURCE_NAMES:
            checker.add(f"sources[{index}].name", f"{source.name!r} is reserved: `rpi2braze resend` records "
                                                  "its workflows under that source")
        elif source and source.name:
            first_index[source.name] = index


def _reading(values: Mapping, path: str, checker: Checker) -> ReadingSettings:
    encoding = values.get("encoding", "auto")
    if encoding != "auto":
        try:   # as the reader opens files: unlike codecs.lookup, refuses codecs that are not text (base64)
            io.TextIOWrapper(io.BytesIO(), encoding=encoding)
        except LookupError:
            checker.add(key_path(path, "encoding"), f"{encoding!r} is not a text encoding Python knows, "
                                                    f"like utf-8 or cp1252")
    return ReadingSettings(**values)


def _http(values: Checked, sources: tuple[SourceSettings | None, ...], checker: Checker,
          base_dir: str) -> HttpSettings:
    target = values.get("post_execution_source")
    if target is not None and None not in sources and target not in [source.name for source in sources]:
        checker.add("http.post_execution_source", f"no source is named {target!r}")
    if target is None:
        target = next((source.name for source in sources if source and source.type in LOCAL_TYPES), None)
    settings = HttpSettings(
        token=_secret(values, "token", "http", checker, base_dir), post_execution_source=target,
        **_listen(values.get("listen"), checker),
    )
    if settings.token is None and not _is_loopback(settings.listen_host):
        # without a token anyone on the network could make the daemon read a folder before it is complete
        checker.add("http.token", f"required when http.listen is not a loopback address ({settings.listen_host})")
    return settings


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _listen(text: str | None, checker: Checker) -> dict:
    """Split "host:port" or "[v6]:port" into HttpSettings keywords; {} keeps the defaults."""
    if text is None:
        return {}
    match = _LISTEN.fullmatch(text)
    port = int(match["port6"] or match["port"]) if match else -1
    if not 0 <= port <= 65_535:
        checker.add("http.listen", "must be host:port (port 0-65535), like 127.0.0.1:8787 or [::1]:8787")
        return {}
    return {"listen_host": match["ipv6"] or match["host"], "listen_port": port}


def _channels(channels: dict | None, checker: Checker) -> dict[str, ChannelMode]:
    if channels is None:
        return dict(settings.DEFAULT_CHANNELS)
    for name in channels:
        if "/" in name or "\\" in name or name.strip() in (".", ".."):
            checker.add(key_path("channels", name), "must be a folder name, without / or \\")
    return {name: ChannelMode(mode) for name, mode in channels.items()}


def _mapping(values: Checked, checker: Checker) -> MappingSettings:
    region = values.get("default_phone_region", settings.DEFAULT_PHONE_REGION).upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        checker.add("mapping.default_phone_region", f"{region!r} is not an ISO 3166 alpha-2 region, like US")
    return MappingSettings(
        default_phone_region=region,
        types=_columns(values.get("types", {}), "mapping.types", checker),
        fields=_columns(values.get("fields", {}), "mapping.fields", checker),
        **_pick(values, "prepended_columns"),
    )


def _columns(by_column: dict[str, str], path: str, checker: Checker) -> dict[str, str]:
    """Key a column table by normalised column name; two spellings of one column are a problem."""
    result: dict[str, str] = {}
    spelling: dict[str, str] = {}
    for key, value in by_column.items():
        name = normalize.header_key(key)  # the key the mapper matches headers by
        if not name:
            checker.add(key_path(path, key), "is not a column name")
        elif name in spelling:
            checker.add(key_path(path, key), f"names the same column as {spelling[name]!r}")
        else:
            result[name], spelling[name] = value, key
    return result


def _secret(values: Checked, key: str, path: str, checker: Checker, base_dir: str,
            required: bool = False) -> Secret | None:
    """Return the secret given as `key` (inline, usually ${VAR}) or read from `key`_file; None if
    neither. Record a problem for both, for neither when required, or for an unreadable file."""
    file_key = f"{key}_file"
    if key in values.given and file_key in values.given:
        checker.add(key_path(path, file_key), f"give {key} or {file_key}, not both")
        return None
    if file_key in values:
        filename = _local_path(values[file_key], base_dir)
        written = values.written.get(file_key, "")
        # a path that is one ${VAR} may be the secret itself, put in the *_file key by mistake
        shown = f"{written} (the path it makes is not shown)" if _ONE_VARIABLE.fullmatch(written) else filename
        return _read_secret(filename, shown, key_path(path, file_key), checker)
    if key in values:
        return Secret(values[key])
    if required and not values.given & {key, file_key}:
        checker.add(key_path(path, key), f"is required (or {file_key})")
    return None


def _header_value(secret: Secret | None, path: str, checker: Checker) -> Secret | None:
    """The secret without surrounding whitespace (a Windows line end, a blank last line), or None
    after recording a problem if it holds anything an HTTP header cannot carry as it is: a key
    with a line break would reach an error message with the whole header."""
    if secret is None:
        return None
    value = secret.reveal().strip()
    if not value or not value.isascii() or not value.isprintable() or " " in value:
        checker.add(path, "must be printable ASCII without spaces or line breaks, as Braze's REST API "
                          "keys are (the value is not shown)")
        return None
    return Secret(value)


def _read_secret(filename: str, shown: str, path: str, checker: Checker) -> Secret | None:
    """Return the secret in `filename`, or None after recording a problem that names the file as `shown`."""
    try:
        with open(filename, encoding="utf-8", newline="") as stream:
            value = stream.read()
    except OSError as error:
        checker.add(path, f"cannot read {shown}: {error.strerror}")
        return None
    except UnicodeDecodeError:
        checker.add(path, f"{shown} is not UTF-8 text")
        return None
    value = value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")  # as `echo` leaves it
    if not value:
        checker.add(path, f"{shown} is empty")
        return None
    return Secret(value)


def _local_path(value: str | None, base_dir: str) -> str | None:
    """A path on this machine; a relative one is relative to the config file's folder."""
    return None if value is None else os.path.normpath(os.path.join(base_dir, value))


def _pick(values: Mapping, *keys: str) -> dict:
    """The given values among `keys`, so absent keys keep the dataclass defaults."""
    return {key: values[key] for key in keys if values.get(key) is not None}
