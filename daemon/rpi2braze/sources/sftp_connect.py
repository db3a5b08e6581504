"""Opening an authenticated SSH connection for an SFTP source, with strict host key checking.

The server's host key must be in `known_hosts_file`. An unknown key is refused, naming its
SHA256 fingerprint, unless `accept_new_host_keys: true`: then it is accepted once and appended
to the file (trust on first use). A key that differs from the known one is always refused: it
means the server was reinstalled, or someone is in the middle. Keys are never looked for in
~/.ssh or an SSH agent: only the configured private key or password is used.

Ciphers and MACs are offered cheapest first for paramiko, whose reading thread decrypts every
byte under the GIL: AES-GCM is one call per packet and needs no separate MAC, and was about 15%
less CPU than aes128-ctr with HMAC-SHA2-256 (see bench/bench_sftp.py). CBC modes, 3DES and MD5
are not offered; HMAC-SHA1 only after every SHA-2 MAC, for servers that have nothing else.
"""

from __future__ import annotations

import os

import paramiko

from rpi2braze.errors import SourceError, SourceUnavailable
from rpi2braze.log import get_logger
from rpi2braze.settings import SourceSettings
from rpi2braze.sources.remote import CONNECT_TIMEOUT_SECONDS, OPERATION_TIMEOUT_SECONDS, error_reason

log = get_logger(__name__)
# Keeps an idle connection alive through firewalls and NAT, and notices a dead one.
KEEPALIVE_SECONDS = 30
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes192-ctr", "aes256-ctr")
PREFERRED_MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "hmac-sha2-256",
                  "hmac-sha2-512", "hmac-sha1")


def connect(settings: SourceSettings, port: int, remembered_keys: paramiko.HostKeys) -> paramiko.SSHClient:
    """Given a source's settings, return a connected, authenticated SSHClient.

    `remembered_keys` holds host keys accepted earlier by this process (kept across reconnects
    when there is no known_hosts_file to write them to). Raise SourceError for a refused host
    key, a failed login or an unusable private key; SourceUnavailable if the server cannot be
    reached.
    """
    private_key = _load_private_key(settings)
    client = paramiko.SSHClient()
    try:
        _load_known_hosts(client, settings, remembered_keys)
        client.set_missing_host_key_policy(_NewHostKeyPolicy(settings, port, remembered_keys))
        client.connect(
            settings.host, port, username=settings.username,
            password=settings.password.reveal() if settings.password else None, pkey=private_key,
            timeout=CONNECT_TIMEOUT_SECONDS, banner_timeout=CONNECT_TIMEOUT_SECONDS,
            auth_timeout=CONNECT_TIMEOUT_SECONDS, channel_timeout=CONNECT_TIMEOUT_SECONDS,
            allow_agent=False, look_for_keys=False, transport_factory=new_transport,
        )
    except Exception as error:
        client.close()
        raise _translate(error, settings, port) from None
    client.get_transport().set_keepalive(KEEPALIVE_SECONDS)  # type: ignore[union-attr]
    return client


def open_sftp(transport: paramiko.Transport, **sizes) -> paramiko.SFTPClient:
    """An SFTP channel on `transport` whose every wait ends after OPERATION_TIMEOUT_SECONDS
    (socket.timeout). paramiko's SFTPClient.from_transport sets no timeout before the version
    exchange, so a server that starts no SFTP subsystem would hold the caller (the scanner, and
    every source after it) for ever. `sizes`: window_size and max_packet_size."""
    channel = transport.open_session(timeout=OPERATION_TIMEOUT_SECONDS, **sizes)
    channel.settimeout(OPERATION_TIMEOUT_SECONDS)
    try:
        channel.invoke_subsystem("sftp")
        return paramiko.SFTPClient(channel)
    except BaseException:
        channel.close()
        raise


def new_transport(sock, **options) -> paramiko.Transport:
    """Return a paramiko Transport on `sock` offering PREFERRED_CIPHERS and PREFERRED_MACS, in
    that order, as far as this paramiko has them (SSHClient.connect's transport_factory).
    `options` are whatever this paramiko's SSHClient passes (3.x adds the GSS-API ones)."""
    transport = paramiko.Transport(sock, **options)
    options = transport.get_security_options()
    options.ciphers = tuple(name for name in PREFERRED_CIPHERS if name in options.ciphers)
    options.digests = tuple(name for name in PREFERRED_MACS if name in options.digests)
    return transport


def fingerprint(key: paramiko.PKey) -> str:
    """Return the key's type and OpenSSH-style fingerprint, e.g. "ssh-ed25519 SHA256:abc..."."""
    return f"{key.get_name()} {key.fingerprint}"


class _NewHostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse an unknown host key, or accept and record it when the settings allow."""

    def __init__(self, settings: SourceSettings, port: int, remembered_keys: paramiko.HostKeys):
        self._settings = settings
        self._port = port
        self._remembered_keys = remembered_keys

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        settings = self._settings
        where = f"{settings.host}:{self._port}"
        if not settings.accept_new_host_keys:
            raise SourceError(
                f"source {settings.name}: the host key of {where} is unknown ({fingerprint(key)}) and is "
                f"not in known_hosts_file {settings.known_hosts_file or '(none set)'}. Check the fingerprint "
                "with the server's administrator, then add the key to that file, or set "
                "accept_new_host_keys: true to accept the key the server offers on the next connection")
        self._remembered_keys.add(hostname, key.get_name(), key)
        if settings.known_hosts_file:
            _append_known_host(settings.known_hosts_file, hostname, key)
        log.warning("sftp_host_key_accepted", source=settings.name, host=where, key=fingerprint(key),
                    known_hosts_file=settings.known_hosts_file)


def _load_private_key(settings: SourceSettings) -> paramiko.PKey | None:
    if not settings.private_key_file:
        return None
    passphrase = settings.private_key_passphrase.reveal().encode() if settings.private_key_passphrase else None
    where = f"source {settings.name}: private_key_file {settings.private_key_file}"
    try:
        return paramiko.PKey.from_path(settings.private_key_file, passphrase)
    except paramiko.PasswordRequiredException:
        raise SourceError(f"{where} is encrypted: set private_key_passphrase") from None
    except OSError as error:
        raise SourceError(f"{where} cannot be read: {error.strerror or type(error).__name__}") from None
    except (ValueError, TypeError, paramiko.SSHException):
        raise SourceError(
            f"{where} is not a usable ed25519, ECDSA or RSA private key, or the passphrase is wrong") from None


def _load_known_hosts(client: paramiko.SSHClient, settings: SourceSettings, remembered_keys: paramiko.HostKeys) -> None:
    host_keys = client.get_host_keys()
    if settings.known_hosts_file and os.path.exists(settings.known_hosts_file):
        try:
            host_keys.load(settings.known_hosts_file)
        except (OSError, paramiko.SSHException) as error:
            reason = getattr(error, "strerror", None) or "not a known_hosts file"
            raise SourceError(f"source {settings.name}: cannot read known_hosts_file "
                              f"{settings.known_hosts_file}: {reason}") from None
    for hostname, keys in remembered_keys.items():
        for key_type, key in keys.items():
            host_keys.add(hostname, key_type, key)


def _append_known_host(path: str, hostname: str, key: paramiko.PKey) -> None:
    line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(descriptor, "a", encoding="ascii") as known_hosts:
            if known_hosts.tell() > 0 and not _ends_with_newline(path):
                known_hosts.write("\n")
            known_hosts.write(line)
    except OSError as error:
        raise SourceError(f"cannot record the accepted host key in {path}: {error.strerror}") from None


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as existing:
        existing.seek(-1, os.SEEK_END)
        return existing.read(1) == b"\n"


def _translate(error: Exception, settings: SourceSettings, port: int) -> Exception:
    where = f"{settings.host}:{port}"
    if isinstance(error, SourceError):
        return error
    if isinstance(error, paramiko.BadHostKeyException):
        return SourceError(
            f"source {settings.name}: REFUSED: the host key of {where} has CHANGED. The server offered "
            f"{fingerprint(error.key)}, but known_hosts_file {settings.known_hosts_file} holds "
            f"{fingerprint(error.expected_key)}. Either the server was reinstalled or someone is "
            "intercepting the connection; check with the server's administrator before replacing the key")
    if isinstance(error, paramiko.AuthenticationException):
        return SourceError(f"source {settings.name}: the server {where} refused the login of user "
                           f"{settings.username!r} with the configured private key or password")
    if isinstance(error, (OSError, EOFError, paramiko.SSHException)):
        return SourceUnavailable(f"source {settings.name}: cannot connect to {where}: {error_reason(error)}")
    return error
