"""Where export folders come from. Every source offers the same small interface (`base.Source`).

Sources are picked from an explicit mapping by their `type`, not discovered.
"""

from __future__ import annotations

from typing import Callable

from rpi2braze.settings import SourceSettings
from rpi2braze.sources.base import Source


def _local(settings: SourceSettings) -> Source:
    from rpi2braze.sources.local import LocalSource
    return LocalSource(settings)


def _poll(settings: SourceSettings) -> Source:
    from rpi2braze.sources.local import poll_source
    return poll_source(settings)


def _sftp(settings: SourceSettings) -> Source:
    from rpi2braze.sources.sftp import SftpSource
    return SftpSource(settings)


def _ftp(settings: SourceSettings) -> Source:
    from rpi2braze.sources.ftp import FtpSource
    return FtpSource(settings)


SOURCE_FACTORIES: dict[str, Callable[[SourceSettings], Source]] = {
    "local": _local,
    "poll": _poll,
    "sftp": _sftp,
    "ftp": _ftp,
}


def build_source(settings: SourceSettings) -> Source:
    """Return the Source for `settings.type` (validated by config: always a known type); a remote
    one with `staging_path` downloads each file there before it is read."""
    source = SOURCE_FACTORIES[settings.type](settings)
    if settings.staging_path and settings.type in ("sftp", "ftp"):
        from rpi2braze.sources.staging import StagedSource
        return StagedSource(source, settings.staging_path)  # type: ignore[arg-type]
    return source
