"""Start-up: the checks that refuse to start (keys, transport), the database opened and
closed in one place, and the server's credentials. Used by ``serve``, ``dev``, ``migrate``
and the ``keys`` commands alike."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from vaultsvc.config import ConfigError, Settings
from vaultsvc.crypto import NONCE_WARN_THRESHOLD, Keyring, key_check_value, verify_key_check_value
from vaultsvc.storage.db import Database, migrate, schema_exists
from vaultsvc.storage.embedded import EmbeddedPostgres
from vaultsvc.storage.repository import Repository

_log = logging.getLogger("vaultsvc.server")


class StartupError(RuntimeError):
    """The server refuses to start; the message says why and what to do."""


async def check_master_keys(db: Database, keyring: Keyring) -> list[str]:
    """Refuse a wrong or missing master key before anything is written.

    Returns warnings (for example a key close to its nonce budget).
    """
    warnings: list[str] = []
    async with db.connection() as conn:
        if not await schema_exists(conn):
            return warnings
    usage = await Repository(db).key_usage()
    for entry in usage:
        key = keyring.find(entry.key_id)
        if key is None:
            if entry.data_keys:
                raise StartupError(
                    f"master key {entry.key_id!r} still wraps {entry.data_keys} data key(s) but is "
                    "not configured. Add it back to VAULT_MASTER_KEYS (any position after the "
                    "primary) until `python -m vaultsvc keys rewrap` has moved every data key to "
                    "the primary."
                )
            continue
        if entry.check_value is not None and not verify_key_check_value(key, entry.check_value):
            raise StartupError(
                f"master key {entry.key_id!r} does not match the key this database was written "
                "with (key check value mismatch). Check VAULT_MASTER_KEYS: the key material for "
                f"id {entry.key_id!r} is wrong. Nothing was written."
            )
        if entry.wrap_count >= NONCE_WARN_THRESHOLD:
            warnings.append(
                f"master key {entry.key_id!r} has wrapped {entry.wrap_count} data keys, close to "
                "the AES-GCM random-nonce limit (2^32): generate a new primary key and rotate"
            )
    return warnings


@contextlib.asynccontextmanager
async def opened_database(settings: Settings) -> AsyncIterator[Database]:
    """The configured database (an embedded Postgres when no URL is set), open for the
    duration of the block and closed (embedded Postgres stopped) after it, whatever happens.

    Raises StartupError when it cannot be reached.
    """
    embedded: EmbeddedPostgres | None = None
    url = settings.database.url
    if not url:
        embedded = EmbeddedPostgres(settings.data_dir)
        await asyncio.to_thread(embedded.start)
        url = embedded.uri()
    try:
        try:
            db = await Database.connect(url, settings.database)
        except Exception as exc:
            raise StartupError(f"cannot connect to the database: {type(exc).__name__}") from None
        try:
            yield db
        finally:
            await db.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def prepare_database(db: Database, keyring: Keyring) -> None:
    """Key checks (read-only), then migrations, then key registration."""
    for warning in await check_master_keys(db, keyring):
        _log.warning(warning)
    async with db.connection(timeout=None) as conn:  # migrations may take long
        await migrate(conn)
    mismatched = await Repository(db).register_master_keys(
        {key_id: key_check_value(keyring.get(key_id)) for key_id in keyring.ids}
    )
    if mismatched:
        raise StartupError(
            f"master key {mismatched[0]!r} does not match the key registered in this database "
            "by another process a moment ago (key check value mismatch). Check "
            f"VAULT_MASTER_KEYS: the key material for id {mismatched[0]!r} is wrong. "
            "No key was registered."
        )


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_transport(settings: Settings) -> None:
    """Refuse, before anything is opened, transport settings that are unsafe or that would
    silently not do what they say."""
    tls = settings.tls
    if tls is None:
        if not is_loopback(settings.listen.rpartition(":")[0]) and not (
            settings.allow_plaintext_non_loopback
        ):
            raise ConfigError(
                "refusing to listen in plaintext on non-loopback address "
                f"{settings.listen}: configure [tls] or set "
                "[server] allow_plaintext_non_loopback = true"
            )
        return
    if tls.require_client_cert and tls.client_ca_file is None:
        raise ConfigError(
            "[tls] require_client_cert needs client_ca_file (the CA that signs client certificates)"
        )
    if tls.client_principals and not tls.require_client_cert:
        # gRPC only asks for (and verifies) client certificates when they are required.
        raise ConfigError(
            "[[tls.client_principals]] need [tls] require_client_cert = true and client_ca_file: "
            "otherwise no client certificate is requested and the mapping would never apply"
        )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read TLS file {path}: {exc.strerror}") from None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    tls = settings.tls
    if tls is None:
        return None
    key = _read(tls.key_file)
    cert = _read(tls.cert_file)
    ca = _read(tls.client_ca_file) if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=tls.require_client_cert
    )
