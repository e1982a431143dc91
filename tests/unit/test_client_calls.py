"""The typed clients against a real grpc.aio server: requests, metadata, retries, paging, TLS."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import empty_pb2
from interakt.vault.v1 import access_service_pb2 as access_pb
from interakt.vault.v1 import audit_service_pb2 as audit_pb
from interakt.vault.v1 import config_service_pb2 as config_pb
from interakt.vault.v1 import resolver_service_pb2 as resolver_pb
from interakt.vault.v1 import secret_service_pb2 as secret_pb
from vaultsvc_client import (
    AsyncVaultClient,
    DeadlineExceeded,
    NotFound,
    RetryPolicy,
    TLSConfig,
    Unavailable,
    VaultClient,
    parse_encoding,
)
from vaultsvc_client._common import (
    RPC_POLICIES,
    SERVICES,
    auth_metadata,
    channel_security,
    encoding_name,
    is_loopback,
    template_fields,
)

from tests.support.fake_vault import FakeVault, abort, start_fake

FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.01)


@pytest.fixture
async def fake() -> AsyncIterator[FakeVault]:
    vault, server = await start_fake()
    yield vault
    await server.stop(None)


# -- metadata and deadlines --------------------------------------------------------------


async def test_token_is_sent_as_bearer_metadata(fake: FakeVault) -> None:
    fake.reply("GetVaultStats", secret_pb.VaultStats(total_secrets=3))
    async with AsyncVaultClient(fake.address, "tok-123") as client:
        stats = await client.get_vault_stats()
    assert stats.total_secrets == 3
    assert fake.calls[0].metadata["authorization"] == "Bearer tok-123"


async def test_no_token_sends_no_authorization(fake: FakeVault) -> None:
    fake.reply("GetVaultStats", secret_pb.VaultStats())
    async with AsyncVaultClient(fake.address) as client:
        await client.get_vault_stats()
    assert "authorization" not in fake.calls[0].metadata


async def test_sync_client_sends_token_and_deadline(fake: FakeVault) -> None:
    fake.reply("GetSecret", secret_pb.Secret(name="a", etag="e1"))

    def call() -> secret_pb.Secret:
        with VaultClient(fake.address, "sync-tok", timeout=7) as client:
            return client.get_secret("a")

    secret = await asyncio.to_thread(call)
    assert (secret.name, secret.etag) == ("a", "e1")
    recorded = fake.calls[0]
    assert recorded.metadata["authorization"] == "Bearer sync-tok"
    assert recorded.time_remaining is not None
    assert 0 < recorded.time_remaining < 7.5  # propagated deadlines are rounded up a bit


async def test_every_call_has_a_deadline_and_it_can_be_overridden(fake: FakeVault) -> None:
    fake.reply("GetSecret", secret_pb.Secret(name="a"))
    async with AsyncVaultClient(fake.address, timeout=30) as client:
        await client.get_secret("a")
        await client.get_secret("a", timeout=2)
    first, second = (call.time_remaining for call in fake.calls)
    assert first is not None and 2.5 < first < 30.5
    assert second is not None and 0 < second < 2.5


async def test_a_slow_server_gives_deadline_exceeded(fake: FakeVault) -> None:
    async def slow(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await asyncio.sleep(5)
        return secret_pb.Secret()

    fake.handlers["GetSecret"] = slow
    async with AsyncVaultClient(fake.address, timeout=0.2) as client:
        with pytest.raises(DeadlineExceeded):
            await client.get_secret("a")


def test_token_with_whitespace_is_refused() -> None:
    with pytest.raises(ValueError, match="whitespace"):
        auth_metadata("abc\n")
    assert auth_metadata(None) == ()
    assert auth_metadata("t") == (("authorization", "Bearer t"),)


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout"):
        VaultClient("127.0.0.1:1", timeout=0)


# -- retries -----------------------------------------------------------------------------


def unavailable_then(times: int, response: Any) -> Callable[[Any, Any], Awaitable[Any]]:
    remaining = [times]

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if remaining[0] > 0:
            remaining[0] -= 1
            await abort(context, grpc.StatusCode.UNAVAILABLE, "try later", "UNAVAILABLE")
        return response

    return handler


@dataclass
class Rpc:
    method: str
    call: Callable[[AsyncVaultClient], Awaitable[Any]]
    response: Any


IDEMPOTENT = [
    # Every try of a create carries the same request_id: the server replays the first result.
    Rpc("CreateSecret", lambda c: c.create_secret("a", "v"), secret_pb.Secret()),
    Rpc("GetSecret", lambda c: c.get_secret("a"), secret_pb.Secret()),
    Rpc("ListSecrets", lambda c: c.list_secrets(), secret_pb.ListSecretsResponse()),
    Rpc("GetVaultStats", lambda c: c.get_vault_stats(), secret_pb.VaultStats()),
    Rpc("GetConfigValue", lambda c: c.get_config_value("k"), config_pb.ConfigValue()),
    Rpc("ListConfigValues", lambda c: c.list_config_values(), config_pb.ListConfigValuesResponse()),
    Rpc(
        "CheckTemplate", lambda c: c.check_template({"f": "x"}), resolver_pb.CheckTemplateResponse()
    ),
    Rpc(
        "ResolveTemplate",
        lambda c: c.resolve_template({"f": "x"}),
        resolver_pb.ResolveTemplateResponse(),
    ),
    Rpc("ListAuditEvents", lambda c: c.list_audit_events(), audit_pb.ListAuditEventsResponse()),
    Rpc(
        "ListSecretVersions",
        lambda c: c.list_secret_versions("a"),
        secret_pb.ListSecretVersionsResponse(),
    ),
    Rpc("ListTokens", lambda c: c.list_tokens(), access_pb.ListTokensResponse()),
]

NOT_IDEMPOTENT = [
    Rpc("UpdateSecret", lambda c: c.update_secret("a", description="d"), secret_pb.Secret()),
    Rpc("DeleteSecret", lambda c: c.delete_secret("a"), empty_pb2.Empty()),
    Rpc("PutConfigValue", lambda c: c.put_config_value("k", "v"), config_pb.ConfigValue()),
    Rpc("DeleteConfigValue", lambda c: c.delete_config_value("k"), empty_pb2.Empty()),
    Rpc("RollbackSecret", lambda c: c.rollback_secret("a", 1), secret_pb.Secret()),
    Rpc("DestroySecretVersion", lambda c: c.destroy_secret_version("a", 1), empty_pb2.Empty()),
    Rpc("RestoreSecret", lambda c: c.restore_secret("a"), secret_pb.Secret()),
    Rpc(
        "IdentifySecretValue",
        lambda c: c.identify_secret_value("v"),
        secret_pb.IdentifySecretValueResponse(),
    ),
    # A retried create could mint a second token, the first one lost.
    Rpc("CreateToken", lambda c: c.create_token("ci", "resolver"), access_pb.CreateTokenResponse()),
    Rpc("RevokeToken", lambda c: c.revoke_token("id"), access_pb.RevokeTokenResponse()),
]


@pytest.mark.parametrize("rpc", IDEMPOTENT, ids=[r.method for r in IDEMPOTENT])
async def test_idempotent_calls_retry_unavailable(fake: FakeVault, rpc: Rpc) -> None:
    fake.handlers[rpc.method] = unavailable_then(2, rpc.response)
    async with AsyncVaultClient(fake.address, retry=FAST_RETRY) as client:
        await rpc.call(client)
    assert len(fake.calls_to(rpc.method)) == 3


@pytest.mark.parametrize("rpc", NOT_IDEMPOTENT, ids=[r.method for r in NOT_IDEMPOTENT])
async def test_writes_are_never_retried(fake: FakeVault, rpc: Rpc) -> None:
    fake.handlers[rpc.method] = unavailable_then(1, rpc.response)
    async with AsyncVaultClient(fake.address, retry=FAST_RETRY) as client:
        with pytest.raises(Unavailable):
            await rpc.call(client)
    assert len(fake.calls_to(rpc.method)) == 1


def test_every_contract_rpc_has_exactly_one_policy() -> None:
    rpcs = {f"{service.name}.{method.name}" for service in SERVICES for method in service.methods}
    assert set(RPC_POLICIES) == rpcs
    declared = {rpc.split(".", 1)[1]: policy.idempotent for rpc, policy in RPC_POLICIES.items()}
    assert {r.method for r in IDEMPOTENT} == {m for m, idem in declared.items() if idem}
    assert {r.method for r in NOT_IDEMPOTENT} == {m for m, idem in declared.items() if not idem}


async def test_retries_are_bounded(fake: FakeVault) -> None:
    fake.handlers["GetSecret"] = unavailable_then(100, secret_pb.Secret())
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.001)
    async with AsyncVaultClient(fake.address, retry=policy) as client:
        with pytest.raises(Unavailable):
            await client.get_secret("a")
    assert len(fake.calls) == 3


async def test_sync_client_retries_the_same_way(fake: FakeVault) -> None:
    fake.handlers["GetSecret"] = unavailable_then(2, secret_pb.Secret(name="a"))
    fake.handlers["CreateSecret"] = unavailable_then(1, secret_pb.Secret(name="a"))

    fake.handlers["UpdateSecret"] = unavailable_then(1, secret_pb.Secret(name="a"))

    def calls() -> None:
        with VaultClient(fake.address, retry=FAST_RETRY) as client:
            assert client.get_secret("a").name == "a"
            assert client.create_secret("a", "v").name == "a"
            with pytest.raises(Unavailable):
                client.update_secret("a", description="d")

    await asyncio.to_thread(calls)
    assert len(fake.calls_to("GetSecret")) == 3
    creates = fake.calls_to("CreateSecret")
    assert len(creates) == 2
    # Both tries carry one request id, so the server can answer the retry with the first result.
    assert creates[0].request.request_id == creates[1].request.request_id != ""
    assert len(fake.calls_to("UpdateSecret")) == 1


async def test_other_errors_are_not_retried(fake: FakeVault) -> None:
    fake.fail("GetSecret", grpc.StatusCode.NOT_FOUND, "secret not found: a", "SECRET_NOT_FOUND")
    async with AsyncVaultClient(fake.address, retry=FAST_RETRY) as client:
        with pytest.raises(NotFound):
            await client.get_secret("a")
    assert len(fake.calls) == 1


async def test_retries_never_outlive_the_deadline(fake: FakeVault) -> None:
    fake.handlers["GetSecret"] = unavailable_then(10_000, secret_pb.Secret())
    policy = RetryPolicy(max_attempts=10_000, initial_backoff=0.05, max_backoff=0.05)
    async with AsyncVaultClient(fake.address, retry=policy, timeout=0.5) as client:
        with pytest.raises((Unavailable, DeadlineExceeded)):
            await client.get_secret("a")
    assert len(fake.calls) < 10_000


def test_retry_policy_validation_and_backoff() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(jitter=2)
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.3, multiplier=2, jitter=0.5)
    for retry in range(1, 10):
        expected = min(0.3, 0.1 * 2 ** (retry - 1))
        assert expected * 0.5 <= policy.backoff(retry) <= expected


# -- request shapes ----------------------------------------------------------------------


async def test_update_secret_sets_only_what_is_asked(fake: FakeVault) -> None:
    fake.reply("UpdateSecret", secret_pb.Secret(name="a"))
    async with AsyncVaultClient(fake.address) as client:
        await client.update_secret("a", description="new")
        await client.update_secret("a", description="")
        await client.update_secret("a", value="v2", etag="e7")
    keep_value, clear_description, new_value = (c.request for c in fake.calls)
    assert not keep_value.HasField("value")
    assert keep_value.HasField("description") and keep_value.description == "new"
    assert clear_description.HasField("description") and clear_description.description == ""
    assert not new_value.HasField("description")
    assert (new_value.value, new_value.etag) == ("v2", "e7")


async def test_create_delete_and_configs_send_their_fields(fake: FakeVault) -> None:
    fake.reply("CreateSecret", secret_pb.Secret(name="a"))
    fake.reply("DeleteSecret", empty_pb2.Empty())
    fake.reply("PutConfigValue", config_pb.ConfigValue(key="k"))
    fake.reply("DeleteConfigValue", empty_pb2.Empty())
    async with AsyncVaultClient(fake.address) as client:
        await client.create_secret("a", "val", "desc")
        assert await client.delete_secret("a", etag="e1") is None
        await client.put_config_value("k", "cv", "cd")
        assert await client.delete_config_value("k") is None
    create, delete, put, config_delete = (c.request for c in fake.calls)
    assert (create.name, create.value, create.description) == ("a", "val", "desc")
    assert (delete.name, delete.etag) == ("a", "e1")
    assert (put.key, put.value, put.description) == ("k", "cv", "cd")
    assert config_delete.key == "k"


async def test_resolve_and_check_build_template_fields(fake: FakeVault) -> None:
    fake.reply(
        "ResolveTemplate",
        resolver_pb.ResolveTemplateResponse(fields=[resolver_pb.ResolvedField(key="u", value="x")]),
    )
    fake.reply("CheckTemplate", resolver_pb.CheckTemplateResponse())
    async with AsyncVaultClient(fake.address) as client:
        response = await client.resolve_template(
            [("u", "https://h/{{input.id}}", "URL"), ("h", "{{secret:s}}")],
            {"id": "42"},
            tool="orders",
        )
        await client.check_template({"body": "{{config:c}}"})
    assert [(f.key, f.value) for f in response.fields] == [("u", "x")]
    resolve, check = (c.request for c in fake.calls)
    assert [(f.key, f.template, f.encoding) for f in resolve.fields] == [
        ("u", "https://h/{{input.id}}", resolver_pb.ENCODING_URL),
        ("h", "{{secret:s}}", resolver_pb.ENCODING_RAW),
    ]
    assert dict(resolve.inputs) == {"id": "42"}
    assert resolve.tool == "orders"
    assert [(f.key, f.encoding) for f in check.fields] == [("body", resolver_pb.ENCODING_RAW)]


def test_template_fields_accepts_the_documented_shapes() -> None:
    given = resolver_pb.TemplateField(key="a", template="t", encoding=resolver_pb.ENCODING_JSON)
    fields = template_fields(
        [
            given,
            ("b", "t"),
            ("c", "t", 3),
            {"key": "d", "template": "t", "encoding": "encoding_form"},
            {"key": "e", "template": "t"},
        ]
    )
    assert [(f.key, encoding_name(f.encoding)) for f in fields] == [
        ("a", "JSON"),
        ("b", "RAW"),
        ("c", "HEADER"),
        ("d", "FORM"),
        ("e", "RAW"),
    ]
    with pytest.raises(ValueError, match="unknown encoding"):
        template_fields([("a", "t", "BASE64")])
    with pytest.raises(ValueError, match="unknown"):
        template_fields([{"key": "a", "template": "t", "value": "x"}])
    with pytest.raises(TypeError):
        template_fields(["just a string"])  # type: ignore[list-item]


def test_parse_encoding() -> None:
    assert parse_encoding("URL") == resolver_pb.ENCODING_URL
    assert parse_encoding("url") == resolver_pb.ENCODING_URL
    assert parse_encoding("ENCODING_URL") == resolver_pb.ENCODING_URL
    assert parse_encoding(4) == resolver_pb.ENCODING_JSON
    for bad in ("", "hex", 99, True):
        with pytest.raises(ValueError):
            parse_encoding(bad)


# -- paging ------------------------------------------------------------------------------


def paged(items: list[str], page_size_seen: list[int]) -> Callable[[Any, Any], Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        page_size_seen.append(request.page_size)
        start = int(request.page_token or 0)
        end = start + 2
        token = str(end) if end < len(items) else ""
        page = [secret_pb.Secret(name=name) for name in items[start:end]]
        return secret_pb.ListSecretsResponse(
            secrets=page, next_page_token=token, total_size=len(items)
        )

    return handler


async def test_iter_secrets_walks_every_page(fake: FakeVault) -> None:
    names = ["a", "b", "c", "d", "e"]
    sizes: list[int] = []
    fake.handlers["ListSecrets"] = paged(names, sizes)
    async with AsyncVaultClient(fake.address) as client:
        pager = client.iter_secrets("x", page_size=2)
        assert fake.calls == [] and pager.total_size is None  # lazy: nothing fetched yet
        seen = [secret.name async for secret in pager]
    assert seen == names
    assert pager.total_size == 5
    assert [call.request.page_token for call in fake.calls] == ["", "2", "4"]
    assert {call.request.name_contains for call in fake.calls} == {"x"}
    assert sizes == [2, 2, 2]

    def sync_walk() -> list[str]:
        with VaultClient(fake.address) as client:
            return [secret.name for secret in client.iter_secrets(page_size=2)]

    assert await asyncio.to_thread(sync_walk) == names


async def test_list_secrets_returns_a_pager_with_the_first_page(fake: FakeVault) -> None:
    names = ["a", "b", "c", "d", "e"]
    fake.handlers["ListSecrets"] = paged(names, [])
    async with AsyncVaultClient(fake.address) as client:
        pager = await client.list_secrets(page_size=2)
        assert len(fake.calls) == 1  # the first page only, until iterated
        # reads like the one-page reply it replaces
        assert [s.name for s in pager.secrets] == ["a", "b"]
        assert (pager.next_page_token, pager.total_size) == ("2", 5)
        pages = [[s.name for s in page.secrets] async for page in pager.pages]
        assert pages == [["a", "b"], ["c", "d"], ["e"]]
        assert len(fake.calls) == 3  # the first page was not fetched again
        assert pager.next_page_token == ""  # the latest page
        # walking again starts over from the first page
        assert [s.name async for s in pager] == names
        resumed = await client.list_secrets(page_size=2, page_token="2")
        assert [s.name async for s in resumed] == ["c", "d", "e"]

    def sync_pages() -> tuple[list[int], int | None]:
        with VaultClient(fake.address) as client:
            pager = client.list_secrets(page_size=2)
            return [len(page.secrets) for page in pager.pages], pager.total_size

    assert await asyncio.to_thread(sync_pages) == ([2, 2, 1], 5)


async def test_a_pager_stops_fetching_when_the_caller_stops(fake: FakeVault) -> None:
    fake.handlers["ListSecrets"] = paged([str(n) for n in range(10)], [])
    async with AsyncVaultClient(fake.address) as client:
        async for secret in client.iter_secrets(page_size=2):
            if secret.name == "2":
                break
    assert len(fake.calls) == 2


async def test_a_pager_before_any_page_has_no_reply_attributes(fake: FakeVault) -> None:
    async with AsyncVaultClient(fake.address) as client:
        pager = client.iter_config_values()
        with pytest.raises(AttributeError, match="no page fetched"):
            _ = pager.config_values
    assert repr(pager) == "AsyncPager(total_size=None)"


async def test_iter_config_values_and_audit_events(fake: FakeVault) -> None:
    async def configs(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not request.page_token:
            return config_pb.ListConfigValuesResponse(
                config_values=[config_pb.ConfigValue(key="k1")],
                next_page_token="p2",
                total_size=2,
            )
        return config_pb.ListConfigValuesResponse(
            config_values=[config_pb.ConfigValue(key="k2")], total_size=2
        )

    async def events(request: Any, context: grpc.aio.ServicerContext) -> Any:
        assert (request.secret_name, request.principal) == ("s", "p")
        if not request.page_token:
            return audit_pb.ListAuditEventsResponse(
                events=[audit_pb.AuditEvent(method="m1")], next_page_token="n"
            )
        return audit_pb.ListAuditEventsResponse(events=[audit_pb.AuditEvent(method="m2")])

    fake.handlers["ListConfigValues"] = configs
    fake.handlers["ListAuditEvents"] = events
    async with AsyncVaultClient(fake.address) as client:
        keys = [c.key async for c in client.iter_config_values()]
        methods = [e.method async for e in client.iter_audit_events("s", "p")]
        config_pager = await client.list_config_values()
        audit_pager = await client.list_audit_events("s", "p")
    assert keys == ["k1", "k2"]
    assert methods == ["m1", "m2"]
    assert config_pager.total_size == 2
    assert audit_pager.total_size is None  # ListAuditEventsResponse has no total_size
    assert [e.method for e in audit_pager.events] == ["m1"]


# -- channel security --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.3.2.1:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("::1", True),
        ("unix:///run/vault.sock", True),
        ("dns:///localhost:443", True),
        ("ipv4:127.0.0.1:50051", True),
        ("vault.internal:443", False),
        ("10.0.0.5:50051", False),
        ("[2001:db8::1]:443", False),
        ("dns:///vault.example.com:443", False),
    ],
)
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_channel_security_defaults() -> None:
    assert channel_security("127.0.0.1:1", None, None) is None
    assert channel_security("vault.example.com:443", None, None) == TLSConfig()
    assert channel_security("vault.example.com:443", None, True) is None
    assert channel_security("127.0.0.1:1", None, False) == TLSConfig()
    custom = TLSConfig(root_certificates=b"pem")
    assert channel_security("127.0.0.1:1", custom, None) is custom
    with pytest.raises(ValueError):
        channel_security("127.0.0.1:1", custom, True)
    with pytest.raises(ValueError, match="both"):
        TLSConfig(certificate_chain=b"cert")


@dataclass
class Pki:
    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes


def _issue(
    subject: str,
    issuer_name: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return cert, key


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca_cert, ca_key = _issue("test-ca", None, None, ca=True)
    server_cert, server_key = _issue("localhost", ca_cert.subject, ca_key, server=True)
    client_cert, client_key = _issue("vaultctl", ca_cert.subject, ca_key)
    ca_pem, _ = _pem(ca_cert, ca_key)
    return Pki(ca_pem, *_pem(server_cert, server_key), *_pem(client_cert, client_key))


async def test_mutual_tls(pki: Pki) -> None:
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key, pki.server_cert)], root_certificates=pki.ca, require_client_auth=True
    )
    fake, server = await start_fake(credentials)
    try:
        fake.reply("GetVaultStats", secret_pb.VaultStats(total_secrets=9))
        tls = TLSConfig(pki.ca, pki.client_cert, pki.client_key)
        async with AsyncVaultClient(fake.address, "t", tls=tls) as client:
            assert (await client.get_vault_stats()).total_secrets == 9

        def sync_call() -> int:
            with VaultClient(fake.address, "t", tls=tls) as client:
                return int(client.get_vault_stats().total_secrets)

        assert await asyncio.to_thread(sync_call) == 9

        no_client_cert = TLSConfig(pki.ca)
        async with AsyncVaultClient(
            fake.address, tls=no_client_cert, retry=RetryPolicy(max_attempts=1), timeout=5
        ) as client:
            with pytest.raises(Unavailable):
                await client.get_vault_stats()
        # plaintext against a TLS server fails too
        async with AsyncVaultClient(
            fake.address, insecure=True, retry=RetryPolicy(max_attempts=1), timeout=5
        ) as client:
            with pytest.raises(Unavailable):
                await client.get_vault_stats()
        assert len(fake.calls) == 2
    finally:
        await server.stop(None)


async def test_tls_server_name_override_and_files(pki: Pki, tmp_path: Any) -> None:
    credentials = grpc.ssl_server_credentials([(pki.server_key, pki.server_cert)])
    fake, server = await start_fake(credentials)
    try:
        fake.reply("GetVaultStats", secret_pb.VaultStats(total_secrets=1))
        ca_file = tmp_path / "ca.pem"
        ca_file.write_bytes(pki.ca)
        tls = TLSConfig.from_files(ca_file, server_name="localhost")
        assert tls.channel_options() == [("grpc.ssl_target_name_override", "localhost")]
        async with AsyncVaultClient(fake.address, tls=tls) as client:
            assert (await client.get_vault_stats()).total_secrets == 1
    finally:
        await server.stop(None)


async def test_from_channel_leaves_the_channel_open(fake: FakeVault) -> None:
    fake.reply("GetVaultStats", secret_pb.VaultStats(total_secrets=2))
    channel = grpc.aio.insecure_channel(fake.address)
    try:
        async with AsyncVaultClient.from_channel(channel, "t") as client:
            await client.get_vault_stats()
        stub_client = AsyncVaultClient.from_channel(channel)
        assert (await stub_client.get_vault_stats()).total_secrets == 2
    finally:
        await channel.close()


async def test_create_token_sends_expiry_and_scopes(fake: FakeVault) -> None:
    fake.reply("CreateToken", access_pb.CreateTokenResponse(token="vt_x"))
    ends = datetime.datetime(2031, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    async with AsyncVaultClient(fake.address) as client:
        reply = await client.create_token(
            "ci", "resolver", description="d", expire_time=ends, scopes=["pay_*"]
        )
        with pytest.raises(ValueError, match="timezone-aware"):
            await client.create_token("ci", "viewer", expire_time=datetime.datetime(2031, 1, 2))
    assert reply.token == "vt_x"
    (call,) = fake.calls_to("CreateToken")
    assert (call.request.principal, call.request.role, call.request.description) == (
        "ci",
        "resolver",
        "d",
    )
    assert list(call.request.scopes) == ["pay_*"]
    assert call.request.expire_time.ToDatetime(tzinfo=datetime.UTC) == ends
