"""The console's HTTP listener: uvicorn's ``Server`` as a task in the vault's own event loop.

Listener creation is one small function, :func:`bind_console_socket`, and
:meth:`ConsoleServer.start` takes an already-bound socket OR ``host:port``: a supervisor
that binds ports once and hands them to worker processes passes the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from vaultsvc.api.frontdoor import FrontDoor
from vaultsvc.audit import AuditWriter
from vaultsvc.auth import TokenAuthenticator
from vaultsvc.bootstrap import StartupError, is_loopback
from vaultsvc.config import ConfigError, Settings
from vaultsvc.console.app import Console, ConsoleSettings, build_app
from vaultsvc.ratelimit import MissingNamesLimiter
from vaultsvc.storage.db import Database
from vaultsvc.storage.sessions import SessionStore
from vaultsvc.vault import Vault

_log = logging.getLogger("vaultsvc.console")


def check_console_transport(settings: Settings, address: str) -> None:
    """Plaintext only on loopback, unless plaintext is explicitly allowed (as for gRPC)."""
    host = address.rpartition(":")[0]
    if settings.tls is None and not is_loopback(host) and not settings.allow_plaintext_non_loopback:
        raise ConfigError(
            f"refusing to serve the console in plaintext on non-loopback address {address}: "
            "configure [tls] or set [server] allow_plaintext_non_loopback = true"
        )


def bind_console_socket(address: str, *, reuseport: bool = False) -> socket.socket:
    """A listening, non-blocking TCP socket on ``host:port`` (port 0: the OS picks one).

    ``reuseport``: a worker of :mod:`vaultsvc.supervisor` joins the port its supervisor
    claimed (:func:`vaultsvc.ports.claim`) next to its sibling workers; a single vault binds
    without it, so a port another vault holds is refused."""
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port_text), type=socket.SOCK_STREAM)
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        raise StartupError(f"cannot listen on {address}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        _no_delay(sock)
        sock.bind(sockaddr)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {address}: {exc.strerror}") from None
    return sock


def _no_delay(sock: socket.socket) -> None:
    """Accepted connections inherit TCP_NODELAY: without it a response written as headers
    then body waits ~40 ms for the client's delayed ACK (Nagle)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handling: the vault's CLI owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ConsoleServer:
    def __init__(self, console: Console, settings: Settings) -> None:
        self.console = console
        self.settings = settings
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.host = ""
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/"

    async def start(
        self,
        *,
        sock: socket.socket | None = None,
        address: str | None = None,
        reuseport: bool = False,
    ) -> None:
        """Serve on ``sock`` (already bound and listening) or on a new socket at ``address``
        (``reuseport``: see :func:`bind_console_socket`)."""
        if sock is None:
            if address is None:
                raise ValueError("give a bound socket or an address")
            sock = bind_console_socket(address, reuseport=reuseport)
        else:
            _no_delay(sock)
        bound = sock.getsockname()
        self.host, self.port = str(bound[0]), int(bound[1])
        tls = self.settings.tls
        config = uvicorn.Config(
            build_app(self.console),
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=max(int(self.settings.grace_period), 1),
            ssl_certfile=str(tls.cert_file) if tls else None,
            ssl_keyfile=str(tls.key_file) if tls else None,
        )
        # Our own access log (vaultsvc.access) records API calls; uvicorn's would add a second
        # line per request, with query strings.
        logging.getLogger("uvicorn.access").disabled = True
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="console")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise StartupError(f"the console could not start on {self.host}:{self.port}")
            await asyncio.sleep(0.01)
        _log.info(
            "console listening", extra={"url": self.url, "listen": f"{self.host}:{self.port}"}
        )

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.settings.grace_period + 2)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._server = None
        self._task = None


def console_server(
    settings: Settings,
    db: Database,
    vault: Vault,
    audit: AuditWriter,
    authenticator: TokenAuthenticator,
    frontdoor: FrontDoor | None = None,
) -> ConsoleServer:
    """The console over the vault's own core, audit writer and token table (not started)."""
    console = Console(
        vault,
        audit,
        authenticator,
        SessionStore(db),
        ConsoleSettings(
            session_ttl=settings.console_session_ttl,
            secure_cookie=settings.tls is not None,
            max_body_bytes=settings.max_receive_message_bytes,
            rpc_timeout_cap=settings.rpc_timeout_cap,
        ),
        # The console checks templates but never resolves: nothing is charged to it.
        MissingNamesLimiter(settings.missing_names_rate, settings.missing_names_burst),
        frontdoor,
    )
    return ConsoleServer(console, settings)


async def start_console(
    settings: Settings,
    db: Database,
    vault: Vault,
    audit: AuditWriter,
    authenticator: TokenAuthenticator,
    *,
    frontdoor: FrontDoor | None = None,
    sock: socket.socket | None = None,
    reuseport: bool = False,
) -> ConsoleServer | None:
    """Start the console when ``console_listen`` is set (or a socket is given); else None.

    ``reuseport``: a supervisor's worker, binding the console port the supervisor claimed."""
    if sock is None and settings.console_listen is None:
        return None
    if settings.console_listen is not None:
        check_console_transport(settings, settings.console_listen)
    server = console_server(settings, db, vault, audit, authenticator, frontdoor)
    await server.start(sock=sock, address=settings.console_listen, reuseport=reuseport)
    return server
