"""The path rules shared by the remote sources (pure functions, no server)."""

from __future__ import annotations

import pytest

from rpi2braze.errors import SourceError
from rpi2braze.settings import SourceSettings
from rpi2braze.sources import remote
from rpi2braze.sources.sftp_stream import request_bytes


@pytest.mark.parametrize("base, relpath, expected", [
    ("/exports", "", "/exports"),
    ("/exports", "Braze Append/Offer/1", "/exports/Braze Append/Offer/1"),
    ("/exports", "./a//b/", "/exports/a/b"),
    ("exports", "a", "exports/a"),
    ("", "a", "a"),
    ("", "", "."),
])
def test_remote_path_joins_below_the_base(base, relpath, expected):
    assert remote.remote_path(base, relpath) == expected


@pytest.mark.parametrize("relpath", ["..", "a/../..", "/etc/passwd", "a\x00b", "..\\x", "C:/x"])
def test_remote_path_refuses_leaving_the_base(relpath):
    with pytest.raises(SourceError):
        remote.remote_path("/exports", relpath)


@pytest.mark.parametrize("destination, relpath, expected", [
    ("/archive", "Braze Append/Offer/1", "/archive/Braze Append/Offer/1"),
    ("archive", "a/b", "archive/a/b"),
])
def test_moved_path_keeps_the_relative_path(destination, relpath, expected):
    assert remote.moved_path(destination, relpath) == expected


@pytest.mark.parametrize("relpath", ["", ".", "../x"])
def test_moved_path_refuses_the_base_and_escapes(relpath):
    with pytest.raises(SourceError):
        remote.moved_path("/archive", relpath)


@pytest.mark.parametrize("path, expected", [
    ("/a/b/c", ["/a", "/a/b"]),
    ("a/b/c", ["a", "a/b"]),
    ("/a", []),
    ("a", []),
    ("/a/b/", ["/a"]),
])
def test_ancestors_lists_the_folders_above_outermost_first(path, expected):
    assert remote.ancestors(path) == expected


@pytest.mark.parametrize("taken, expected", [
    (set(), "/t"),
    ({"/t"}, "/t.1"),
    ({"/t", "/t.1", "/t.2"}, "/t.3"),
])
def test_free_name_adds_the_first_free_numeric_suffix(taken, expected):
    assert remote.free_name("/t", taken.__contains__) == expected


def test_make_parents_creates_only_the_missing_folders():
    existing, created = {"/a"}, []
    remote.make_parents("/a/b/c/target", existing.__contains__, created.append)
    assert created == ["/a/b", "/a/b/c"]


@pytest.mark.parametrize("path, expected", [
    ("/exports/a", "sftp://rpi@host:2222/exports/a"),
    ("exports/a", "sftp://rpi@host:2222/~/exports/a"),
])
def test_location_url_shows_relative_paths_below_the_login_folder(path, expected):
    settings = SourceSettings(name="s", type="sftp", path="/exports", host="host", username="rpi")
    assert remote.location_url("sftp", settings, 2222, path) == expected


@pytest.mark.parametrize("missing", ["host", "username"])
def test_remote_settings_need_a_host_and_a_username(missing):
    values = {"name": "s", "type": "sftp", "path": "/x", "host": "h", "username": "u", missing: None}
    with pytest.raises(SourceError, match=missing):
        remote.require_remote_settings(SourceSettings(**values))


@pytest.mark.parametrize("banner, expected", [
    ("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10", 64 * 1024),
    ("SSH-2.0-OpenSSH_for_Windows_8.1", 64 * 1024),
    ("SSH-2.0-AWS_SFTP_1.1", 32 * 1024),
    ("", 32 * 1024),
])
def test_request_size_is_larger_only_for_openssh(banner, expected):
    assert request_bytes(banner) == expected
