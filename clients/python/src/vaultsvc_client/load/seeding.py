"""``--seed-secrets``: create throwaway secrets for the run, and remove them for good.

Every run gets a unique prefix (``load_<12 hex>_``), so the tool only ever
creates, lists and deletes names of its own run, never anyone else's secret.
Values are random URL-safe text of the asked size; they go into the create
requests and nowhere else (no log, no report, no argv).

Removal deletes every name this run tried to create (a create that failed with
UNAVAILABLE or a deadline may still have been applied) plus whatever a listing
by the prefix finds, then lists again to prove nothing is left. Where the vault
guards deletes (``force``) or keeps deleted secrets for recovery (``purge``),
the delete request sets those fields, so nothing stays behind.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio
from interakt.vault.v1 import secret_service_pb2 as secret_pb
from interakt.vault.v1 import secret_service_pb2_grpc as secret_grpc

from .._common import auth_metadata
from ..errors import VaultError, error_from_rpc_error

__all__ = ["SeedError", "SeededSecrets", "Seeder", "new_prefix"]

ADMIN_CONCURRENCY = 16
LIST_PAGE_SIZE = 1000
DESCRIPTION = "created by vaultctl load; removed after the run"


class SeedError(Exception):
    """Seeding or cleanup failed; the message is one line for the user (never a value)."""


def new_prefix() -> str:
    return f"load_{secrets.token_hex(6)}_"


def random_value(size: int) -> str:
    """``size`` bytes of random URL-safe ASCII (so also ``size`` bytes of UTF-8)."""
    return secrets.token_urlsafe(size)[:size]


@dataclass
class SeededSecrets:
    prefix: str
    value_size: int
    names: list[str]
    removed: int = 0
    left: int | None = None
    """Secrets with the prefix still listed after cleanup (None: cleanup did not finish)."""


def _has_field(message: type[object], name: str) -> bool:
    return name in message.DESCRIPTOR.fields_by_name  # type: ignore[attr-defined]


class Seeder:
    """Creates and removes one run's secrets over an admin channel."""

    def __init__(
        self,
        channel: aio.Channel,
        admin_token: str,
        timeout: float,
        progress: Callable[[str], None] = lambda _: None,
    ) -> None:
        self._stub = secret_grpc.SecretServiceStub(channel)
        self._metadata = auth_metadata(admin_token)
        self._timeout = timeout
        self._progress = progress
        self._attempted: list[str] = []
        self.seeded: SeededSecrets | None = None

    async def create(self, count: int, value_size: int) -> SeededSecrets:
        """Creates ``count`` secrets; raises :class:`SeedError` on the first failure."""
        prefix = new_prefix()
        width = max(6, len(str(count - 1)))
        names = [f"{prefix}{index:0{width}d}" for index in range(count)]
        seeded = self.seeded = SeededSecrets(prefix=prefix, value_size=value_size, names=[])

        async def create_one(name: str) -> None:
            self._attempted.append(name)
            request = secret_pb.CreateSecretRequest(
                name=name, value=random_value(value_size), description=DESCRIPTION
            )
            await self._call(self._stub.CreateSecret, request)
            seeded.names.append(name)
            done = len(seeded.names)
            if done % 100 == 0 or done == count:
                self._progress(f"seeded {done}/{count} secrets ({prefix}*)")

        failures = await _bounded(create_one, names, stop_on_error=True)
        if failures:
            name, error = failures[0]
            raise SeedError(f"creating secret {name}: {error}")
        seeded.names.sort()
        return seeded

    async def remove(self) -> SeededSecrets | None:
        """Deletes every secret of this run for good, then checks that none is left.

        Best effort over all names (one failed delete does not stop the others);
        raises :class:`SeedError` when something could not be removed.
        """
        seeded = self.seeded
        if seeded is None:
            return None
        self._progress(f"removing the seeded secrets ({seeded.prefix}*)")
        try:
            targets = set(self._attempted) | set(await self._listed(seeded.prefix))
        except _CallFailed as exc:
            targets = set(self._attempted)
            listing_error: VaultError | None = exc.error
        else:
            listing_error = None
        removed = 0

        async def delete_one(name: str) -> None:
            nonlocal removed
            request = secret_pb.DeleteSecretRequest(name=name)
            if _has_field(secret_pb.DeleteSecretRequest, "force"):
                request.force = True
            if _has_field(secret_pb.DeleteSecretRequest, "purge"):
                request.purge = True
            try:
                await self._call(self._stub.DeleteSecret, request)
            except _CallFailed as exc:
                if exc.error.code != grpc.StatusCode.NOT_FOUND:
                    raise
                return  # already gone (or its create was never applied)
            removed += 1

        failures = await _bounded(delete_one, sorted(targets), stop_on_error=False)
        seeded.removed = removed
        try:
            seeded.left = len(await self._listed(seeded.prefix))
        except _CallFailed as exc:
            listing_error = listing_error or exc.error
        if failures:
            name, error = failures[0]
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise SeedError(
                f"could not remove seeded secret {name}: {error}{more}; "
                f"remove the secrets named {seeded.prefix}* by hand"
            )
        if listing_error is not None:
            raise SeedError(
                f"could not list the seeded secrets to check the cleanup: {listing_error}; "
                f"check for secrets named {seeded.prefix}*"
            )
        if seeded.left:
            raise SeedError(
                f"{seeded.left} seeded secret(s) named {seeded.prefix}* are still listed"
            )
        self._progress(f"removed {removed} seeded secrets, none left")
        return seeded

    async def _listed(self, prefix: str) -> list[str]:
        names: list[str] = []
        token = ""
        while True:
            request = secret_pb.ListSecretsRequest(
                name_contains=prefix, page_size=LIST_PAGE_SIZE, page_token=token
            )
            if _has_field(secret_pb.ListSecretsRequest, "show_deleted"):
                request.show_deleted = True
            reply: secret_pb.ListSecretsResponse = await self._call(self._stub.ListSecrets, request)
            names.extend(s.name for s in reply.secrets if s.name.startswith(prefix))
            token = reply.next_page_token
            if not token:
                return names

    async def _call(self, method: Any, request: object) -> Any:
        try:
            return await method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise _CallFailed(error_from_rpc_error(exc)) from None


class _CallFailed(Exception):
    def __init__(self, error: VaultError) -> None:
        super().__init__(str(error))
        self.error = error


async def _bounded(
    action: Callable[[str], Awaitable[None]], names: Iterable[str], *, stop_on_error: bool
) -> list[tuple[str, VaultError]]:
    """Runs ``action`` over ``names``, at most ADMIN_CONCURRENCY at once; returns the
    failures (with ``stop_on_error``, no new action starts after the first one)."""
    queue = list(names)
    queue.reverse()
    failures: list[tuple[str, VaultError]] = []

    async def lane() -> None:
        while queue and not (stop_on_error and failures):
            name = queue.pop()
            try:
                await action(name)
            except _CallFailed as exc:
                failures.append((name, exc.error))

    await asyncio.gather(*(lane() for _ in range(min(ADMIN_CONCURRENCY, len(queue)))))
    return failures
