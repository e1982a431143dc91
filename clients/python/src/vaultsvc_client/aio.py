"""Asynchronous client (``grpc.aio``): one channel, one coroutine per RPC.

This module is the source of both clients: ``client.py`` (blocking) is generated
from it by ``clients/python/tools/unasync.py`` and a test fails when they drift.
Write it so plain token substitutions make it synchronous.
"""

# ``timeout`` is the gRPC deadline sent to the server (as in grpc.aio itself),
# not a local wait that asyncio.timeout() could replace.

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from grpc import aio
from interakt.vault.v1 import access_service_pb2 as access_pb
from interakt.vault.v1 import access_service_pb2_grpc as access_grpc
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
    audit_events_request,
    auth_metadata,
    channel_security,
    check_timeout,
    policies_by_method,
    template_fields,
    total_size_of,
    with_requested_names,
)
from .errors import DeadlineExceeded, Unavailable, VaultError, error_from_rpc_error

__all__ = [
    "AsyncAuditEventsPager",
    "AsyncConfigValuesPager",
    "AsyncPager",
    "AsyncSecretVersionsPager",
    "AsyncSecretsPager",
    "AsyncTokensPager",
    "AsyncVaultClient",
]

_Response = TypeVar("_Response")
_Page = TypeVar("_Page", bound=Message)
_Item = TypeVar("_Item")


class AsyncPager(Generic[_Page, _Item]):
    """Every item of a ``List*`` RPC across all its pages, fetched lazily.

    ``async for item in pager`` walks the items (the next page is requested when
    the current one is used up); ``async for page in pager.pages`` walks the
    replies. Both can be walked again, from the first page. ``total_size`` is
    the reply's count of all matches (None before the first page or when the
    reply has no such field). Other attributes (``secrets``, ``next_page_token``
    ...) are those of the latest page fetched, so a pager reads like the one-page
    reply it replaces.
    """

    def __init__(
        self,
        fetch: Callable[[str], Awaitable[_Page]],
        items_of: Callable[[_Page], Sequence[_Item]],
        *,
        page_token: str = "",
        first: _Page | None = None,
    ) -> None:
        self._fetch = fetch
        self._items_of = items_of
        self._page_token = page_token
        self._first = first
        self._latest = first

    @property
    def total_size(self) -> int | None:
        return total_size_of(self._first) if self._first is not None else None

    @property
    async def pages(self) -> AsyncIterator[_Page]:
        page = await self._first_page()
        while True:
            self._latest = page
            yield page
            token = str(getattr(page, "next_page_token"))  # noqa: B009 - generic page
            if not token:
                return
            page = await self._fetch(token)

    async def _first_page(self) -> _Page:
        if self._first is None:
            self._first = self._latest = await self._fetch(self._page_token)
        return self._first

    def __aiter__(self) -> AsyncIterator[_Item]:
        return self._items()

    async def _items(self) -> AsyncIterator[_Item]:
        async for page in self.pages:
            for item in self._items_of(page):
                yield item

    def __getattr__(self, name: str) -> Any:
        latest = self.__dict__.get("_latest")
        if latest is None:
            raise AttributeError(f"{name} (no page fetched yet)")
        return getattr(latest, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(total_size={self.total_size})"


AsyncSecretsPager = AsyncPager[secret_pb.ListSecretsResponse, secret_pb.Secret]
AsyncSecretVersionsPager = AsyncPager[secret_pb.ListSecretVersionsResponse, secret_pb.SecretVersion]
AsyncConfigValuesPager = AsyncPager[config_pb.ListConfigValuesResponse, config_pb.ConfigValue]
AsyncAuditEventsPager = AsyncPager[audit_pb.ListAuditEventsResponse, audit_pb.AuditEvent]
AsyncTokensPager = AsyncPager[access_pb.ListTokensResponse, access_pb.TokenInfo]


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
        self._access = access_grpc.AccessServiceStub(channel)
        self._policies = policies_by_method(
            {
                "SecretService": self._secrets,
                "ConfigService": self._configs,
                "ResolverService": self._resolver,
                "AuditService": self._audit,
                "AccessService": self._access,
            }
        )

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
        self,
        name: str,
        value: str,
        description: str = "",
        *,
        request_id: str | None = None,
        allowed_hosts: Sequence[str] = (),
        timeout: float | None = None,
    ) -> secret_pb.Secret:
        """Create a secret. Every try carries one ``request_id`` (a new UUID unless given),
        so a retry after an ambiguous UNAVAILABLE returns the first result, not
        ALREADY_EXISTS. ``allowed_hosts`` binds the secret to destination hosts
        (``api.stripe.com``, ``*.stripe.com``); empty leaves it unbound."""
        request = secret_pb.CreateSecretRequest(
            name=name,
            value=value,
            description=description,
            request_id=request_id or str(uuid.uuid4()),
            allowed_hosts=list(allowed_hosts),
        )
        return await self._call(self._secrets.CreateSecret, request, timeout)

    async def get_secret(self, name: str, *, timeout: float | None = None) -> secret_pb.Secret:
        request = secret_pb.GetSecretRequest(name=name)
        return await self._call(self._secrets.GetSecret, request, timeout)

    async def list_secrets(
        self,
        name_contains: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
        *,
        show_deleted: bool = False,
        order_by: str = "",
        never_resolved: bool = False,
        unused_since: datetime | None = None,
        timeout: float | None = None,
    ) -> AsyncSecretsPager:
        """Secrets with their ``usage``: the first page is fetched now, the rest as iterated.

        ``timeout`` applies to each page. ``.secrets`` and ``.next_page_token`` are
        those of the latest page fetched; ``.total_size`` counts every match.
        ``show_deleted`` also lists secrets scheduled for deletion (with their
        ``delete_time`` and ``purge_time``). ``order_by``: ``"name"`` (default),
        ``"last_resolve_time"``, ``"update_time"`` or ``"create_time"`` (times newest
        first). ``never_resolved`` lists only secrets no resolve ever used;
        ``unused_since`` (an aware datetime) only those not resolved since then.
        """
        pager = self.iter_secrets(
            name_contains,
            page_size,
            page_token,
            show_deleted=show_deleted,
            order_by=order_by,
            never_resolved=never_resolved,
            unused_since=unused_since,
            timeout=timeout,
        )
        await pager._first_page()
        return pager

    def iter_secrets(
        self,
        name_contains: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
        *,
        show_deleted: bool = False,
        order_by: str = "",
        never_resolved: bool = False,
        unused_since: datetime | None = None,
        timeout: float | None = None,
    ) -> AsyncSecretsPager:
        """Like :meth:`list_secrets`, but nothing is fetched until iterated."""

        async def fetch(token: str) -> secret_pb.ListSecretsResponse:
            request = secret_pb.ListSecretsRequest(
                name_contains=name_contains,
                page_size=page_size,
                page_token=token,
                show_deleted=show_deleted,
                order_by=order_by,
                never_resolved=never_resolved,
            )
            if unused_since is not None:
                request.unused_since.FromDatetime(unused_since)
            return await self._call(self._secrets.ListSecrets, request, timeout)

        return AsyncPager(fetch, _secrets_of, page_token=page_token)

    async def update_secret(
        self,
        name: str,
        value: str | None = None,
        description: str | None = None,
        etag: str = "",
        *,
        allowed_hosts: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> secret_pb.Secret:
        """``value`` None keeps the stored value; ``description`` None keeps it, "" clears it;
        ``allowed_hosts`` None keeps them, a list replaces them ([] unbinds; widening or
        unbinding needs a new ``value`` in the same call)."""
        request = secret_pb.UpdateSecretRequest(name=name, etag=etag)
        if value is not None:
            request.value = value
        if description is not None:
            request.description = description
        if allowed_hosts is not None:
            request.allowed_hosts.CopyFrom(secret_pb.HostList(hosts=list(allowed_hosts)))
        return await self._call(self._secrets.UpdateSecret, request, timeout)

    async def delete_secret(
        self,
        name: str,
        etag: str = "",
        *,
        purge: bool = False,
        force: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Schedules deletion for the vault's recovery window; ``purge`` deletes at once.

        A secret resolved within the vault's ``delete_guard_days`` raises
        :class:`~vaultsvc_client.errors.SecretInUse` (with ``tools`` and
        ``last_resolve_time``) unless ``force``."""
        request = secret_pb.DeleteSecretRequest(name=name, etag=etag, purge=purge, force=force)
        await self._call(self._secrets.DeleteSecret, request, timeout)

    async def restore_secret(self, name: str, *, timeout: float | None = None) -> secret_pb.Secret:
        """Brings back a secret scheduled for deletion, with its versions."""
        request = secret_pb.RestoreSecretRequest(name=name)
        return await self._call(self._secrets.RestoreSecret, request, timeout)

    async def list_secret_versions(
        self,
        name: str,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
        *,
        timeout: float | None = None,
    ) -> AsyncSecretVersionsPager:
        """A secret's versions, newest first (metadata only): first page fetched now."""
        pager = self.iter_secret_versions(name, page_size, page_token, timeout=timeout)
        await pager._first_page()
        return pager

    def iter_secret_versions(
        self,
        name: str,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
        *,
        timeout: float | None = None,
    ) -> AsyncSecretVersionsPager:
        """Like :meth:`list_secret_versions`, but nothing is fetched until iterated."""

        async def fetch(token: str) -> secret_pb.ListSecretVersionsResponse:
            request = secret_pb.ListSecretVersionsRequest(
                name=name, page_size=page_size, page_token=token
            )
            return await self._call(self._secrets.ListSecretVersions, request, timeout)

        return AsyncPager(fetch, _versions_of, page_token=page_token)

    async def rollback_secret(
        self, name: str, version: int, etag: str = "", *, timeout: float | None = None
    ) -> secret_pb.Secret:
        """A new current version holding ``version``'s value."""
        request = secret_pb.RollbackSecretRequest(name=name, version=version, etag=etag)
        return await self._call(self._secrets.RollbackSecret, request, timeout)

    async def destroy_secret_version(
        self, name: str, version: int, *, timeout: float | None = None
    ) -> None:
        """Removes one old version's sealed value and fingerprint (not the current one)."""
        request = secret_pb.DestroySecretVersionRequest(name=name, version=version)
        await self._call(self._secrets.DestroySecretVersion, request, timeout)

    async def identify_secret_value(
        self, value: str, *, timeout: float | None = None
    ) -> Sequence[secret_pb.ValueMatch]:
        """Versions whose value equals ``value`` (admin only; rate-limited by the vault)."""
        request = secret_pb.IdentifySecretValueRequest(value=value)
        reply = await self._call(self._secrets.IdentifySecretValue, request, timeout)
        return list(reply.matches)

    async def get_vault_stats(self, *, timeout: float | None = None) -> secret_pb.VaultStats:
        request = secret_pb.GetVaultStatsRequest()
        return await self._call(self._secrets.GetVaultStats, request, timeout)

    # -- ConfigService ---------------------------------------------------------------

    async def put_config_value(
        self, key: str, value: str, description: str = "", *, timeout: float | None = None
    ) -> config_pb.ConfigValue:
        request = config_pb.PutConfigValueRequest(key=key, value=value, description=description)
        return await self._call(self._configs.PutConfigValue, request, timeout)

    async def get_config_value(
        self, key: str, *, timeout: float | None = None
    ) -> config_pb.ConfigValue:
        request = config_pb.GetConfigValueRequest(key=key)
        return await self._call(self._configs.GetConfigValue, request, timeout)

    async def list_config_values(
        self,
        key_contains: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
        *,
        timeout: float | None = None,
    ) -> AsyncConfigValuesPager:
        """Config values sorted by key, as a pager (see :meth:`list_secrets`)."""
        pager = self.iter_config_values(key_contains, page_size, page_token, timeout=timeout)
        await pager._first_page()
        return pager

    def iter_config_values(
        self,
        key_contains: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
        *,
        timeout: float | None = None,
    ) -> AsyncConfigValuesPager:
        """Like :meth:`list_config_values`, but nothing is fetched until iterated."""

        async def fetch(token: str) -> config_pb.ListConfigValuesResponse:
            request = config_pb.ListConfigValuesRequest(
                key_contains=key_contains, page_size=page_size, page_token=token
            )
            return await self._call(self._configs.ListConfigValues, request, timeout)

        return AsyncPager(fetch, _config_values_of, page_token=page_token)

    async def delete_config_value(
        self, key: str, *, force: bool = False, timeout: float | None = None
    ) -> None:
        """A value resolved within the vault's ``delete_guard_days`` raises
        :class:`~vaultsvc_client.errors.ConfigInUse` unless ``force``."""
        request = config_pb.DeleteConfigValueRequest(key=key, force=force)
        await self._call(self._configs.DeleteConfigValue, request, timeout)

    # -- ResolverService -------------------------------------------------------------

    async def resolve_template(
        self,
        fields: FieldsLike,
        inputs: Mapping[str, str] | None = None,
        tool: str = "",
        *,
        strict: bool = False,
        destination_host: str = "",
        timeout: float | None = None,
    ) -> resolver_pb.ResolveTemplateResponse:
        """Fills every field's placeholders; fails as a whole (read-only, so retried).

        ``strict`` refuses near-miss placeholders (``{{secrets:x}}``) instead of leaving
        them literal; ``destination_host`` is the host the request goes to when no field
        is a URL (secrets bound to hosts need one)."""
        request = resolver_pb.ResolveTemplateRequest(
            fields=template_fields(fields),
            inputs=dict(inputs or {}),
            tool=tool,
            strict=strict,
            destination_host=destination_host,
        )
        return await self._call(self._resolver.ResolveTemplate, request, timeout)

    async def check_template(
        self, fields: FieldsLike, *, timeout: float | None = None
    ) -> resolver_pb.CheckTemplateResponse:
        """References and problems of each field, without resolving anything."""
        request = resolver_pb.CheckTemplateRequest(fields=template_fields(fields))
        return await self._call(self._resolver.CheckTemplate, request, timeout)

    # -- AuditService ----------------------------------------------------------------

    async def list_audit_events(
        self,
        secret_name: str = "",
        principal: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
        *,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        method: str = "",
        outcome: str = "",
        tool: str = "",
        timeout: float | None = None,
    ) -> AsyncAuditEventsPager:
        """Audit events, newest first, as a pager (the reply has no ``total_size``: None).

        Every filter given must match: ``start_time`` (inclusive) to ``end_time``
        (exclusive; times without a zone are UTC), ``method`` (``/pkg.Service/Method`` or a
        bare ``Method``), ``outcome`` (a status code name such as ``"NOT_FOUND"``), ``tool``.
        A page token only works with the filters it was issued for."""
        pager = self.iter_audit_events(
            secret_name,
            principal,
            page_size,
            page_token,
            start_time=start_time,
            end_time=end_time,
            method=method,
            outcome=outcome,
            tool=tool,
            timeout=timeout,
        )
        await pager._first_page()
        return pager

    def iter_audit_events(
        self,
        secret_name: str = "",
        principal: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
        *,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        method: str = "",
        outcome: str = "",
        tool: str = "",
        timeout: float | None = None,
    ) -> AsyncAuditEventsPager:
        """Like :meth:`list_audit_events`, but nothing is fetched until iterated."""

        async def fetch(token: str) -> audit_pb.ListAuditEventsResponse:
            request = audit_events_request(
                secret_name,
                principal,
                page_size,
                token,
                start_time=start_time,
                end_time=end_time,
                method=method,
                outcome=outcome,
                tool=tool,
            )
            return await self._call(self._audit.ListAuditEvents, request, timeout)

        return AsyncPager(fetch, _events_of, page_token=page_token)

    # -- AccessService ---------------------------------------------------------------

    async def create_token(
        self,
        principal: str,
        role: str,
        *,
        description: str = "",
        expire_time: datetime | None = None,
        scopes: Iterable[str] = (),
        timeout: float | None = None,
    ) -> access_pb.CreateTokenResponse:
        """A new database token: ``.token`` is shown only here, once (never retried).

        ``expire_time`` must be timezone-aware; None: the token does not expire.
        """
        request = access_pb.CreateTokenRequest(
            principal=principal, role=role, description=description, scopes=list(scopes)
        )
        if expire_time is not None:
            if expire_time.tzinfo is None:
                raise ValueError("expire_time must be timezone-aware (e.g. datetime.now(UTC))")
            stamp = timestamp_pb2.Timestamp()
            stamp.FromDatetime(expire_time)
            request.expire_time.CopyFrom(stamp)
        return await self._call(self._access.CreateToken, request, timeout)

    async def list_tokens(
        self,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
        *,
        timeout: float | None = None,
    ) -> AsyncTokensPager:
        """Database tokens, oldest first, as a pager (metadata and fingerprints only)."""
        pager = self.iter_tokens(page_size, page_token, timeout=timeout)
        await pager._first_page()
        return pager

    def iter_tokens(
        self,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
        *,
        timeout: float | None = None,
    ) -> AsyncTokensPager:
        """Like :meth:`list_tokens`, but nothing is fetched until iterated."""

        async def fetch(token: str) -> access_pb.ListTokensResponse:
            request = access_pb.ListTokensRequest(page_size=page_size, page_token=token)
            return await self._call(self._access.ListTokens, request, timeout)

        return AsyncPager(fetch, _tokens_of, page_token=page_token)

    async def revoke_token(self, token_id: str, *, timeout: float | None = None) -> None:
        """Revokes a database token (by its id, as :meth:`list_tokens` shows it)."""
        request = access_pb.RevokeTokenRequest(id=token_id)
        await self._call(self._access.RevokeToken, request, timeout)

    # -- plumbing --------------------------------------------------------------------

    async def _call(
        self,
        method: Callable[..., Awaitable[_Response]],
        request: Message,
        timeout: float | None,
    ) -> _Response:
        """One RPC under one deadline, retried on UNAVAILABLE if its policy allows."""
        budget = check_timeout(timeout) if timeout is not None else self._timeout
        deadline = time.monotonic() + budget
        attempts = self._retry.max_attempts if self._policies[method].idempotent else 1
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
                error: VaultError = with_requested_names(error_from_rpc_error(exc), request)
                if not isinstance(error, Unavailable) or attempt >= attempts:
                    raise error from exc
                pause = self._retry.backoff(attempt)
                if time.monotonic() + pause >= deadline:
                    raise error from exc
            await asyncio.sleep(pause)


def _secrets_of(page: secret_pb.ListSecretsResponse) -> Sequence[secret_pb.Secret]:
    return page.secrets


def _versions_of(
    page: secret_pb.ListSecretVersionsResponse,
) -> Sequence[secret_pb.SecretVersion]:
    return page.versions


def _config_values_of(page: config_pb.ListConfigValuesResponse) -> Sequence[config_pb.ConfigValue]:
    return page.config_values


def _events_of(page: audit_pb.ListAuditEventsResponse) -> Sequence[audit_pb.AuditEvent]:
    return page.events


def _tokens_of(page: access_pb.ListTokensResponse) -> Sequence[access_pb.TokenInfo]:
    return page.tokens
