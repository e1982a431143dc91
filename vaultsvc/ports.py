"""Listening ports: refuse one that is taken, and share one among this vault's workers only.

grpc sets ``SO_REUSEPORT`` on its listening sockets by default, so on Linux a second vault
started on a port that one already serves would bind it too, silently, and the kernel would
split the connections between them. Two rules prevent that:

- A single-process vault binds without ``SO_REUSEPORT`` (grpc option ``grpc.so_reuseport``
  0) after :func:`ensure_free` has checked the port: a taken port ends in :class:`PortInUse`.
- With several workers the supervisor claims the port first (:func:`claim`), before any
  worker starts, and keeps the claim until it exits:

  1. a *probe* socket (``SO_REUSEADDR``, no ``SO_REUSEPORT``) binds the address. It fails
     when anything listens there or holds it bound, including another vault's claim, so a
     foreign vault is detected. Port 0 gets its concrete port here, once;
  2. the *claim* socket binds the same port with ``SO_REUSEADDR`` and ``SO_REUSEPORT``
     (the probe is still bound, so nobody can slip in between), then turns ``SO_REUSEADDR``
     off again and the probe is closed. The claim never listens, so it receives no
     connections; it only keeps the port. A program that binds without ``SO_REUSEPORT``
     (any single-process vault, most servers) now fails, even while no worker listens
     (between restarts);
  3. each worker binds the concrete port with ``SO_REUSEPORT`` (grpc's default) and the
     kernel spreads connections over the workers' listening sockets.

  Linux lets a socket join a reuseport group only under the same effective UID; a process
  of that same user that also sets ``SO_REUSEPORT`` could still join, which is why the
  probe runs first: two vaults never both start on one port.

The same :func:`claim` serves any other listener a supervisor shares with its workers
(metrics, console): claim it in the supervisor, hand ``claim.address`` to the workers, and
have them bind it with ``SO_REUSEPORT``.

``SO_REUSEADDR`` on the probe and at the claim's bind keeps a restart on a fixed port from
failing while connections of the previous run linger in TIME_WAIT.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field


class PortInUse(Exception):
    """The address to listen on is taken: another vault, or another program, holds it."""

    def __init__(self, address: str, what: str = "gRPC") -> None:
        super().__init__(
            f"cannot listen on {address} ({what}): the address is already in use, by another "
            "vault or another program; stop it or choose another address"
        )
        self.address = address


def split_address(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) into the host as written and the port."""
    host, _, port = listen.rpartition(":")
    return host, int(port)


def _bind_targets(host: str, port: int) -> list[tuple[int, tuple[str, int]]]:
    """Every (family, sockaddr) ``host`` stands for, as grpc would bind them."""
    bare = host.strip("[]")
    try:
        infos = socket.getaddrinfo(
            bare, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host}: {exc}") from None
    targets: list[tuple[int, tuple[str, int]]] = []
    for family, _, _, _, sockaddr in infos:
        target = (family, (str(sockaddr[0]), int(sockaddr[1])))
        if family in (socket.AF_INET, socket.AF_INET6) and target not in targets:
            targets.append(target)
    return targets


def _bound(family: int, sockaddr: tuple[str, int], *, reuseport: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class PortClaim:
    """A port held by a supervisor for its workers (see the module docstring)."""

    host: str
    port: int
    sockets: list[socket.socket] = field(default_factory=list)

    @property
    def address(self) -> str:
        """``host:port`` with the concrete port, for the workers and the ready line."""
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


def claim(listen: str, what: str = "gRPC") -> PortClaim:
    """Claim ``listen`` for this process's workers, or raise :class:`PortInUse`.

    Port 0 is resolved here, once: every worker binds ``claim.address``.
    """
    host, port = split_address(listen)
    held = PortClaim(host, port)
    probes: list[socket.socket] = []
    try:
        for family, sockaddr in _bind_targets(host, port):
            target = (sockaddr[0], held.port or sockaddr[1])
            try:
                probe = _bound(family, target, reuseport=False)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(f"{host}:{held.port or port}", what) from None
                if exc.errno == errno.EADDRNOTAVAIL and probes:
                    continue  # e.g. "localhost" without IPv6: the other family is enough
                raise
            probes.append(probe)
            held.port = probe.getsockname()[1]
            keeper = _bound(family, (sockaddr[0], held.port), reuseport=True)
            keeper.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
            held.sockets.append(keeper)
        if not held.sockets:
            raise OSError(errno.EADDRNOTAVAIL, f"nothing to bind for {listen}")
    except BaseException:
        held.close()
        raise
    finally:
        for probe in probes:
            probe.close()
    return held


def ensure_free(listen: str, what: str = "gRPC") -> None:
    """Raise :class:`PortInUse` when something already listens on (or holds) ``listen``.

    For a single-process vault, before grpc binds without ``SO_REUSEPORT``; grpc's own bind
    failure (a port taken in between) is reported the same way by the caller.
    """
    if split_address(listen)[1] == 0:
        return
    claim(listen, what).close()
