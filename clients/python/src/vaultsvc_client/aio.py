"""Asynchronous client (``grpc.aio``): one channel, one coroutine per RPC."""

# ``timeout`` is the gRPC deadline sent to the server (as in grpc.aio itself),
# not a local wait that asyncio.timeout() could replace.

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
from grpc import aio
from interakt.vault.v1 import audit_service_pb2 as audit_pb
from interakt.vault.v1 import audit_service_pb2_grpc as audit_grpc
from interakt.vault.v1 import config_service_pb2 as config_pb
from interakt.vault.v1 import config_service_pb2_grpc as config_grpc
from interakt.vault.v1 import resolver_service_pb2 as resolver_pb
from interakt.vault.v1 import resolver_service_pb2_grpc as resolver_grpc
from interakt.vault.v1 import secret_service_pb2 as secret_pb
from interakt.vault.v1 import secret_service_pb2_grpc as secret_grpc

from ._common import (
    CHANNEL_OPTIONS,
    DEFAULT_ADDRESS,
    DEFAULT_PAGE_SIZE,
    DEFAULT_TIMEOUT,
    FieldsLike,
    RetryPolicy,
    TLSConfig,
    auth_metadata,
    channel_security,
    check_timeout,
    template_fields,
)
from .errors import DeadlineExceeded, Unavailable, VaultError, error_from_rpc_error

__all__ = ["AsyncVaultClient"]

_Response = TypeVar("_Response")


class AsyncVaultClient:
    """``asyncio`` client for every vaultsvc RPC, on a ``grpc.aio`` channel.

    Args:
        address: ``host:port`` of the server (default ``127.0.0.1:50051``).
        token: bearer token, sent as ``authorization: Bearer <token>``.
        tls: TLS material; None picks plaintext for a loopback address and
            TLS with the system roots otherwise.
        insecure: True forces plaintext (only sensible on loopback).
        timeout: default deadline of one call in seconds, retries included.
        retry: retry policy for UNAVAILABLE on idempotent calls.

    Every method raises a :class:`~vaultsvc_client.errors.VaultError` subclass
    on failure and accepts ``timeout=`` to override the default deadline.
    Use it as an async context manager, or await :meth:`close`. Create it
    inside the event loop that will use it.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        token: str | None = None,
        *,
        tls: TLSConfig | None = None,
        insecure: bool | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        channel: aio.Channel | None = None,
    ) -> None:
        self._metadata = auth_metadata(token)
        self._timeout = check_timeout(timeout)
        self._retry = retry if retry is not None else RetryPolicy()
        self._owns_channel = channel is None
        if channel is None:
            security = channel_security(address, tls, insecure)
            if security is None:
                channel = aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            else:
                channel = aio.secure_channel(
                    address,
                    security.credentials(),
                    options=CHANNEL_OPTIONS + security.channel_options(),
                )
        self._channel = channel
        self._secrets = secret_grpc.SecretServiceStub(channel)
        self._configs = config_grpc.ConfigServiceStub(channel)
        self._resolver = resolver_grpc.ResolverServiceStub(channel)
        self._audit = audit_grpc.AuditServiceStub(channel)

    @classmethod
    def from_channel(
        cls,
        channel: aio.Channel,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
    ) -> AsyncVaultClient:
        """Wraps a channel you own; :meth:`close` leaves it open."""
        return cls(token=token, timeout=timeout, retry=retry, channel=channel)

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close(grace=None)

    async def __aenter__(self) -> AsyncVaultClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- SecretService ---------------------------------------------------------------

    async def create_secret(
        self, name: str, value: str, description: str = "", *, timeout: float | None = None
    ) -> secret_pb.Secret:
        request = secret_pb.CreateSecretRequest(name=name, value=value, description=description)
        return await self._call(self._secrets.CreateSecret, request, False, timeout)

    async def get_secret(self, name: str, *, timeout: float | None = None) -> secret_pb.Secret:
        request = secret_pb.GetSecretRequest(name=name)
        return await self._call(self._secrets.GetSecret, request, True, timeout)

    async def list_secrets(
        self,
        name_contains: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
        *,
        timeout: float | None = None,
    ) -> secret_pb.ListSecretsResponse:
        """One page; ``next_page_token`` is empty on the last one."""
        request = secret_pb.ListSecretsRequest(
            name_contains=name_contains, page_size=page_size, page_token=page_token
        )
        return await self._call(self._secrets.ListSecrets, request, True, timeout)

    async def iter_secrets(
        self,
        name_contains: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[secret_pb.Secret]:
        """Every matching secret, fetching pages as needed (``timeout`` is per page)."""
        token = ""
        while True:
            page = await self.list_secrets(name_contains, page_size, token, timeout=timeout)
            for secret in page.secrets:
                yield secret
            token = page.next_page_token
            if not token:
                return

    async def update_secret(
        self,
        name: str,
        value: str | None = None,
        description: str | None = None,
        etag: str = "",
        *,
        timeout: float | None = None,
    ) -> secret_pb.Secret:
        """``value`` None keeps the stored value; ``description`` None keeps it, "" clears it."""
        request = secret_pb.UpdateSecretRequest(name=name, etag=etag)
        if value is not None:
            request.value = value
        if description is not None:
            request.description = description
        return await self._call(self._secrets.UpdateSecret, request, False, timeout)

    async def delete_secret(
        self, name: str, etag: str = "", *, timeout: float | None = None
    ) -> None:
        request = secret_pb.DeleteSecretRequest(name=name, etag=etag)
        await self._call(self._secrets.DeleteSecret, request, False, timeout)

    async def get_vault_stats(self, *, timeout: float | None = None) -> secret_pb.VaultStats:
        request = secret_pb.GetVaultStatsRequest()
        return await self._call(self._secrets.GetVaultStats, request, True, timeout)

    # -- ConfigService ---------------------------------------------------------------

    async def put_config_value(
        self, key: str, value: str, description: str = "", *, timeout: float | None = None
    ) -> config_pb.ConfigValue:
        request = config_pb.PutConfigValueRequest(key=key, value=value, description=description)
        return await self._call(self._configs.PutConfigValue, request, False, timeout)

    async def get_config_value(
        self, key: str, *, timeout: float | None = None
    ) -> config_pb.ConfigValue:
        request = config_pb.GetConfigValueRequest(key=key)
        return await self._call(self._configs.GetConfigValue, request, True, timeout)

    async def list_config_values(
        self,
        key_contains: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
        *,
        timeout: float | None = None,
    ) -> config_pb.ListConfigValuesResponse:
        request = config_pb.ListConfigValuesRequest(
            key_contains=key_contains, page_size=page_size, page_token=page_token
        )
        return await self._call(self._configs.ListConfigValues, request, True, timeout)

    async def iter_config_values(
        self,
        key_contains: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[config_pb.ConfigValue]:
        token = ""
        while True:
            page = await self.list_config_values(key_contains, page_size, token, timeout=timeout)
            for config_value in page.config_values:
                yield config_value
            token = page.next_page_token
            if not token:
                return

    async def delete_config_value(self, key: str, *, timeout: float | None = None) -> None:
        request = config_pb.DeleteConfigValueRequest(key=key)
        await self._call(self._configs.DeleteConfigValue, request, False, timeout)

    # -- ResolverService -------------------------------------------------------------

    async def resolve_template(
        self,
        fields: FieldsLike,
        inputs: Mapping[str, str] | None = None,
        tool: str = "",
        *,
        timeout: float | None = None,
    ) -> resolver_pb.ResolveTemplateResponse:
        """Fills every field's placeholders; fails as a whole (read-only, so retried)."""
        request = resolver_pb.ResolveTemplateRequest(
            fields=template_fields(fields), inputs=dict(inputs or {}), tool=tool
        )
        return await self._call(self._resolver.ResolveTemplate, request, True, timeout)

    async def check_template(
        self, fields: FieldsLike, *, timeout: float | None = None
    ) -> resolver_pb.CheckTemplateResponse:
        """References and problems of each field, without resolving anything."""
        request = resolver_pb.CheckTemplateRequest(fields=template_fields(fields))
        return await self._call(self._resolver.CheckTemplate, request, True, timeout)

    # -- AuditService ----------------------------------------------------------------

    async def list_audit_events(
        self,
        secret_name: str = "",
        principal: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
        *,
        timeout: float | None = None,
    ) -> audit_pb.ListAuditEventsResponse:
        """One page of audit events, newest first."""
        request = audit_pb.ListAuditEventsRequest(
            secret_name=secret_name, principal=principal, page_size=page_size, page_token=page_token
        )
        return await self._call(self._audit.ListAuditEvents, request, True, timeout)

    async def iter_audit_events(
        self,
        secret_name: str = "",
        principal: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[audit_pb.AuditEvent]:
        token = ""
        while True:
            page = await self.list_audit_events(
                secret_name, principal, page_size, token, timeout=timeout
            )
            for event in page.events:
                yield event
            token = page.next_page_token
            if not token:
                return

    # -- plumbing --------------------------------------------------------------------

    async def _call(
        self,
        method: Callable[..., Awaitable[_Response]],
        request: Any,
        idempotent: bool,
        timeout: float | None,
    ) -> _Response:
        budget = check_timeout(timeout) if timeout is not None else self._timeout
        deadline = time.monotonic() + budget
        attempts = self._retry.max_attempts if idempotent else 1
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(
                    f"deadline of {budget:g}s exceeded after {attempt - 1} tries"
                )
            try:
                return await method(request, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as exc:
                error: VaultError = error_from_rpc_error(exc)
                if not isinstance(error, Unavailable) or attempt >= attempts:
                    raise error from exc
                pause = self._retry.backoff(attempt)
                if time.monotonic() + pause >= deadline:
                    raise error from exc
            await asyncio.sleep(pause)
