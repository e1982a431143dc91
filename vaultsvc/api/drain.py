"""Draining a stopping vault so that no client sees CANCELLED (issue 15 item 12).

Why calls got CANCELLED: grpc core hands a call to the application only when the
application asks for the next one (grpc.aio asks one at a time, from the event loop); calls
that arrived but were not yet asked for wait inside grpc. When the server's shutdown starts,
grpc destroys every such waiting call, and a call destroyed before its handler ran ends
with status CANCELLED ("CANCELLED"); so does a call that reaches the server after the
shutdown started but before the client has read the GOAWAY (grpc/grpc#41785). Clients on a
busy connection always have a few calls in that state, so each graceful stop cancelled
some, and clients do not retry CANCELLED.

So the vault never starts grpc's shutdown while a connection can still bring calls. It
drains in phases (:func:`vaultsvc.server.stop_server`):

1. health NOT_SERVING, calls served as usual for ``shutdown_delay`` (load balancers move);
2. the gate closes: every new call (health and reflection excepted) is refused at once with
   UNAVAILABLE (reason ``UNAVAILABLE``, a RetryInfo and a request id), which clients retry
   elsewhere; the vault waits (bounded) until no refusal happened for a short while and
   until every call it was serving has finished and its reply has left (:meth:`settled`);
3. it closes its clients' connections itself (:func:`disconnect`, a TCP shutdown of the
   accepted sockets of its port): a client sees its connection close, which fails any call
   still in transit with UNAVAILABLE, and it reconnects to another instance;
4. only then grpc's server stops: nothing is left to cancel, and the listening socket closes
   before a reconnecting client could get a call through.

The gate is not an interceptor of its own: the vault's one interceptor
(:class:`vaultsvc.api.interceptor.VaultInterceptor`) asks it per call, so a call passes one
interceptor hop and one wrapper coroutine. While open, :meth:`DrainGate.track` counts each
checked call from the start of its handler until grpc reports it done; once closed,
:meth:`DrainGate.refusal` answers instead. Health and reflection (open methods) are neither
counted nor refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from vaultsvc.api.status import status_for
from vaultsvc.errors import Reason, Unavailable

_log = logging.getLogger("vaultsvc.server")

SHUTTING_DOWN_MESSAGE = "the vault is shutting down; retry (another instance will answer)"
RETRY_DELAY = 1.0
"""Seconds a refused client is told to wait (RetryInfo): long enough for it to go quiet."""
_LISTEN_STATE = "0A"
"""``st`` of a listening socket in ``/proc/net/tcp``."""


class DrainGate:
    """Counts the calls being served; refuses new calls with UNAVAILABLE once :meth:`close`
    is called (consulted by the vault's interceptor for every call that is not open)."""

    def __init__(self) -> None:
        self.closed = False
        self.refused = 0
        self.serving = 0
        """Calls admitted past the gate and not yet finished (reply sent or call ended)."""
        self._last_refusal = 0.0
        self._idle = asyncio.Event()
        self._idle.set()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._last_refusal = time.monotonic()
            _log.info("refusing new calls with UNAVAILABLE: the vault is shutting down")

    async def quiet(self, quiet: float, budget: float) -> bool:
        """Wait (at most ``budget`` seconds) until no call was refused for ``quiet``
        seconds: clients retrying with backoff have then moved on. True when it got quiet."""
        deadline = time.monotonic() + budget
        while True:
            now = time.monotonic()
            calm_at = self._last_refusal + quiet
            if calm_at <= now:
                return True
            if now >= deadline:
                return False
            await asyncio.sleep(min(calm_at, deadline) - now)

    async def settled(self, budget: float) -> bool:
        """Wait (at most ``budget`` seconds) until no call is being served. True if none."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(budget, 0.0)):
                await self._idle.wait()
        return self.serving == 0

    def track(self, context: Any) -> None:
        """Count the call of ``context`` in :attr:`serving` until grpc reports it done
        (its reply has left or it ended); called as its handler starts."""
        self.serving += 1
        if self.serving == 1:
            self._idle.clear()
        context.add_done_callback(self._done)

    def _done(self, _: object) -> None:
        self.serving -= 1
        if self.serving == 0:
            self._idle.set()

    def refusal(self, handler: Any) -> Any:
        """A handler of the same shape as ``handler`` that only refuses."""

        async def refuse(request: Any, context: Any) -> None:
            self.refused += 1
            self._last_refusal = time.monotonic()
            request_id = uuid.uuid4().hex
            error = Unavailable(
                SHUTTING_DOWN_MESSAGE, reason=Reason.UNAVAILABLE, retry_delay=RETRY_DELAY
            )
            status = status_for(error, request_id)
            await context.abort(
                status.code,
                status.details,
                (*status.trailing_metadata, ("x-request-id", request_id)),
            )

        return _same_shape(handler, refuse)


def _same_shape(handler: Any, behavior: Callable[..., Awaitable[Any]]) -> Any:
    if handler.unary_unary is not None:
        make = grpc.unary_unary_rpc_method_handler
    elif handler.unary_stream is not None:
        make = grpc.unary_stream_rpc_method_handler
    elif handler.stream_unary is not None:
        make = grpc.stream_unary_rpc_method_handler
    else:
        make = grpc.stream_stream_rpc_method_handler
    return make(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def accepted_sockets(port: int, proc: Path = Path("/proc/self")) -> dict[int, int]:
    """This process's TCP sockets accepted on ``port`` (local port ``port``, not listening),
    as inode -> file descriptor, from ``/proc/self/net/tcp{,6}`` and ``/proc/self/fd``."""
    return _sockets(port, proc, listening=False)


def listening_sockets(port: int, proc: Path = Path("/proc/self")) -> dict[int, int]:
    """This process's TCP sockets listening on ``port`` (with ``--workers`` each worker has
    its own, in the kernel's SO_REUSEPORT group), as inode -> file descriptor."""
    return _sockets(port, proc, listening=True)


def _sockets(port: int, proc: Path, *, listening: bool) -> dict[int, int]:
    inodes: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local_port = int(fields[1].rpartition(":")[2], 16)
            if local_port == port and (fields[3] == _LISTEN_STATE) == listening:
                inodes.add(int(fields[9]))
    found: dict[int, int] = {}
    if not inodes:
        return found
    with contextlib.suppress(OSError):
        for entry in os.scandir(proc / "fd"):
            with contextlib.suppress(OSError, ValueError):
                target = os.readlink(entry.path)
                if target.startswith("socket:["):
                    inode = int(target[8:-1])
                    if inode in inodes:
                        found[inode] = int(entry.name)
    return found


def stop_listening(port: int) -> int:
    """Stop accepting connections on ``port`` in this process (``shutdown`` of its listening
    socket: the kernel refuses new connections and resets those not yet accepted, so the
    clients get UNAVAILABLE and go to another worker or replica); returns how many."""
    return _shut_down(listening_sockets(port), socket.SHUT_RD)


def disconnect(port: int) -> int:
    """Shut down (TCP FIN, both directions) every connection this process accepted on
    ``port``; returns how many. grpc then sees its connections end, the clients see them
    close (a call in transit fails with UNAVAILABLE) and reconnect elsewhere."""
    return _shut_down(accepted_sockets(port), socket.SHUT_RDWR)


def _shut_down(sockets: dict[int, int], how: int) -> int:
    """``shutdown(how)`` each socket, reached through a duplicate of its descriptor that is
    checked to be the same socket (the descriptor may have been reused meanwhile)."""
    closed = 0
    for inode, fd in sockets.items():
        try:
            dup = os.dup(fd)
        except OSError:
            continue  # closed meanwhile
        try:
            if os.fstat(dup).st_ino != inode:
                continue  # the descriptor was reused for something else meanwhile
            with socket.socket(fileno=dup) as sock:
                dup = -1  # the socket object owns (and closes) the duplicate now
                with contextlib.suppress(OSError):
                    sock.shutdown(how)
                    closed += 1
        finally:
            if dup >= 0:
                os.close(dup)
    return closed
