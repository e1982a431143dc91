"""The drain's connection close (vaultsvc.api.drain.disconnect) on real sockets: it finds
exactly the connections this process accepted on a port and shuts them down."""

from __future__ import annotations

import socket

import pytest

from vaultsvc.api.drain import accepted_sockets, disconnect, listening_sockets, stop_listening


def test_disconnect_closes_only_connections_accepted_on_the_port() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_server(("127.0.0.1", 0)) as other_listener,
    ):
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        other_client = socket.create_connection(other_listener.getsockname())
        served, _ = listener.accept()
        other_served, _ = other_listener.accept()
        try:
            found = accepted_sockets(port)
            assert list(found.values()) == [served.fileno()]
            assert disconnect(port) == 1
            client.settimeout(5)
            assert client.recv(1) == b""  # the client sees the connection end
            # The listener, the client's own socket and other ports are left alone.
            with socket.create_connection(("127.0.0.1", port)) as late:
                listener.settimeout(5)
                accepted, _ = listener.accept()
                accepted.close()
                late.sendall(b"y")
            other_client.sendall(b"x")
            assert other_served.recv(1) == b"x"
        finally:
            for sock in (client, other_client, served, other_served):
                sock.close()


def test_stop_listening_refuses_new_connections_on_that_port_only() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_server(("127.0.0.1", 0)) as other_listener,
    ):
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as before:
            served, _ = listener.accept()
            with served:
                assert list(listening_sockets(port).values()) == [listener.fileno()]
                assert stop_listening(port) == 1
                # New connections are refused; the connection already accepted still works.
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection(("127.0.0.1", port), timeout=5)
                before.sendall(b"z")
                assert served.recv(1) == b"z"
        with socket.create_connection(other_listener.getsockname(), timeout=5):
            accepted, _ = other_listener.accept()
            accepted.close()
