"""The SFTP framing of sftp_stream (packets cut anywhere, answers out of order, statuses) and the
algorithms sftp_connect offers. The channel is a real socket pair: SftpWire only needs recv and
sendall, which a socket has."""

from __future__ import annotations

import socket
import struct

import paramiko
import pytest

from rpi2braze.sources.sftp_connect import PREFERRED_CIPHERS, new_transport
from rpi2braze.sources.sftp_stream import (
    LARGEST_REQUEST_BYTES, OPENSSH_REQUEST_BYTES, PORTABLE_REQUEST_BYTES, negotiated_request_bytes,
)
from rpi2braze.sources.sftp_wire import SftpWire, data_of, split_packets

DATA, STATUS, EXTENDED_REPLY = 103, 101, 201
RECEIVE = 1024 * 1024
OPENSSH_BANNER = "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10"


def packet(packet_type: int, request_id: int, body: bytes) -> bytes:
    return struct.pack(">IBI", len(body) + 5, packet_type, request_id) + body


def data_packet(request_id: int, data: bytes) -> bytes:
    return packet(DATA, request_id, struct.pack(">I", len(data)) + data)


def status_packet(request_id: int, code: int, message: bytes = b"") -> bytes:
    return packet(STATUS, request_id, struct.pack(">II", code, len(message)) + message + struct.pack(">I", 0))


def decoded(packets) -> list[tuple[int, int, bytes]]:
    return [(packet_type, request_id, bytes(body)) for packet_type, request_id, body in packets]


@pytest.fixture
def channel_pair():
    ours, server = socket.socketpair()
    ours.settimeout(5)
    yield ours, server
    ours.close()
    server.close()


STREAM = data_packet(7, b"first answer") + status_packet(8, 1) + data_packet(9, b"x" * 300)
EXPECTED = [(DATA, 7, struct.pack(">I", 12) + b"first answer"), (STATUS, 8, status_packet(8, 1)[9:]),
            (DATA, 9, struct.pack(">I", 300) + b"x" * 300)]


@pytest.mark.parametrize("cuts", [(), (1,), (3,), (4,), (9,), (20,), (25, 26), (1, 2, 3, 40, 41), tuple(range(1, 60))])
def test_packets_cut_anywhere_between_receives_come_out_whole(cuts):
    pieces = [STREAM[start:end] for start, end in zip((0, *cuts), (*cuts, len(STREAM)))]
    unfinished, packets = b"", []
    for piece in pieces:
        complete, unfinished = split_packets(unfinished, piece)
        packets += decoded(complete)

    assert (packets, unfinished) == (EXPECTED, b"")


@pytest.mark.parametrize("length", [0, 4, 64 * 1024 * 1024])
def test_a_length_no_sftp_packet_has_is_refused(length):
    with pytest.raises(ValueError, match="garbled"):
        split_packets(b"", struct.pack(">I", length) + b"\x00" * 16)


@pytest.mark.parametrize("answer, expected", [
    (data_packet(1, b"bytes"), b"bytes"),
    (data_packet(1, b""), b""),
    (status_packet(1, 1, b"End of file"), b""),  # SSH_FX_EOF
])
def test_data_of_a_read_answer(answer, expected):
    (packet_type, _, body), = split_packets(b"", answer)[0]
    assert bytes(data_of(packet_type, body)) == expected


@pytest.mark.parametrize("answer, error, match", [
    (status_packet(1, 3, b"Permission denied"), OSError, "status 3 Permission denied"),
    (packet(102, 1, struct.pack(">I", 4) + b"hdl1"), ValueError, "packet type 102"),
    (packet(DATA, 1, struct.pack(">I", 10) + b"short"), ValueError, "announcing 10"),
    (packet(STATUS, 1, b"\x00\x01"), ValueError, "2 bytes, too few"),
    (packet(DATA, 1, b""), ValueError, "0 bytes, too few"),
])
def test_a_read_answer_that_is_not_data_is_an_error(answer, error, match):
    (packet_type, _, body), = split_packets(b"", answer)[0]
    with pytest.raises(error, match=match):
        data_of(packet_type, body)


def test_the_wire_matches_answers_arriving_out_of_order(channel_pair):
    ours, server = channel_pair
    wire = SftpWire(ours, RECEIVE)
    first, second = wire.send_all(5, [b"one", b"two"])
    sent = server.recv(1000)
    assert sent == packet(5, first, b"one") + packet(5, second, b"two")

    server.sendall(data_packet(second, b"second") + data_packet(first, b"first"))

    assert bytes(data_of(*wire.answer(first))) == b"first"
    assert bytes(data_of(*wire.answer(second))) == b"second"


def test_the_wire_reports_a_closed_channel(channel_pair):
    ours, server = channel_pair
    wire = SftpWire(ours, RECEIVE)
    (request_id,) = wire.send_all(5, [b"read"])
    server.shutdown(socket.SHUT_WR)

    with pytest.raises(EOFError):
        wire.answer(request_id)


@pytest.mark.parametrize("largest_read, expected", [
    (255 * 1024, 255 * 1024),
    (64 * 1024 * 1024, LARGEST_REQUEST_BYTES),
    (0, OPENSSH_REQUEST_BYTES),  # "no limit given": keep what OpenSSH always answered
])
def test_openssh_announcing_its_limits_sets_the_request_size(channel_pair, largest_read, expected):
    ours, server = channel_pair
    request_id = 1 << 30  # the wire's first id
    server.sendall(packet(EXTENDED_REPLY, request_id, struct.pack(">QQQQ", 256 * 1024, largest_read, 0, 64)))

    assert negotiated_request_bytes(SftpWire(ours, RECEIVE), OPENSSH_BANNER) == expected
    assert b"limits@openssh.com" in server.recv(1000)


def test_openssh_without_the_limits_extension_gets_64_kib_requests(channel_pair):
    ours, server = channel_pair
    server.sendall(status_packet(1 << 30, 8, b"Operation unsupported"))

    assert negotiated_request_bytes(SftpWire(ours, RECEIVE), OPENSSH_BANNER) == OPENSSH_REQUEST_BYTES


def test_other_servers_are_not_asked_for_limits(channel_pair):
    ours, server = channel_pair

    assert negotiated_request_bytes(SftpWire(ours, RECEIVE), "SSH-2.0-AWS_SFTP_1.1") == PORTABLE_REQUEST_BYTES
    server.setblocking(False)
    with pytest.raises(BlockingIOError):
        server.recv(1)


def test_connections_offer_aes_gcm_first_and_no_weak_algorithms(channel_pair):
    ours, _ = channel_pair
    options = new_transport(ours).get_security_options()

    assert options.ciphers[0] == "aes128-gcm@openssh.com"
    assert options.ciphers == tuple(name for name in PREFERRED_CIPHERS if name in paramiko.Transport._cipher_info)
    assert not [name for name in options.ciphers if "cbc" in name or "3des" in name]
    assert options.digests[0] == "hmac-sha2-256-etm@openssh.com"
    assert not [name for name in options.digests if "md5" in name]
    assert options.digests[-1] == "hmac-sha1"


def test_disabled_algorithms_stay_disabled(channel_pair):
    ours, _ = channel_pair
    transport = new_transport(ours, disabled_algorithms={"ciphers": ["aes128-gcm@openssh.com"]})

    assert "aes128-gcm@openssh.com" not in transport.preferred_ciphers
    assert transport.preferred_ciphers[0] == "aes256-gcm@openssh.com"
