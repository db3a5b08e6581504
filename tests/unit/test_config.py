"""The config loader: every kind of problem with its key path, all at once; secrets never shown;
${VAR} and *_file secrets; defaults; relative paths; the example configs; the JSON Schema."""

import copy
import glob
import json
import os
import re
import shutil

import certifi
import pytest
import yaml

from rpi2braze import settings
from rpi2braze.config import json_schema, load_settings, load_state_settings, parse_settings, resolve_config_path
from rpi2braze.config_schema import CONFIG
from rpi2braze.errors import ConfigError
from rpi2braze.model import ChannelMode
from rpi2braze.secret import Secret

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "config")
EXAMPLES = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))
ENV = {"BRAZE_API_KEY": "key-from-env"}
DELETE = object()
MINIMAL = {
    "braze": {"rest_endpoint": "https://rest.iad-01.braze.com", "api_key": "${BRAZE_API_KEY}"},
    "sources": [{"name": "rpi", "type": "local", "path": "/rpi"}],
}
SFTP = {"name": "remote", "type": "sftp", "host": "sftp.example.com", "username": "u", "path": "/exports",
        "private_key_file": "/etc/key", "known_hosts_file": "/etc/known_hosts"}
FTP = {"name": "ftp", "type": "ftp", "host": "ftp.example.com", "username": "u", "path": "/out",
       "password": "${FTP_PASSWORD}"}


def document(*edits):
    """MINIMAL with edits applied: each is (key path tuple, value), DELETE removes the key."""
    result = copy.deepcopy(MINIMAL)
    for path, value in edits:
        parent = result
        for key in path[:-1]:
            parent = parent.setdefault(key, {}) if isinstance(parent, dict) else parent[key]
        if isinstance(value, dict):
            value = {key: item for key, item in value.items() if item is not DELETE}
        if value is DELETE:
            del parent[path[-1]]
        elif isinstance(parent, list) and path[-1] == len(parent):
            parent.append(value)
        else:
            parent[path[-1]] = value
    return result


def problems_of(doc, environ=ENV, base_dir="/etc/rpi2braze"):
    with pytest.raises(ConfigError) as raised:
        parse_settings(doc, environ, base_dir)
    return raised.value.problems


ONE_PROBLEM = [
    # braze
    ((("braze", "concurrency"), 0), "braze.concurrency: must be between 1 and 1024"),
    ((("braze", "concurrency"), "16"), "braze.concurrency: must be an integer, not a string"),
    ((("braze", "concurrency"), 2.5), "braze.concurrency: must be an integer, not a number"),
    ((("braze", "rate_limit", "requests"), 0), "braze.rate_limit.requests: must be >= 1"),
    ((("braze", "rate_limit", "per_seconds"), 0), "braze.rate_limit.per_seconds: must be > 0 and <= 86400"),
    ((("braze", "rate_limit"), [3000, 3]), "braze.rate_limit: must be a mapping, not a list"),
    ((("braze", "allow_insecure_http"), "yes"), "braze.allow_insecure_http: must be true or false, not a string"),
    ((("braze", "timeout_seconds"), 0), "braze.timeout_seconds: must be > 0 and <= 3600"),
    ((("braze", "max_objects_per_request"), 76), "braze.max_objects_per_request: must be between 1 and 75"),
    ((("braze", "max_request_bytes"), 4_000_001), "braze.max_request_bytes: must be between 1024 and 4000000"),
    ((("braze", "rest_endpoint"), "http://rest.iad-01.braze.com"),
     "braze.rest_endpoint: http:// needs allow_insecure_http: true"),
    ((("braze", "rest_endpoint"), "https://rest.iad-01.braze.com/users/track"),
     "braze.rest_endpoint: must be the endpoint alone, without a path, like https://rest.iad-01.braze.com"),
    ((("braze", "rest_endpoint"), "rest.iad-01.braze.com"),
     "braze.rest_endpoint: must be a URL like https://rest.iad-01.braze.com"),
    ((("braze", "rest_endpoint"), "ftp://rest.iad-01.braze.com"),
     "braze.rest_endpoint: must be a URL like https://rest.iad-01.braze.com"),
    ((("braze", "rest_endpoint"), "https://host:port"), "braze.rest_endpoint: must be a URL like https://rest.iad-01.braze.com"),
    ((("braze", "rest_endpoint"), "https://u:p@rest.iad-01.braze.com"),
     "braze.rest_endpoint: must not hold a user name or password"),
    ((("braze", "rest_endpoint"), DELETE), "braze.rest_endpoint: is required"),
    ((("braze", "api_key"), DELETE), "braze.api_key: is required (or api_key_file)"),
    ((("braze", "api_key_file"), "/etc/key"), "braze.api_key_file: give api_key or api_key_file, not both"),
    ((("braze", "api_key"), "${NOT_SET}"), "braze.api_key: environment variable NOT_SET is not set"),
    ((("braze", "api_key"), "${not valid}"), "braze.api_key: malformed ${...}: write ${NAME}, or $${ for a literal ${"),
    ((("braze", "api_key"), "abc${"), "braze.api_key: malformed ${...}: write ${NAME}, or $${ for a literal ${"),
    ((("braze", "api_key"), ""), "braze.api_key: must not be empty"),
    ((("braze", "api_kye"), "x"), "braze.api_kye: unknown key (did you mean api_key?)"),
    ((("braze",), DELETE), "braze: is required"),
    ((("braze",), "https://rest.iad-01.braze.com"), "braze: must be a mapping, not a string"),
    # top level
    ((("sorces",), []), "sorces: unknown key (did you mean sources?)"),
    ((("colour",), "blue"), "colour: unknown key"),
    ((("sources",), DELETE), "sources: is required"),
    ((("sources",), []), "sources: must not be empty"),
    ((("workers",), 0), "workers: must be between 1 and 64"),
    ((("workers",), 65), "workers: must be between 1 and 64"),
    ((("parse_process_min_bytes",), -1), "parse_process_min_bytes: must be >= 0"),
    ((("log", "level"), "verbose"), "log.level: must be one of 'debug', 'info', 'warning', 'error', 'critical', not 'verbose'"),
    ((("log", "format"), "text"), "log.format: must be one of 'json', 'console', not 'text'"),
    ((("state", "pth"), "x"), "state.pth: unknown key (did you mean path?)"),
    # sources
    ((("sources", 0, "settle_seconds"), -1), "sources[0].settle_seconds: must be between 0 and 86400"),
    ((("sources", 0, "scan_interval_seconds"), 0), "sources[0].scan_interval_seconds: must be > 0 and <= 86400"),
    ((("sources", 0, "type"), "smb"), "sources[0].type: must be one of 'local', 'poll', 'sftp', 'ftp', not 'smb'"),
    ((("sources", 0, "path"), ""), "sources[0].path: must not be empty"),
    ((("sources", 0, "path"), DELETE), "sources[0].path: is required"),
    ((("sources", 0, "name"), "two words"), "sources[0].name: must match ^[A-Za-z0-9][A-Za-z0-9._-]*$"),
    ((("sources", 0, "host"), "h"), "sources[0].host: is not used by local sources"),
    ((("sources", 0, "setle_seconds"), 3), "sources[0].setle_seconds: unknown key (did you mean settle_seconds?)"),
    ((("sources", 0, "data_files"), []), "sources[0].data_files: must not be empty"),
    ((("sources", 0, "data_files"), "*.txt"), "sources[0].data_files: must be a list, not a string"),
    ((("sources", 0, "data_files"), ["*.txt", 7]), "sources[0].data_files[1]: must be a string, not a number"),
    ((("sources", 0, "reading", "delimiter"), "x"),
     "sources[0].reading.delimiter: must be one of 'auto', ',', '\\t', '|', ';', not 'x'"),
    ((("sources", 0, "reading", "encoding"), "klingon"),
     "sources[0].reading.encoding: 'klingon' is not a text encoding Python knows, like utf-8 or cp1252"),
    ((("sources", 0, "reading", "encoding"), "base64"),
     "sources[0].reading.encoding: 'base64' is not a text encoding Python knows, like utf-8 or cp1252"),
    ((("sources", 0, "marker_file"), "done\x00"), "sources[0].marker_file: must not contain a NUL character"),
    ((("sources", 0, "path"), "/srv/\x00drop"), "sources[0].path: must not contain a NUL character"),
    ((("sources", 0, "reading", "skip_lines"), -1), "sources[0].reading.skip_lines: must be between 0 and 1000"),
    ((("sources", 1), dict(MINIMAL["sources"][0])), "sources[1].name: 'rpi' is already the name of sources[0]"),
    # http
    ((("http", "listen"), "8787"), "http.listen: must be host:port (port 0-65535), like 127.0.0.1:8787 or [::1]:8787"),
    ((("http", "listen"), "[::1]"), "http.listen: must be host:port (port 0-65535), like 127.0.0.1:8787 or [::1]:8787"),
    ((("http", "listen"), "localhost:70000"), "http.listen: must be host:port (port 0-65535), like 127.0.0.1:8787 or [::1]:8787"),
    ((("http", "post_execution_source"), "nope"), "http.post_execution_source: no source is named 'nope'"),
    # channels and mapping
    ((("channels",), {}), "channels: must not be empty"),
    ((("channels",), {"Braze Append": "both"}), 'channels["Braze Append"]: must be one of \'upsert\', \'append\', not \'both\''),
    ((("channels",), {"Braze/Append": "append"}), 'channels["Braze/Append"]: must be a folder name, without / or \\'),
    ((("mapping", "default_phone_region"), "XX"), "mapping.default_phone_region: 'XX' is not an ISO 3166 alpha-2 region, like US"),
    ((("mapping", "default_phone_region"), False),
     "mapping.default_phone_region: must be a string, not a boolean (quote words like yes, no, on, off to keep them text)"),
    ((("mapping", "types"), {"income": "integer"}),
     "mapping.types.income: must be one of 'string', 'number', 'boolean', 'time', not 'integer'"),
    ((("mapping", "types"), {"Last Purchase": "time", "last_purchase": "time"}),
     "mapping.types.last_purchase: names the same column as 'Last Purchase'"),
    ((("mapping", "fields"), {"pid": "user_id"}), "mapping.fields.pid: must be one of 'external_id', 'first_name', "
     "'last_name', 'email', 'country', 'dob', 'gender', 'home_city', 'phone', 'rpi_audience_outputs', "
     "'rpi_contact_ids', 'rpi_channel_exec_ids', not 'user_id'"),
    ((("mapping", "prepended_columns"), "always"),
     "mapping.prepended_columns: must be one of 'auto', 'header', 'none', not 'always'"),
]


@pytest.mark.parametrize("edit, expected", ONE_PROBLEM, ids=[case[1][:60] for case in ONE_PROBLEM])
def test_each_problem_is_reported_with_its_key_path(edit, expected):
    assert problems_of(document(edit)) == [expected]


REMOTE_PROBLEMS = [
    ({**SFTP, "username": DELETE}, ["sources[1].username: is required for sftp sources"]),
    ({**SFTP, "host": DELETE}, ["sources[1].host: is required for sftp sources"]),
    ({**SFTP, "path": DELETE}, ["sources[1].path: is required"]),
    ({**SFTP, "private_key_file": DELETE}, ["sources[1]: sftp sources need private_key_file, password or password_file"]),
    ({**SFTP, "known_hosts_file": DELETE},
     ["sources[1].known_hosts_file: is required for sftp sources unless accept_new_host_keys: true"]),
    ({**SFTP, "tls": True}, ["sources[1].tls: is not used by sftp sources"]),
    ({**SFTP, "port": 0}, ["sources[1].port: must be between 1 and 65535"]),
    ({**SFTP, "port": "${SFTP_PORT}"}, ["sources[1].port: must be between 1 and 65535"]),
    ({**SFTP, "password": "${FTP_PASSWORD}", "password_file": "/x"},
     ["sources[1].password_file: give password or password_file, not both"]),
    ({**FTP, "password": DELETE}, ["sources[1].password: is required (or password_file)"]),
    ({**FTP, "known_hosts_file": "/k"}, ["sources[1].known_hosts_file: is not used by ftp sources"]),
    ({**FTP, "username": DELETE}, ["sources[1].username: is required for ftp sources"]),
]


@pytest.mark.parametrize("source, expected", REMOTE_PROBLEMS)
def test_remote_source_rules(source, expected):
    environ = {**ENV, "FTP_PASSWORD": "pw", "SFTP_PORT": "70000"}
    assert problems_of(document((("sources", 1), source)), environ) == expected


def test_every_problem_is_reported_at_once():
    doc = document((("braze", "concurrency"), 0), (("braze", "api_key"), "${MISSING}"),
                   (("sources", 0, "settle_seconds"), -5), (("sources", 1), {**FTP, "password": DELETE}),
                   (("workers",), "two"), (("http", "listen"), "nowhere"), (("channels",), {}), (("extra",), 1))
    with pytest.raises(ConfigError) as raised:
        parse_settings(doc, ENV, "/etc")
    expected = ["braze.api_key", "braze.concurrency", "sources[0].settle_seconds", "sources[1].password",
                "http.listen", "channels", "workers", "extra"]  # grouped in the key table's order
    assert [problem.split(": ")[0] for problem in raised.value.problems] == expected
    assert all(problem in str(raised.value) for problem in raised.value.problems)


def test_secret_values_never_appear_in_problems_or_repr(tmp_path):
    secret = "S3cr3t-Value-42"
    (tmp_path / "key").write_text(secret)
    doc = document((("braze", "api_key"), secret), (("braze", "api_key_file"), "key"),
                   (("braze", "concurrency"), "${BRAZE_API_KEY}"), (("sources", 0, "marker_file"), 7),
                   (("sources", 1), {**FTP, "password": secret, "password_file": "key", "tls": secret}),
                   (("http", "token"), secret), (("http", "token_file"), "key"), (("http", "listen"), "no"))
    problems = problems_of(doc, {"BRAZE_API_KEY": secret}, str(tmp_path))
    assert len(problems) == 7
    assert not [problem for problem in problems if secret in problem]
    valid = document((("braze", "api_key"), secret), (("sources", 1), {**SFTP, "password": secret,
                     "private_key_passphrase": secret}), (("http", "token"), secret))
    loaded = parse_settings(valid, ENV)
    assert loaded.braze.api_key.reveal() == secret and loaded.http.token.reveal() == secret
    assert secret not in repr(loaded) and secret not in str(loaded)


@pytest.mark.parametrize("value, environ, expected", [
    ("${A}", {"A": "alpha"}, "alpha"),
    ("pre-${A}-${B}-post", {"A": "1", "B": "2"}, "pre-1-2-post"),
    ("$${A}", {}, "${A}"),
    ("$5 and $${A}", {}, "$5 and ${A}"),
    ("cost $5", {}, "cost $5"),
    ("$${A}-${A}", {"A": "x"}, "${A}-x"),
])
def test_environment_substitution(value, environ, expected):
    loaded = parse_settings(document((("sources", 0, "marker_file"), value)), {**ENV, **environ})
    assert loaded.sources[0].marker_file == expected


def test_substituted_numbers_and_booleans_are_read_as_yaml_reads_them():
    doc = document((("braze", "concurrency"), "${C}"), (("braze", "timeout_seconds"), "${T}"),
                   (("braze", "allow_insecure_http"), "${H}"), (("braze", "rest_endpoint"), "http://${HOST}"))
    loaded = parse_settings(doc, {**ENV, "C": "32", "T": "2.5", "H": "true", "HOST": "127.0.0.1:4010"})
    assert (loaded.braze.concurrency, loaded.braze.timeout_seconds) == (32, 2.5)
    assert loaded.braze.allow_insecure_http is True
    assert loaded.braze.rest_endpoint == "http://127.0.0.1:4010"
    assert problems_of(document((("braze", "concurrency"), "${C}")), {**ENV, "C": "many"}) == [
        "braze.concurrency: must be an integer, not a string"]


@pytest.mark.parametrize("content, expected", [
    ("key\n", "key"), ("key", "key"), ("key\r\n", "key"), ("key\n\n", "key\n"), (" key ", " key "),
])
def test_secret_files_lose_one_trailing_newline(tmp_path, content, expected):
    (tmp_path / "password").write_bytes(content.encode())
    doc = document((("sources", 1), {**FTP, "password": DELETE, "password_file": "password"}))
    assert parse_settings(doc, ENV, str(tmp_path)).sources[1].password == Secret(expected)


@pytest.mark.parametrize("content", ["key\n", "key\r\n", "key\n\n", " key \r\n\r\n", "\tkey"])
def test_the_braze_key_loses_surrounding_whitespace(tmp_path, content):
    (tmp_path / "braze_key").write_bytes(content.encode())
    doc = document((("braze", "api_key"), DELETE), (("braze", "api_key_file"), "braze_key"))
    assert parse_settings(doc, {}, str(tmp_path)).braze.api_key == Secret("key")


@pytest.mark.parametrize("key", ["two words", "line\nbreak", "carriage\rreturn", "tab\there", "ünïcode", "   "])
def test_a_braze_key_no_header_can_carry_is_refused_without_showing_it(key):
    problems = problems_of(document((("braze", "api_key"), "${K}")), {"K": key})
    assert problems == ["braze.api_key: must be printable ASCII without spaces or line breaks, as Braze's "
                        "REST API keys are (the value is not shown)"]


def test_every_file_secret_is_read(tmp_path):
    for name in ("password", "passphrase", "token"):
        (tmp_path / name).write_text(f"{name}-value\n")
    sftp = {**SFTP, "password_file": "password", "private_key_passphrase_file": str(tmp_path / "passphrase")}
    doc = document((("sources", 1), sftp), (("http", "token_file"), "token"))
    loaded = parse_settings(doc, ENV, str(tmp_path))
    remote = loaded.sources[1]
    assert (remote.password.reveal(), remote.private_key_passphrase.reveal()) == ("password-value", "passphrase-value")
    assert loaded.http.token.reveal() == "token-value"


def test_unreadable_and_empty_secret_files_are_problems(tmp_path):
    (tmp_path / "empty").write_text("\n")
    doc = document((("braze", "api_key"), DELETE), (("braze", "api_key_file"), "missing"),
                   (("http", "token_file"), "empty"), (("sources", 1), {**FTP, "password": DELETE, "password_file": "."}))
    assert problems_of(doc, ENV, str(tmp_path)) == [
        f"braze.api_key_file: cannot read {tmp_path}/missing: No such file or directory",
        f"sources[1].password_file: cannot read {tmp_path}: Is a directory",
        f"http.token_file: {tmp_path}/empty is empty",
    ]


def test_defaults_are_the_named_constants():
    loaded = parse_settings(MINIMAL, ENV)
    braze, source = loaded.braze, loaded.sources[0]
    assert braze.rate_limit == settings.RateLimit(settings.DEFAULT_RATE_REQUESTS, settings.DEFAULT_RATE_PER_SECONDS)
    assert (braze.concurrency, braze.timeout_seconds) == (settings.DEFAULT_CONCURRENCY, settings.DEFAULT_TIMEOUT_SECONDS)
    assert (braze.max_objects_per_request, braze.max_request_bytes) == (
        settings.DEFAULT_MAX_OBJECTS, settings.DEFAULT_MAX_REQUEST_BYTES)
    assert (braze.allow_insecure_http, braze.ca_file) == (False, None)
    assert (source.settle_seconds, source.scan_interval_seconds) == (
        settings.DEFAULT_SETTLE_SECONDS, settings.DEFAULT_SCAN_INTERVAL_SECONDS)
    assert source.data_files == settings.DEFAULT_DATA_FILES and source.reading == settings.ReadingSettings()
    assert loaded.state.path == settings.DEFAULT_STATE_PATH
    assert loaded.channels == settings.DEFAULT_CHANNELS
    assert loaded.mapping == settings.MappingSettings(default_phone_region=settings.DEFAULT_PHONE_REGION)
    assert (loaded.http, loaded.workers, loaded.log_level, loaded.log_format) == (None, 2, "info", "json")
    assert loaded.parse_process_min_bytes == settings.DEFAULT_PARSE_PROCESS_MIN_BYTES


@pytest.mark.parametrize("state, environ, expected", [
    ({}, {"STATE_DIRECTORY": "/var/lib/rpi2braze-x"}, "/var/lib/rpi2braze-x/state.db"),
    ({}, {"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}, "/var/lib/a/state.db"),
    ({}, {"STATE_DIRECTORY": ""}, settings.DEFAULT_STATE_PATH),
    ({"path": "/srv/state.db"}, {"STATE_DIRECTORY": "/var/lib/x"}, "/srv/state.db"),
    ({"path": "run/state.db"}, {}, "/etc/rpi2braze/run/state.db"),
])
def test_state_path(state, environ, expected):
    doc = document((("state",), state)) if state else MINIMAL
    assert parse_settings(doc, {**ENV, **environ}, "/etc/rpi2braze").state.path == expected


def test_relative_paths_are_relative_to_the_config_folder(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "key").write_text("k")
    shutil.copy(certifi.where(), tmp_path / "conf" / "ca.pem")
    config = tmp_path / "conf" / "rpi2braze.yaml"
    config.write_text(yaml.safe_dump(document(
        (("braze", "api_key"), DELETE), (("braze", "api_key_file"), "key"), (("braze", "ca_file"), "ca.pem"),
        (("state", "path"), "../run/state.db"), (("sources", 0, "path"), "../drop"),
        (("sources", 0, "archive_path"), "archive"), (("sources", 0, "quarantine_path"), "/abs/quarantine"),
        (("sources", 1), {**SFTP, "path": "exports", "archive_path": "done", "private_key_file": "id_ed25519",
                          "known_hosts_file": "known_hosts", "staging_path": "staging"}))))
    monkeypatch.chdir("/")
    loaded = load_settings(str(config.relative_to("/")), {})
    local, remote = loaded.sources
    conf = str(tmp_path / "conf")
    assert (loaded.state.path, local.path) == (f"{tmp_path}/run/state.db", f"{tmp_path}/drop")
    assert (local.archive_path, local.quarantine_path) == (f"{conf}/archive", "/abs/quarantine")
    assert loaded.braze.ca_file == f"{conf}/ca.pem"
    assert (remote.path, remote.archive_path) == ("exports", "done")  # on the server: left as written
    assert (remote.private_key_file, remote.known_hosts_file, remote.staging_path) == (
        f"{conf}/id_ed25519", f"{conf}/known_hosts", f"{conf}/staging")


def test_http_listen_and_post_execution_source():
    doc = document((("sources", 0), {**SFTP}), (("sources", 1), {"name": "share", "type": "poll", "path": "/mnt"}),
                   (("http", "listen"), "[::1]:0"))
    http = parse_settings(doc, ENV).http
    assert (http.listen_host, http.listen_port, http.token, http.post_execution_source) == ("::1", 0, None, "share")
    only_remote = parse_settings(document((("sources", 0), {**SFTP}), (("http",), {})), ENV).http
    assert only_remote == settings.HttpSettings(post_execution_source=None)
    assert parse_settings(document((("http",), None)), ENV).http is None  # `http:` with nothing below: off


def test_remote_source_values_and_default_ports():
    doc = document((("sources", 1), {**SFTP, "accept_new_host_keys": True, "known_hosts_file": DELETE}),
                   (("sources", 2), {**FTP, "tls": True, "tls_verify": False}))
    _, sftp, ftp = parse_settings(doc, {**ENV, "FTP_PASSWORD": "pw"}).sources
    assert (sftp.port, sftp.accept_new_host_keys, sftp.known_hosts_file, sftp.password) == (22, True, None, None)
    assert (ftp.port, ftp.tls, ftp.tls_verify, ftp.password) == (21, True, False, Secret("pw"))


CUTOVER = 1780272000.0   # 2026-06-01T00:00:00Z


@pytest.mark.parametrize("written", [
    "2026-06-01T00:00:00Z", "2026-06-01", "'2026-06-01T01:00:00+01:00'", "'2026-06-01 00:00:00Z'",
])
def test_ignore_folders_before_takes_a_moment_with_its_time_zone(written):
    doc = yaml.safe_load(f"v: {written}")["v"]   # as YAML reads it: a timestamp, a date or text
    [source] = parse_settings(document((("sources", 0, "ignore_folders_before"), doc)), ENV).sources
    assert source.ignore_folders_before == CUTOVER


@pytest.mark.parametrize("written, problem", [
    ("2026-06-01T00:00:00", "has no time zone: add Z (UTC) or an offset like +01:00"),
    ("2999-01-01T00:00:00Z", "is in the future: every export written before then would be left alone; "
                             "set it when the other tool stops"),
    ("'yesterday'", "must be a date and time with its time zone, like 2026-12-01T00:00:00Z, not a string"),
    ("1796083200", "must be a date and time with its time zone, like 2026-12-01T00:00:00Z, not a number"),
])
def test_ignore_folders_before_without_a_time_zone_or_a_date_is_a_problem(written, problem):
    doc = yaml.safe_load(f"v: {written}")["v"]
    [reported] = problems_of(document((("sources", 0, "ignore_folders_before"), doc)))
    assert reported == f"sources[0].ignore_folders_before: {problem}"


def test_the_resend_commands_source_name_is_reserved():
    assert problems_of(document((("sources", 0, "name"), "resend"))) == [
        "sources[0].name: 'resend' is reserved: `rpi2braze resend` records its workflows under that source"]


def test_mapping_keys_are_normalised():
    doc = document((("mapping",), {"default_phone_region": "gb", "prepended_columns": "none",
                                   "types": {"Last Purchase": "time", "VIP": "boolean", "house-hold_size": "number"},
                                   "fields": {"PID": "external_id", "Primary Email": "email"}}),
                   (("channels",), {"Onboarding": "upsert", "Updates": "append"}))
    loaded = parse_settings(doc, ENV)
    assert loaded.mapping == settings.MappingSettings(
        default_phone_region="GB", prepended_columns="none",
        types={"lastpurchase": "time", "vip": "boolean", "householdsize": "number"},
        fields={"pid": "external_id", "primaryemail": "email"})
    assert loaded.channels == {"Onboarding": ChannelMode.UPSERT, "Updates": ChannelMode.APPEND}


@pytest.mark.parametrize("text, expected", [
    ("braze:\n  api_key: [\n", "cfg.yaml:3:1: invalid YAML: while parsing a flow node: expected the node content"),
    ("braze:\n\trest_endpoint: x\n", "cfg.yaml:2:1: invalid YAML: while scanning for the next token: found character"),
    ("workers: 1\nlog: {}\nworkers: 2\n", "cfg.yaml:3:1: key 'workers' appears twice in one mapping"),
    ("", "(top level): the configuration is empty"),
    ("# only a comment\n", "(top level): the configuration is empty"),
    ("- braze\n- sources\n", "(top level): must be a mapping (braze: ..., sources: ...), not a list"),
    ("just text\n", "(top level): must be a mapping (braze: ..., sources: ...), not a string"),
])
def test_unreadable_documents(tmp_path, text, expected):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_settings(str(path), ENV)
    assert len(raised.value.problems) == 1
    assert raised.value.problems[0].replace(str(tmp_path) + "/", "").startswith(expected)


def test_a_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load_settings(str(tmp_path / "absent.yaml"))
    assert raised.value.problems == [f"{tmp_path}/absent.yaml: cannot read: No such file or directory"]


@pytest.mark.parametrize("cli_value, environ, expected", [
    ("given.yaml", {"RPI2BRAZE_CONFIG": "env.yaml"}, "given.yaml"),
    (None, {"RPI2BRAZE_CONFIG": "env.yaml"}, "env.yaml"),
    (None, {}, settings.DEFAULT_CONFIG_PATH),
])
def test_resolve_config_path(cli_value, environ, expected):
    assert resolve_config_path(cli_value, environ) == expected


def example_environ(tmp_path):
    """What systemd and the operator provide to the example configs."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "braze_api_key").write_text("key-from-credential\n")
    return {"BRAZE_API_KEY": "key", "RPI2BRAZE_TOKEN": "token", "CREDENTIALS_DIRECTORY": str(credentials),
            "STATE_DIRECTORY": str(tmp_path / "state")}


def test_there_are_example_configs():
    names = {os.path.basename(path) for path in EXAMPLES}
    assert {"demo.yaml", "staging.yaml", "production.yaml", "production-sftp.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_config_loads_without_problems(path, tmp_path):
    loaded = load_settings(path, example_environ(tmp_path))
    assert loaded.sources and loaded.braze.api_key
    with open(path, encoding="utf-8") as example:
        assert hand_validate(yaml.safe_load(example), json_schema()) == []


def test_demo_config_points_at_the_sandbox_beside_the_repository(tmp_path):
    demo = load_settings(os.path.join(CONFIG_DIR, "demo.yaml"), {})
    repository = os.path.abspath(os.path.join(CONFIG_DIR, ".."))
    assert (demo.braze.rest_endpoint, demo.braze.allow_insecure_http) == ("http://127.0.0.1:4010", True)
    assert (demo.sources[0].path, demo.state.path) == (f"{repository}/demo-run/drop", f"{repository}/demo-run/state.db")
    assert (demo.sources[0].settle_seconds, demo.sources[0].scan_interval_seconds) == (3, 1)


def test_every_key_is_documented_in_an_example():
    text = "".join(open(path, encoding="utf-8").read() for path in EXAMPLES)
    undocumented = [key for key in key_names(CONFIG) if not re.search(rf"(?<![\w.]){key}:", text)]
    assert undocumented == []


def key_names(spec):
    keys = getattr(spec, "keys", None)
    item = getattr(spec, "item", None)
    if item is not None:
        return key_names(item)
    if not isinstance(keys, dict):
        return set()
    return set(keys).union(*(key_names(child) for child in keys.values()))


def test_json_schema_lists_the_top_level_keys_and_rejects_bad_documents():
    schema = json.loads(json.dumps(json_schema()))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["properties"]) == {"braze", "state", "sources", "http", "channels", "mapping", "workers", "parse_process_min_bytes", "log"}
    assert hand_validate(MINIMAL, schema) == []
    bad = document((("braze", "concurrency"), 0), (("sources", 0, "host"), "h"), (("colour",), "blue"))
    assert len(hand_validate(bad, schema)) == 3


def hand_validate(value, schema, path="$"):
    """The few JSON Schema keywords json_schema() uses; return the failures (no dependency needed)."""
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}
    failures = []
    if "type" in schema and (not isinstance(value, types[schema["type"]])
                             or (isinstance(value, bool) and schema["type"] != "boolean")):
        return [f"{path}: type"]
    checks = [("enum", lambda: value in schema["enum"]), ("const", lambda: value == schema["const"]),
              ("minimum", lambda: value >= schema["minimum"]), ("maximum", lambda: value <= schema["maximum"]),
              ("exclusiveMinimum", lambda: value > schema["exclusiveMinimum"]),
              ("minLength", lambda: len(value) >= schema["minLength"]), ("minItems", lambda: len(value) >= schema["minItems"]),
              ("minProperties", lambda: len(value) >= schema["minProperties"]),
              ("pattern", lambda: re.search(schema["pattern"], value)),
              ("required", lambda: all(key in value for key in schema["required"])),
              ("anyOf", lambda: any(not hand_validate(value, sub, path) for sub in schema["anyOf"])),
              ("oneOf", lambda: sum(not hand_validate(value, sub, path) for sub in schema["oneOf"]) == 1),
              ("not", lambda: hand_validate(value, schema["not"], path) != [])]
    failures += [f"{path}: {keyword}" for keyword, check in checks if keyword in schema and not check()]
    for sub in schema.get("allOf", []):
        failures += hand_validate(value, sub, path)
    if "if" in schema and not hand_validate(value, schema["if"], path):
        failures += hand_validate(value, schema["then"], path)
    if isinstance(value, dict):
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key, schema.get("additionalProperties", {}))
            failures += [f"{path}.{key}: not allowed"] if sub is False else hand_validate(item, sub, f"{path}.{key}")
            if "propertyNames" in schema:
                failures += hand_validate(key, schema["propertyNames"], f"{path}.{key}")
    for index, item in enumerate(value if isinstance(value, list) else []):
        failures += hand_validate(item, schema.get("items", {}), f"{path}[{index}]")
    return failures


@pytest.mark.parametrize("content, expected", [
    (None, "braze.ca_file: cannot use {path}: No such file or directory"),
    ("not a certificate\n", "braze.ca_file: cannot use {path}: no PEM certificate in it (NO_CERTIFICATE_OR_CRL_FOUND)"),
])
def test_a_braze_ca_file_tls_cannot_use_is_a_problem(tmp_path, content, expected):
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    assert problems_of(document((("braze", "ca_file"), str(path)))) == [expected.format(path=path)]
    # an FTPS source's ca_file is checked the same way, under its own key
    ftp = document((("sources", 1), {**FTP, "ca_file": str(path)}))
    assert problems_of(ftp, {**ENV, "FTP_PASSWORD": "pw"}) == \
        [expected.format(path=path).replace("braze.ca_file", "sources[1].ca_file")]


def test_a_pem_braze_ca_file_is_accepted(tmp_path):
    shutil.copy(certifi.where(), tmp_path / "ca.pem")
    assert parse_settings(document((("braze", "ca_file"), "ca.pem")), ENV, str(tmp_path)).braze.ca_file == \
        str(tmp_path / "ca.pem")
    ftp = document((("sources", 1), {**FTP, "ca_file": "ca.pem"}))
    assert parse_settings(ftp, {**ENV, "FTP_PASSWORD": "pw"}, str(tmp_path)).sources[1].ca_file == \
        str(tmp_path / "ca.pem")


@pytest.mark.parametrize("listen, token, refused", [
    ("0.0.0.0:8787", None, True),
    ("10.1.2.3:8787", None, True),
    ("0.0.0.0:8787", "t0ken", False),
    ("127.0.0.1:8787", None, False),
    ("[::1]:8787", None, False),
    ("localhost:8787", None, False),
])
def test_http_token_required_off_loopback(listen, token, refused):
    http = {"listen": listen, **({"token": token} if token else {})}
    doc = document((("http",), http))
    if refused:
        with pytest.raises(ConfigError) as raised:
            parse_settings(doc, ENV)
        assert any(problem.startswith("http.token: required") for problem in raised.value.problems)
    else:
        assert parse_settings(doc, ENV).http.listen_host in listen


def test_the_state_section_alone_is_read_for_operator_commands(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("braze:\n  api_key_file: ${CREDENTIALS_DIRECTORY}/braze_api_key\nsources: 7\n")
    assert load_state_settings(str(config), {"STATE_DIRECTORY": "/var/lib/x"}).path == "/var/lib/x/state.db"
    config.write_text("braze: {}\nstate:\n  path: run/state.db\n")
    assert load_state_settings(str(config), {}).path == str(tmp_path / "run" / "state.db")
    config.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_state_settings(str(config), {})
    config.write_text("state:\n  path: 7\n  paht: x\n")
    with pytest.raises(ConfigError) as raised:
        load_state_settings(str(config), {})
    assert sorted(raised.value.problems) == ["state.paht: unknown key (did you mean path?)",
                                             "state.path: must be a string, not a number"]


SECRET = "Sup3rSecretPw"  # a distinctive value: no problem may contain it
SECRET_LINE = ("braze:\n  rest_endpoint: https://rest.iad-01.braze.com\n  {line}\n"
               "sources:\n  - {{name: a, type: local, path: /x}}\n")


@pytest.mark.parametrize("line, expected, hidden", [
    (f"api_key: *{SECRET}", "cfg.yaml:3:12: invalid YAML: an alias (*name) that is not defined", SECRET),
    (f"api_key: *-{SECRET}", "cfg.yaml:3:12: invalid YAML: an alias (*name) that is not defined", SECRET),
    (f"api_key: !{SECRET}", "cfg.yaml:3:12: invalid YAML: a tag (!name) this file may not use", SECRET),
    (f"api_key: !<{SECRET}> x", "cfg.yaml:3:12: invalid YAML: a tag (!name) this file may not use", SECRET),
    (f"api_key: !{SECRET}!x y", "cfg.yaml:3:12: invalid YAML: a tag handle (!name!) that is not defined", SECRET),
    (f"api_key: [&{SECRET} a, &{SECRET} b]", "cfg.yaml:3:31: invalid YAML: an anchor (&name) given twice", SECRET),
    (f"api_key: @{SECRET}", "cfg.yaml:3:12: invalid YAML: while scanning for the next token: found character "
                            "(not shown) that cannot start any token", "'@'"),
    (f"api_key: \"Ab\\q{SECRET}\"", "cfg.yaml:3:16: invalid YAML: while scanning a double-quoted scalar: "
                                    "found unknown escape character (not shown)", "'q'"),
    (f"api_key: |{SECRET}", "cfg.yaml:3:13: invalid YAML: while scanning a block scalar: expected chomping or "
                            "indentation indicators, but found (not shown)", "'S'"),
    (f"api_key: !!binary {SECRET}", "cfg.yaml:3:12: invalid YAML: a !!binary value that is not base64", "(13)"),
    ("api_key: 2024-13-45", "cfg.yaml:3:12: invalid YAML: a date that is not one (like 2024-13-45)", "month"),
])
def test_yaml_syntax_errors_name_the_place_and_kind_but_not_the_token(tmp_path, line, expected, hidden):
    path = tmp_path / "cfg.yaml"
    path.write_text(SECRET_LINE.format(line=line))
    with pytest.raises(ConfigError) as raised:
        load_settings(str(path), ENV)
    (problem,) = raised.value.problems
    assert problem.replace(str(tmp_path) + "/", "").startswith(expected)
    assert hidden not in problem and SECRET not in problem


@pytest.mark.parametrize("text, expected", [
    ("a:\n  b: 1\n c: 2\n",
     "cfg.yaml:3:2: invalid YAML: while parsing a block mapping: expected <block end>, "
     "but found '<block mapping start>'"),
    ("a: {b: c d: e}\n", "cfg.yaml:1:11: invalid YAML: while parsing a flow mapping: expected ',' or '}', but got ':'"),
    ("a: b\n- c\n", "cfg.yaml:2:1: invalid YAML: while parsing a block mapping: expected <block end>, but found '-'"),
    ("braze:\n  rest_endpoint: x\n  api_key Secret\nsources: 1\n",
     "cfg.yaml:4:1: invalid YAML: while scanning a simple key: could not find expected ':'"),
    ("braze:\n\trest_endpoint: x\n",
     "cfg.yaml:2:1: invalid YAML: while scanning for the next token: found character '\\t' "
     "that cannot start any token"),
])
def test_yaml_errors_that_quote_no_document_text_stay_specific(tmp_path, text, expected):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_settings(str(path), ENV)
    assert [problem.replace(str(tmp_path) + "/", "") for problem in raised.value.problems] == [expected]


NO_API_KEY = (("braze", "api_key"), DELETE)
UNSET_NAME_NOT_SHOWN = ("refers to an unset environment variable whose name is not shown (not written in A-Z, 0-9 "
                        "and _, it may be part of the secret); write $${ for a literal ${")


@pytest.mark.parametrize("edits, expected", [
    ([(("braze", "api_key"), f"Abc${{{SECRET}}}Xyz")], f"braze.api_key: {UNSET_NAME_NOT_SHOWN}"),
    ([NO_API_KEY, (("braze", "api_key_file"), f"${{{SECRET}}}")], f"braze.api_key_file: {UNSET_NAME_NOT_SHOWN}"),
    ([(("sources", 1), {**FTP, "password": f"pw${{{SECRET}}}"})], f"sources[1].password: {UNSET_NAME_NOT_SHOWN}"),
    ([(("sources", 1), {**SFTP, "private_key_passphrase": f"${{{SECRET}}}"})],
     f"sources[1].private_key_passphrase: {UNSET_NAME_NOT_SHOWN}"),
    ([(("http", "token"), f"${{lower_{SECRET}}}")], f"http.token: {UNSET_NAME_NOT_SHOWN}"),
])
def test_an_unset_variable_in_a_secret_is_named_only_if_spelled_like_one(edits, expected):
    problems = problems_of(document(*edits))
    assert problems == [expected]
    assert not [problem for problem in problems if SECRET in problem]


@pytest.mark.parametrize("edit, expected", [
    ((("braze", "api_key"), "${MISSING_KEY_2}"), "braze.api_key: environment variable MISSING_KEY_2 is not set"),
    ((("sources", 0, "marker_file"), "${lower_case}"),
     "sources[0].marker_file: environment variable lower_case is not set"),
])
def test_an_unset_variable_is_named_where_its_name_is_no_secret(edit, expected):
    assert problems_of(document(edit)) == [expected]


@pytest.mark.parametrize("edits, expected", [
    ([(("braze", f"api_key:{SECRET}"), None)], "braze: unknown key that starts with api_key (the rest is not shown: "
                                               "it may be the secret); write `api_key: value`, with a space after "
                                               "the colon"),
    ([(("http", f"token={SECRET}"), None), (("http", "token"), "t")],
     "http: unknown key that starts with token (the rest is not shown: it may be the secret); "
     "write `token: value`, with a space after the colon"),
    ([(("sources", 1), {**FTP, f"password {SECRET}": None})],
     "sources[1]: unknown key that starts with password (the rest is not shown: it may be the secret); "
     "write `password: value`, with a space after the colon"),
])
def test_a_secret_run_into_its_key_is_not_shown_as_an_unknown_key(edits, expected):
    problems = problems_of(document(*edits), {**ENV, "FTP_PASSWORD": "pw"})
    assert expected in problems
    assert not [problem for problem in problems if SECRET in problem]


SFTP_WITHOUT_SECRETS = (("sources", 1), {**SFTP, "password": DELETE, "private_key_passphrase": DELETE})


@pytest.mark.parametrize("edits, content, expected", [
    # a path that is one ${VAR} may be the secret itself, put in the *_file key by mistake
    ([NO_API_KEY, (("braze", "api_key_file"), "${BRAZE_API_KEY}")], None,
     "braze.api_key_file: cannot read ${BRAZE_API_KEY} (the path it makes is not shown): No such file or directory"),
    ([SFTP_WITHOUT_SECRETS, (("sources", 1, "private_key_passphrase_file"), "${CREDENTIALS}")], b"x",
     "sources[1].private_key_passphrase_file: cannot read ${CREDENTIALS} (the path it makes is not shown): "
     "Is a directory"),
    # a path built with ${VAR}, as systemd's credentials are, is a path: shown
    ([SFTP_WITHOUT_SECRETS, (("sources", 1, "password_file"), "${CREDENTIALS}/ftp")], None,
     "sources[1].password_file: cannot read {folder}/ftp: No such file or directory"),
    ([(("http", "token_file"), "${CREDENTIALS}/token")], b"\n", "http.token_file: {folder}/token is empty"),
    ([(("http", "token_file"), "${CREDENTIALS}/token")], b"caf\xe9", "http.token_file: {folder}/token is not UTF-8 text"),
])
def test_a_secret_file_path_that_is_one_environment_variable_is_not_shown(tmp_path, edits, content, expected):
    folder = tmp_path / "credentials"
    if content is not None:
        folder.mkdir()
        (folder / "token").write_bytes(content)
    problems = problems_of(document(*edits), {"BRAZE_API_KEY": SECRET, "CREDENTIALS": str(folder)}, str(tmp_path))
    assert problems == [expected.replace("{folder}", str(folder))]
    assert not [problem for problem in problems if SECRET in problem]


def test_a_misspelt_secret_file_key_is_named_with_a_suggestion():
    problems = problems_of(document((("braze", "api_key-file"), "/run/key")))
    assert 'braze["api_key-file"]: unknown key (did you mean api_key_file?)' in problems


def test_an_unusable_proxy_for_braze_is_a_config_problem_without_its_address(monkeypatch):
    monkeypatch.setenv("https_proxy", "http://proxyuser:Pa55/word@127.0.0.1:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    found = problems_of(document())
    assert [problem for problem in found if problem.startswith("braze.rest_endpoint: its proxy: HTTPS_PROXY")]
    assert not any("Pa55" in problem for problem in found)
