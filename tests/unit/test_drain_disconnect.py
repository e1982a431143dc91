"""The drain's connection close (vaultsvc.api.drain.disconnect) on real sockets: it finds
exactly the connections this process accepted on a port and shuts them down."""

from __future__ import annotations

import socket

from vaultsvc.api.drain import accepted_sockets, disconnect


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
