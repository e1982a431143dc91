"""The no-leak guarantee, end to end.

A distinctive value is planted as secrets and as an input value; every RPC is exercised,
successes and failures (bad etag, not found, malformed templates naming it, permission
denied, a forced exception inside resolve, a tampered row). The value may then appear in
exactly one place: the ResolveTemplate response to the resolver. Not in logs, not in any
other response, status, detail or metadata, not in the audit trail, not in a pg_dump.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import subprocess
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from interakt.vault.v1 import access_service_pb2 as tpb
from interakt.vault.v1 import access_service_pb2_grpc as tgrpc
from interakt.vault.v1 import audit_service_pb2 as apb
from interakt.vault.v1 import audit_service_pb2_grpc as agrpc
from interakt.vault.v1 import config_service_pb2 as cpb
from interakt.vault.v1 import config_service_pb2_grpc as cgrpc
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rgrpc
from interakt.vault.v1 import secret_service_pb2 as spb
from interakt.vault.v1 import secret_service_pb2_grpc as sgrpc

from tests.support.telemetry import Telemetry, scrape_text
from tests.support.vault import LogCapture, VaultFactory, VaultHandle
from vaultsvc.auth import ADMIN, OPERATOR, RESOLVER, VIEWER, hash_token, new_token
from vaultsvc.crypto import Envelope, SealedValue, SecretContext
from vaultsvc.logs import JsonFormatter, TextFormatter
from vaultsvc.storage.embedded import EmbeddedPostgres

RAW = rpb.Encoding.ENCODING_RAW
URL = rpb.Encoding.ENCODING_URL
HEADER = rpb.Encoding.ENCODING_HEADER
JSON = rpb.Encoding.ENCODING_JSON
FORM = rpb.Encoding.ENCODING_FORM
Code = grpc.StatusCode


def canary_forms(canary: str) -> list[bytes]:
    """The canary as text, hex, and base64 at each of the three byte alignments."""
    raw = canary.encode()
    forms = [raw, raw.hex().encode(), raw.hex().upper().encode()]
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            forms.append(encode(b"\0" * shift + raw)[4:-4])
    return forms


def find_canary(forms: list[bytes], blob: bytes | str) -> list[bytes]:
    data = blob.encode("utf-8", "surrogateescape") if isinstance(blob, str) else blob
    return [form for form in forms if form in data]


@dataclass
class Exchange:
    """Everything the vault sent back, sorted by where the canary may appear."""

    allowed: list[bytes] = field(default_factory=list)  # resolver's ResolveTemplate replies
    forbidden: list[tuple[str, bytes]] = field(default_factory=list)
    codes: list[Code] = field(default_factory=list)

    def _metadata(self, label: str, metadata: Any) -> None:
        for key, value in tuple(metadata or ()):
            text = value if isinstance(value, bytes) else str(value).encode()
            self.forbidden.append((f"{label} metadata {key}", key.encode() + b"=" + text))

    async def ok(self, label: str, call: Any, *, may_hold_value: bool = False) -> Message:
        response: Message = await call
        data = response.SerializeToString()
        if may_hold_value:
            self.allowed.append(data)
        else:
            self.forbidden.append((label, data))
            self.forbidden.append((f"{label} text", str(response).encode()))
        self._metadata(label, await call.initial_metadata())
        self._metadata(label, await call.trailing_metadata())
        self.codes.append(Code.OK)
        return response

    async def fails(self, label: str, call: Awaitable[Any], code: Code) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        err = info.value
        assert err.code() == code, (label, err.code(), err.details())
        self.forbidden.append((f"{label} details", str(err.details()).encode()))
        self.forbidden.append((f"{label} debug", str(err.debug_error_string()).encode()))
        self.forbidden.append((f"{label} repr", repr(err).encode()))
        self._metadata(label, err.initial_metadata())
        self._metadata(label, err.trailing_metadata())
        self.codes.append(code)
        return err


class ExplodingEnvelope:
    """Seals normally; opening raises an exception whose text holds the value."""

    def __init__(self, real: Envelope, text: str) -> None:
        self.real = real
        self.text = text

    def seal(self, plaintext: bytes, ctx: SecretContext) -> SealedValue:
        return self.real.seal(plaintext, ctx)

    def open(self, sealed: SealedValue, ctx: SecretContext) -> bytes:
        raise RuntimeError(f"decryption exploded while holding {self.text}")


class ExplodingSealer(ExplodingEnvelope):
    def seal(self, plaintext: bytes, ctx: SecretContext) -> SealedValue:
        raise RuntimeError(f"sealing exploded on {plaintext.decode()}")


async def pg_dump(pg: EmbeddedPostgres, url: str) -> bytes:
    result = await asyncio.to_thread(
        subprocess.run,
        [str(pg.bin("pg_dump")), "--no-owner", "--dbname", url],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def field_(key: str, template: str, encoding: int = RAW) -> rpb.TemplateField:
    return rpb.TemplateField(key=key, template=template, encoding=encoding)  # type: ignore[arg-type]


async def test_the_value_appears_only_in_the_resolvers_resolve_response(
    vault: VaultHandle,
    pg: EmbeddedPostgres,
    log_capture: LogCapture,
    monkeypatch: pytest.MonkeyPatch,
    telemetry: Telemetry,
) -> None:
    logged_from = log_capture.mark()
    canary = "CANARY" + secrets.token_hex(12).upper()
    forms = canary_forms(canary)
    value = f"sk_live_{canary}"
    ex = Exchange()

    admin = sgrpc.SecretServiceStub(vault.channel("admin"))
    viewer = sgrpc.SecretServiceStub(vault.channel("viewer"))
    resolver_secrets = sgrpc.SecretServiceStub(vault.channel("resolver"))
    anonymous = sgrpc.SecretServiceStub(vault.channel(None))
    configs = cgrpc.ConfigServiceStub(vault.channel("admin"))
    viewer_configs = cgrpc.ConfigServiceStub(vault.channel("viewer"))
    resolver = rgrpc.ResolverServiceStub(vault.channel("resolver"))
    admin_resolver = rgrpc.ResolverServiceStub(vault.channel("admin"))
    viewer_resolver = rgrpc.ResolverServiceStub(vault.channel("viewer"))
    anonymous_resolver = rgrpc.ResolverServiceStub(vault.channel(None))
    audit = agrpc.AuditServiceStub(vault.channel("admin"))

    # ------------------------------------------------------------ SecretService
    created = await ex.ok(
        "create",
        admin.CreateSecret(
            spb.CreateSecretRequest(name="canary_key", value=value, description="planted")
        ),
    )
    assert isinstance(created, spb.Secret)
    await ex.ok(
        "create crlf",
        admin.CreateSecret(
            spb.CreateSecretRequest(name="canary_crlf", value=f"x\r\nX-Injected: {canary}")
        ),
    )
    await ex.ok(
        "create json",
        admin.CreateSecret(spb.CreateSecretRequest(name="canary_json", value=f'"}}\\{canary}')),
    )
    await ex.ok(
        "create moved",
        admin.CreateSecret(spb.CreateSecretRequest(name="canary_moved", value=value)),
    )
    await ex.ok(
        "create bound",
        admin.CreateSecret(
            spb.CreateSecretRequest(
                name="canary_bound", value=value, allowed_hosts=["api.example.com"]
            )
        ),
    )
    await ex.fails(
        "widen hosts without a value",
        admin.UpdateSecret(
            spb.UpdateSecretRequest(
                name="canary_bound", allowed_hosts=spb.HostList(hosts=["evil.example"])
            )
        ),
        Code.FAILED_PRECONDITION,
    )
    for label, request, code in [
        ("duplicate", spb.CreateSecretRequest(name="CANARY_KEY", value=value), Code.ALREADY_EXISTS),
        ("bad name", spb.CreateSecretRequest(name="bad name!", value=value), Code.INVALID_ARGUMENT),
        (
            "too large",
            spb.CreateSecretRequest(name="huge", value=value * (70_000 // len(value))),
            Code.INVALID_ARGUMENT,
        ),
        (
            "bad description",
            spb.CreateSecretRequest(name="nul", value=value, description="a\x00b"),
            Code.INVALID_ARGUMENT,
        ),
    ]:
        await ex.fails(label, admin.CreateSecret(request), code)
    await ex.ok("get", viewer.GetSecret(spb.GetSecretRequest(name="canary_key")))
    await ex.fails(
        "get missing", viewer.GetSecret(spb.GetSecretRequest(name="nope")), Code.NOT_FOUND
    )
    await ex.ok("list", viewer.ListSecrets(spb.ListSecretsRequest(name_contains="canary")))
    await ex.ok("list page", admin.ListSecrets(spb.ListSecretsRequest(page_size=1)))
    await ex.ok("stats", viewer.GetVaultStats(spb.GetVaultStatsRequest()))
    await ex.fails(
        "update bad etag",
        admin.UpdateSecret(spb.UpdateSecretRequest(name="canary_key", value=value, etag="stale")),
        Code.ABORTED,
    )
    await ex.fails(
        "update missing",
        admin.UpdateSecret(spb.UpdateSecretRequest(name="nope", value=value)),
        Code.NOT_FOUND,
    )
    updated = await ex.ok(
        "update",
        admin.UpdateSecret(
            spb.UpdateSecretRequest(name="canary_key", value=value, etag=created.etag)
        ),
    )
    assert isinstance(updated, spb.Secret)
    for label, lesser in (("viewer", viewer), ("resolver", resolver_secrets)):
        await ex.fails(
            f"{label} update",
            lesser.UpdateSecret(spb.UpdateSecretRequest(name="canary_key", value=value)),
            Code.PERMISSION_DENIED,
        )
        await ex.fails(
            f"{label} create",
            lesser.CreateSecret(spb.CreateSecretRequest(name="other", value=value)),
            Code.PERMISSION_DENIED,
        )
    await ex.fails(
        "anonymous create",
        anonymous.CreateSecret(spb.CreateSecretRequest(name="other", value=value)),
        Code.UNAUTHENTICATED,
    )
    await ex.ok(
        "create doomed", admin.CreateSecret(spb.CreateSecretRequest(name="doomed", value=value))
    )
    await ex.fails(
        "delete bad etag",
        admin.DeleteSecret(spb.DeleteSecretRequest(name="doomed", etag="stale")),
        Code.ABORTED,
    )
    await ex.fails(
        "delete missing", admin.DeleteSecret(spb.DeleteSecretRequest(name="nope")), Code.NOT_FOUND
    )
    await ex.ok("delete", admin.DeleteSecret(spb.DeleteSecretRequest(name="doomed")))

    # ------------------------------------------- versions, recovery and identify
    await ex.ok(
        "versions", viewer.ListSecretVersions(spb.ListSecretVersionsRequest(name="canary_key"))
    )
    await ex.ok(
        "versions page",
        admin.ListSecretVersions(spb.ListSecretVersionsRequest(name="canary_key", page_size=1)),
    )
    await ex.ok("list deleted", admin.ListSecrets(spb.ListSecretsRequest(show_deleted=True)))
    await ex.fails(
        "create reserved",
        admin.CreateSecret(spb.CreateSecretRequest(name="doomed", value=value)),
        Code.ALREADY_EXISTS,
    )
    await ex.ok("restore", admin.RestoreSecret(spb.RestoreSecretRequest(name="doomed")))
    await ex.fails(
        "restore live",
        admin.RestoreSecret(spb.RestoreSecretRequest(name="doomed")),
        Code.FAILED_PRECONDITION,
    )
    await ex.ok("identify", admin.IdentifySecretValue(spb.IdentifySecretValueRequest(value=value)))
    await ex.ok(
        "identify near miss",
        admin.IdentifySecretValue(spb.IdentifySecretValueRequest(value=value + "x")),
    )
    await ex.fails(
        "viewer identify",
        viewer.IdentifySecretValue(spb.IdentifySecretValueRequest(value=value)),
        Code.PERMISSION_DENIED,
    )
    await ex.ok(
        "rollback",
        admin.RollbackSecret(spb.RollbackSecretRequest(name="canary_key", version=1)),
    )
    await ex.fails(
        "destroy current",
        admin.DestroySecretVersion(spb.DestroySecretVersionRequest(name="canary_key", version=3)),
        Code.FAILED_PRECONDITION,
    )
    await ex.ok(
        "destroy",
        admin.DestroySecretVersion(spb.DestroySecretVersionRequest(name="canary_key", version=2)),
    )
    await ex.fails(
        "rollback destroyed",
        admin.RollbackSecret(spb.RollbackSecretRequest(name="canary_key", version=2)),
        Code.FAILED_PRECONDITION,
    )
    await ex.ok(
        "delete for good",
        admin.DeleteSecret(spb.DeleteSecretRequest(name="doomed", purge=True)),
    )

    # ------------------------------------------------------------ ConfigService
    await ex.ok(
        "put config",
        configs.PutConfigValue(cpb.PutConfigValueRequest(key="api_host", value="api.example.com")),
    )
    await ex.ok(
        "get config", viewer_configs.GetConfigValue(cpb.GetConfigValueRequest(key="api_host"))
    )
    await ex.ok("list configs", viewer_configs.ListConfigValues(cpb.ListConfigValuesRequest()))
    await ex.fails(
        "get config missing",
        viewer_configs.GetConfigValue(cpb.GetConfigValueRequest(key="nope")),
        Code.NOT_FOUND,
    )
    await ex.fails(
        "viewer put config",
        viewer_configs.PutConfigValue(cpb.PutConfigValueRequest(key="x", value="y")),
        Code.PERMISSION_DENIED,
    )
    await ex.ok(
        "put config 2", configs.PutConfigValue(cpb.PutConfigValueRequest(key="tmp", value="t"))
    )
    await ex.ok("delete config", configs.DeleteConfigValue(cpb.DeleteConfigValueRequest(key="tmp")))
    await ex.fails(
        "delete config missing",
        configs.DeleteConfigValue(cpb.DeleteConfigValueRequest(key="tmp")),
        Code.NOT_FOUND,
    )

    # ---------------------------------------------------------- ResolverService
    inputs = {"order": f"order-{canary}", "evil": f"ok\r\nX-Injected: {canary}"}
    good_fields = [
        field_("raw", "{{secret:canary_key}}"),
        field_(
            "url", "https://{{config:api_host}}/v1/{{secret:canary_key}}?o={{input.order}}", URL
        ),
        field_("header", "Bearer {{ secret:canary_key }}", HEADER),
        field_("json", '{"k": "{{secret:canary_json}}", "o": "{{input.order}}"}', JSON),
        field_("form", "a={{secret:canary_key}}&b={{input.order}}", FORM),
        field_("literal", "{{input.nested}}"),
    ]
    good_inputs = {**inputs, "nested": "{{secret:canary_key}}"}
    reply = await ex.ok(
        "resolve",
        resolver.ResolveTemplate(
            rpb.ResolveTemplateRequest(fields=good_fields, inputs=good_inputs, tool="http")
        ),
        may_hold_value=True,
    )
    assert isinstance(reply, rpb.ResolveTemplateResponse)
    assert reply.fields[0].value == value, "the canary must be detectable where it belongs"
    assert reply.fields[5].value == "{{secret:canary_key}}"
    assert find_canary(forms, ex.allowed[0])

    def resolve(fields: list[rpb.TemplateField], **extra: Any) -> rpb.ResolveTemplateRequest:
        return rpb.ResolveTemplateRequest(
            fields=fields, inputs=extra.pop("inputs", inputs), tool="http", **extra
        )

    failing = [
        ("unclosed", [field_("a", "x {{secret:canary_key")], Code.INVALID_ARGUMENT),
        ("bad name", [field_("a", "{{secret:canary key}}")], Code.INVALID_ARGUMENT),
        (
            "secret in host",
            [field_("u", "https://{{secret:canary_key}}.example.com/", URL)],
            Code.INVALID_ARGUMENT,
        ),
        (
            "input in host",
            [field_("u", "https://{{input.order}}/", URL)],
            Code.INVALID_ARGUMENT,
        ),
        (
            "json outside string",
            [field_("j", '{"k": {{secret:canary_key}}}', JSON)],
            Code.INVALID_ARGUMENT,
        ),
        (
            "header crlf secret",
            [field_("h", "{{secret:canary_crlf}}", HEADER)],
            Code.INVALID_ARGUMENT,
        ),
        ("header crlf input", [field_("h", "{{input.evil}}", HEADER)], Code.INVALID_ARGUMENT),
        (
            "missing secret",
            [field_("a", "{{secret:canary_key}} {{secret:absent}}")],
            Code.NOT_FOUND,
        ),
        ("missing config", [field_("a", "{{secret:canary_key}}{{config:absent}}")], Code.NOT_FOUND),
        (
            "missing input",
            [field_("a", "{{secret:canary_key}}{{input.absent}}")],
            Code.INVALID_ARGUMENT,
        ),
        (
            "too many fields",
            [field_(f"f{i}", "{{secret:canary_key}}") for i in range(300)],
            Code.RESOURCE_EXHAUSTED,
        ),
        ("no fields", [], Code.INVALID_ARGUMENT),
        (
            "bound secret to another host",
            [field_("u", "https://evil.example/?k={{secret:canary_bound}}", URL)],
            Code.PERMISSION_DENIED,
        ),
        (
            "bound secret in a header, URL elsewhere",
            [
                field_("u", "https://evil.example/collect", URL),
                field_("h", "Bearer {{secret:canary_bound}}", HEADER),
            ],
            Code.PERMISSION_DENIED,
        ),
        (
            "bound secret without a destination",
            [field_("h", "{{secret:canary_bound}}", HEADER)],
            Code.PERMISSION_DENIED,
        ),
    ]
    for label, fields, code in failing:
        await ex.fails(label, resolver.ResolveTemplate(resolve(fields)), code)
    await ex.fails(
        "strict near miss",
        resolver.ResolveTemplate(
            resolve([field_("a", "{{secret:canary_key}} {{secrets:canary_key}}")], strict=True)
        ),
        Code.INVALID_ARGUMENT,
    )
    await ex.fails(
        "bound secret, wrong destination_host",
        resolver.ResolveTemplate(
            resolve([field_("h", "{{secret:canary_bound}}", HEADER)], destination_host="x.example")
        ),
        Code.PERMISSION_DENIED,
    )
    await ex.fails(
        "bad tool",
        resolver.ResolveTemplate(
            rpb.ResolveTemplateRequest(fields=good_fields, inputs=good_inputs, tool="bad tool!")
        ),
        Code.INVALID_ARGUMENT,
    )
    for label, denied in (("admin", admin_resolver), ("viewer", viewer_resolver)):
        await ex.fails(
            f"{label} resolve",
            denied.ResolveTemplate(resolve(good_fields, inputs=good_inputs)),
            Code.PERMISSION_DENIED,
        )
    await ex.fails(
        "anonymous resolve",
        anonymous_resolver.ResolveTemplate(resolve(good_fields, inputs=good_inputs)),
        Code.UNAUTHENTICATED,
    )

    # A row whose ciphertext was moved from another secret must not decrypt (or leak).
    await vault.sql(
        "UPDATE secret_versions v SET wrapped_dek = o.wrapped_dek, ciphertext = o.ciphertext "
        "FROM secrets t, secrets s, secret_versions o "
        "WHERE t.name = 'canary_moved' AND v.secret_id = t.id "
        "AND v.version = t.current_version AND s.name = 'canary_key' "
        "AND o.secret_id = s.id AND o.version = s.current_version"
    )
    await ex.fails(
        "moved ciphertext",
        resolver.ResolveTemplate(resolve([field_("a", "{{secret:canary_moved}}")])),
        Code.DATA_LOSS,
    )

    # Faults that cannot be caused from outside: exceptions whose text holds the value.
    real = vault.runtime.vault.envelope
    monkeypatch.setattr(vault.runtime.vault, "envelope", ExplodingEnvelope(real, value))
    err = await ex.fails(
        "exploding resolve",
        resolver.ResolveTemplate(resolve(good_fields, inputs=good_inputs)),
        Code.INTERNAL,
    )
    trailing: Any = err.trailing_metadata()
    request_id = next(str(v) for k, v in trailing if k == "x-request-id")
    assert err.details() == f"internal error (request id {request_id})"
    monkeypatch.setattr(vault.runtime.vault, "envelope", ExplodingSealer(real, value))
    await ex.fails(
        "exploding create",
        admin.CreateSecret(spb.CreateSecretRequest(name="sealed_badly", value=value)),
        Code.INTERNAL,
    )
    monkeypatch.setattr(vault.runtime.vault, "envelope", real)

    check_fields = [
        *good_fields,
        *(f for _, fs, _ in failing[:10] for f in fs),
        # suggestions (canary_key, canary_json...) and a near miss with its fix
        field_("typo", "{{secret:canary_kye}} {{secrets:canary_key}} {{config:api_hots}}"),
    ]
    for label, checker in (("admin", admin_resolver), ("viewer", viewer_resolver), ("r", resolver)):
        await ex.ok(
            f"{label} check", checker.CheckTemplate(rpb.CheckTemplateRequest(fields=check_fields))
        )

    # ------------------------------------------- usage and the delete guard (issue 10)
    used = await ex.ok("usage get", viewer.GetSecret(spb.GetSecretRequest(name="canary_key")))
    assert isinstance(used, spb.Secret)
    assert used.usage.resolve_count >= 1 and [t.tool for t in used.usage.tools] == ["http"]
    await ex.ok(
        "usage list",
        viewer.ListSecrets(spb.ListSecretsRequest(order_by="last_resolve_time", page_size=2)),
    )
    await ex.ok("usage config", configs.GetConfigValue(cpb.GetConfigValueRequest(key="api_host")))
    await ex.fails(
        "delete in use",
        admin.DeleteSecret(spb.DeleteSecretRequest(name="canary_key")),
        Code.FAILED_PRECONDITION,
    )
    await ex.fails(
        "delete config in use",
        configs.DeleteConfigValue(cpb.DeleteConfigValueRequest(key="api_host")),
        Code.FAILED_PRECONDITION,
    )

    # ------------------------------------------------------------- AuditService
    await vault.runtime.audit.flush()
    token = ""
    while True:
        page = await ex.ok(
            "audit page",
            audit.ListAuditEvents(apb.ListAuditEventsRequest(page_size=7, page_token=token)),
        )
        assert isinstance(page, apb.ListAuditEventsResponse)
        token = page.next_page_token
        if not token:
            break
    await ex.ok(
        "audit filtered",
        audit.ListAuditEvents(apb.ListAuditEventsRequest(secret_name="canary_key")),
    )
    await ex.fails(
        "viewer audit",
        agrpc.AuditServiceStub(vault.channel("viewer")).ListAuditEvents(
            apb.ListAuditEventsRequest()
        ),
        Code.PERMISSION_DENIED,
    )
    assert {
        Code.OK,
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.ABORTED,
        Code.ALREADY_EXISTS,
        Code.PERMISSION_DENIED,
        Code.UNAUTHENTICATED,
        Code.DATA_LOSS,
        Code.INTERNAL,
        Code.RESOURCE_EXHAUSTED,
    } <= set(ex.codes)

    # ------------------------------------------------------------------ verdict
    await vault.runtime.audit.flush()
    leaks = [label for label, data in ex.forbidden if find_canary(forms, data)]
    assert leaks == [], f"the value reached: {leaks}"

    rows = await vault.sql("SELECT * FROM audit_events")
    # One event per RPC; refused unauthenticated calls share aggregated ones (with a count).
    assert sum(r["count"] for r in rows) == len(ex.codes), "one event per RPC"
    assert find_canary(forms, repr([dict(r) for r in rows])) == []

    dump = await pg_dump(pg, vault.database_url)
    assert b"canary_key" in dump and b"audit_events" in dump
    assert find_canary(forms, dump) == []

    logs = log_capture.text()
    assert "exploding" not in logs and "decryption exploded" not in logs
    assert '"error": "RuntimeError"' in log_capture.text(logged_from), (
        "the forced exception was logged, by type only"
    )
    assert find_canary(forms, logs) == []

    # Metrics (scraped over HTTP) and spans saw every call, and never the value.
    scraped = await scrape_text(telemetry.metrics_address)
    assert "vaultsvc_grpc_server_handled_total" in scraped
    assert find_canary(forms, scraped) == []
    spans = telemetry.spans_json()
    assert "vault.decrypt" in spans and "vaultsvc.request_id" in spans
    assert find_canary(forms, spans) == []
    assert "{{" not in spans and "canary_" not in spans, "no template text, no secret names"


async def test_a_minted_token_appears_only_in_its_create_response(
    make_vault: VaultFactory, pg: EmbeddedPostgres, log_capture: LogCapture
) -> None:
    """The token AccessService mints is a canary too: returned once by CreateToken, then
    never in a reply, status, audit event, log line or the database; its hash (which the
    database keeps) never leaves the vault either."""
    roles = (ADMIN, VIEWER, RESOLVER, OPERATOR)
    vault = await make_vault(tokens={role: new_token() for role in roles})
    ex = Exchange()
    operator = tgrpc.AccessServiceStub(vault.channel(OPERATOR))
    admin_access = tgrpc.AccessServiceStub(vault.channel(ADMIN))
    admin = sgrpc.SecretServiceStub(vault.channel(ADMIN))
    await ex.ok("secret", admin.CreateSecret(spb.CreateSecretRequest(name="api", value="v")))

    created = await operator.CreateToken(
        tpb.CreateTokenRequest(principal="ci", role=RESOLVER, description="planted")
    )
    token = created.token
    digest = hash_token(token)
    token_forms = canary_forms(token)
    hash_forms = [digest, digest.hex().encode(), digest.hex().upper().encode()]
    hash_forms += [base64.b64encode(b"\0" * s + digest)[4:-4] for s in range(3)]
    forms = token_forms + hash_forms
    assert find_canary(forms, created.SerializeToString()), "the one place it appears"
    info = created.info

    minted = rgrpc.ResolverServiceStub(vault.channel(token=token))
    await ex.ok(
        "resolve with it",
        minted.ResolveTemplate(rpb.ResolveTemplateRequest(fields=[field_("f", "{{secret:api}}")])),
        may_hold_value=True,
    )
    await ex.ok("list", operator.ListTokens(tpb.ListTokensRequest()))
    await ex.ok("admin list", admin_access.ListTokens(tpb.ListTokensRequest(page_size=1)))
    await ex.fails(
        "admin revoke",
        admin_access.RevokeToken(tpb.RevokeTokenRequest(id=info.id)),
        Code.PERMISSION_DENIED,
    )
    await ex.fails(
        "minted token on AccessService",
        tgrpc.AccessServiceStub(vault.channel(token=token)).ListTokens(tpb.ListTokensRequest()),
        Code.PERMISSION_DENIED,
    )
    for label, variant in (("longer", token + "x"), ("shorter", token[:-1])):
        await ex.fails(
            f"{label} token",
            rgrpc.ResolverServiceStub(vault.channel(token=variant)).CheckTemplate(
                rpb.CheckTemplateRequest(fields=[field_("f", "x")])
            ),
            Code.UNAUTHENTICATED,
        )
    await ex.ok("revoke", operator.RevokeToken(tpb.RevokeTokenRequest(id=info.id)))
    await ex.fails(
        "revoked token",
        minted.CheckTemplate(rpb.CheckTemplateRequest(fields=[field_("f", "x")])),
        Code.UNAUTHENTICATED,
    )
    await vault.runtime.audit.flush()
    await ex.ok(
        "audit",
        agrpc.AuditServiceStub(vault.channel(ADMIN)).ListAuditEvents(apb.ListAuditEventsRequest()),
    )

    leaks = [label for label, data in ex.forbidden if find_canary(forms, data)]
    assert leaks == [], f"the token or its hash reached: {leaks}"
    rows = await vault.sql("SELECT * FROM audit_events")
    assert any(f"token:{info.id}" in r["secret_names"] for r in rows)
    assert find_canary(forms, repr([dict(r) for r in rows])) == []
    dump = await pg_dump(pg, vault.database_url)
    assert b"access_tokens" in dump and find_canary(token_forms, dump) == []
    assert find_canary(forms, log_capture.text()) == []


# --------------------------------------------------------------- log hygiene


class RecordCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected() -> Iterator[RecordCollector]:
    handler = RecordCollector()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


async def test_user_supplied_names_cannot_forge_log_lines(
    vault: VaultHandle, collected: RecordCollector
) -> None:
    forged = 'x\r\n{"level": "INFO", "msg": "forged"}\nmore'
    viewer = sgrpc.SecretServiceStub(vault.channel("viewer"))
    admin = sgrpc.SecretServiceStub(vault.channel("admin"))
    resolver = rgrpc.ResolverServiceStub(vault.channel("resolver"))
    audit = agrpc.AuditServiceStub(vault.channel("admin"))
    calls: list[Awaitable[Any]] = [
        viewer.GetSecret(spb.GetSecretRequest(name=forged)),
        admin.CreateSecret(spb.CreateSecretRequest(name=forged, value="v")),
        admin.DeleteSecret(spb.DeleteSecretRequest(name=forged)),
        viewer.ListSecrets(spb.ListSecretsRequest(name_contains=forged)),
        resolver.ResolveTemplate(
            rpb.ResolveTemplateRequest(fields=[field_(forged, "{{secret:" + forged + "}}")])
        ),
        resolver.ResolveTemplate(
            rpb.ResolveTemplateRequest(fields=[field_("k", "plain")], tool=forged)
        ),
        resolver.CheckTemplate(
            rpb.CheckTemplateRequest(fields=[field_(forged, "{{input." + forged + "}}")])
        ),
        audit.ListAuditEvents(apb.ListAuditEventsRequest(principal=forged)),
    ]
    for call in calls:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call
    await vault.runtime.audit.flush()

    access = [r for r in collected.records if r.name == "vaultsvc.access"]
    assert len(access) == len(calls)
    json_format, text_format = JsonFormatter(), TextFormatter()
    for record in collected.records:
        for value in (record.getMessage(), *map(str, record.__dict__.values())):
            assert "\r" not in value and "\n" not in value, (record.name, value)
        assert "\n" not in json_format.format(record)
        assert "\n" not in text_format.format(record)
    tools = [r.__dict__["tool"] for r in access if r.__dict__.get("tool")]
    assert tools and all("\n" not in t and "\r" not in t for t in tools)

    rows = await vault.sql("SELECT secret_names, tool FROM audit_events")
    assert len(rows) == len(calls)
    for row in rows:
        for text in (*row["secret_names"], row["tool"]):
            assert "\r" not in text and "\n" not in text, text
