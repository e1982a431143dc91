"""Port claims on real sockets: what a supervisor's claim lets in and keeps out."""

from __future__ import annotations

import socket

import pytest

from vaultsvc.ports import PortInUse, claim, ensure_free


def _socket(*, reuseaddr: bool, reuseport: bool) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(reuseaddr))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuseport))
    return sock


def test_port_zero_is_resolved_once_and_workers_can_join() -> None:
    held = claim("127.0.0.1:0")
    try:
        assert held.port != 0
        assert held.address == f"127.0.0.1:{held.port}"
        workers = [_socket(reuseaddr=True, reuseport=True) for _ in range(2)]
        for worker in workers:  # what grpc does with grpc.so_reuseport = 1
            worker.bind(("127.0.0.1", held.port))
            worker.listen()
        with socket.create_connection(("127.0.0.1", held.port), timeout=5):
            pass  # a connection reaches a worker, never the (non-listening) claim
        for worker in workers:
            worker.close()
    finally:
        held.close()


def test_a_claimed_port_keeps_out_a_socket_without_reuseport_even_with_no_worker() -> None:
    held = claim("127.0.0.1:0")
    try:
        intruder = _socket(reuseaddr=True, reuseport=False)  # grpc with so_reuseport 0
        with pytest.raises(OSError, match="in use"):
            intruder.bind(("127.0.0.1", held.port))
        intruder.close()
        with pytest.raises(PortInUse, match=f"127.0.0.1:{held.port}"):
            claim(held.address)  # a second supervisor sees the first
        with pytest.raises(PortInUse):
            ensure_free(held.address)
    finally:
        held.close()
    claim(held.address).close()  # released: free again


def test_a_listening_port_is_in_use() -> None:
    listener = _socket(reuseaddr=True, reuseport=True)  # grpc's default: SO_REUSEPORT on
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        with pytest.raises(PortInUse, match="already in use"):
            claim(address)
        with pytest.raises(PortInUse):
            ensure_free(address)
    finally:
        listener.close()
    ensure_free(address)
    ensure_free("127.0.0.1:0")  # port 0 is always free
