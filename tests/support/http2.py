"""A raw HTTP/2 gRPC client that sends requests and then never reads its socket.

grpc's own clients always read what arrives, so a *stalled reader* (a client that asks for
big replies and stops reading) needs a hand-made connection: the preface, a SETTINGS frame
announcing a tiny stream window, then HEADERS + DATA per call. The server can send no more
than the window, so every reply it made stays buffered on the server's side.
"""

from __future__ import annotations

import socket
import struct

from google.protobuf.message import Message

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _SETTINGS = 0x0, 0x1, 0x4
_END_STREAM, _END_HEADERS, _ACK = 0x1, 0x4, 0x1
_SETTINGS_INITIAL_WINDOW_SIZE = 0x4
_MAX_FRAME = 16_384


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def _hpack_int(value: int) -> bytes:
    if value < 127:
        return bytes([value])
    out = bytearray([127])
    value -= 127
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: str, value: str) -> bytes:
    """A header as "literal without indexing, new name", no Huffman coding."""
    raw_name, raw_value = name.encode(), value.encode()
    return b"\x00" + _hpack_int(len(raw_name)) + raw_name + _hpack_int(len(raw_value)) + raw_value


class StalledReader:
    """One HTTP/2 connection whose streams get a window of ``window`` bytes, never more."""

    def __init__(self, address: str, window: int = 16) -> None:
        host, _, port = address.rpartition(":")
        self.authority = address
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.sendall(
            _PREFACE
            + _frame(_SETTINGS, 0, 0, struct.pack(">HI", _SETTINGS_INITIAL_WINDOW_SIZE, window))
        )
        self._ack_server_settings()
        self.next_stream = 1

    def _ack_server_settings(self) -> None:
        """Read the server's first SETTINGS frame and acknowledge it (nothing read after)."""
        header = self._read_exactly(9)
        length, kind = int.from_bytes(header[:3], "big"), header[3]
        self._read_exactly(length)
        assert kind == _SETTINGS, f"expected the server's SETTINGS first, got frame type {kind}"
        self.sock.sendall(_frame(_SETTINGS, _ACK, 0, b""))

    def _read_exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("server closed the connection")
            data += chunk
        return data

    def call(self, method: str, request: Message, metadata: list[tuple[str, str]]) -> int:
        """Start a unary call (headers and the whole request); returns its stream id."""
        stream = self.next_stream
        self.next_stream += 2
        block = b"".join(
            _literal(name, value)
            for name, value in (
                (":method", "POST"),
                (":scheme", "http"),
                (":path", method),
                (":authority", self.authority),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *metadata,
            )
        )
        self.sock.sendall(_frame(_HEADERS, _END_HEADERS, stream, block))
        body = request.SerializeToString()
        message = b"\x00" + struct.pack(">I", len(body)) + body
        chunks = [message[i : i + _MAX_FRAME] for i in range(0, len(message), _MAX_FRAME)]
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            self.sock.sendall(_frame(_DATA, _END_STREAM if last else 0, stream, chunk))
        return stream

    def close(self) -> None:
        self.sock.close()
