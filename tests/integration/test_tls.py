"""TLS, mutual TLS and the plaintext rule, over real sockets with certificates made here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rgrpc
from interakt.vault.v1 import secret_service_pb2 as spb
from interakt.vault.v1 import secret_service_pb2_grpc as sgrpc

from tests.support.tls import Authority, Pem
from tests.support.vault import LogCapture, VaultFactory, VaultHandle
from vaultsvc.config import ClientPrincipal, ConfigError, TLSSettings

# ------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class Pki:
    ca: Authority
    other_ca: Authority
    server: Pem
    resolver_client: Pem
    unmapped_client: Pem
    foreign_resolver_client: Pem
    cert_file: Path
    key_file: Path
    ca_file: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = Authority("vault test CA")
    other = Authority("some other CA")
    server = ca.issue("vault-server", server=True)
    folder = tmp_path_factory.mktemp("pki")
    (folder / "server.crt").write_bytes(server.cert)
    (folder / "server.key").write_bytes(server.key)
    (folder / "ca.crt").write_bytes(ca.pem)
    return Pki(
        ca=ca,
        other_ca=other,
        server=server,
        resolver_client=ca.issue("resolver-client", server=False),
        unmapped_client=ca.issue("someone-else", server=False),
        # Same CN as the mapped client, but signed by a CA the vault does not trust.
        foreign_resolver_client=other.issue("resolver-client", server=False),
        cert_file=folder / "server.crt",
        key_file=folder / "server.key",
        ca_file=folder / "ca.crt",
    )


def tls_channel(
    handle: VaultHandle,
    root: bytes,
    client: Pem | None = None,
    *,
    host: str | None = None,
) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=client.key if client else None,
        certificate_chain=client.cert if client else None,
    )
    options = [("grpc.ssl_target_name_override", host)] if host else []
    channel = grpc.aio.secure_channel(handle.address, credentials, options=options)
    handle.channels.append(channel)
    return channel


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def refused(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code()


FIELD = rpb.TemplateField(key="auth", template="Bearer {{secret:tls_key}}")


# --------------------------------------------------------------------------- TLS


async def test_tls_with_token_works_and_plaintext_or_untrusting_clients_fail(
    make_vault: VaultFactory, pki: Pki
) -> None:
    vault = await make_vault(tls=TLSSettings(cert_file=pki.cert_file, key_file=pki.key_file))
    secrets = sgrpc.SecretServiceStub(tls_channel(vault, pki.ca.pem))
    created = await secrets.CreateSecret(
        spb.CreateSecretRequest(name="tls_key", value="tls-value"),
        metadata=bearer(vault.tokens["admin"]),
        timeout=10,
    )
    assert created.name == "tls_key"
    # The certificate names "localhost" too.
    by_name = sgrpc.SecretServiceStub(tls_channel(vault, pki.ca.pem, host="localhost"))
    await by_name.GetSecret(
        spb.GetSecretRequest(name="tls_key"), metadata=bearer(vault.tokens["viewer"]), timeout=10
    )
    # TLS alone is not a credential.
    code = await refused(secrets.ListSecrets(spb.ListSecretsRequest(), timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    # No client certificate is asked for, so a client sending one is simply a TLS client.
    with_cert = rgrpc.ResolverServiceStub(tls_channel(vault, pki.ca.pem, pki.resolver_client))
    code = await refused(with_cert.ResolveTemplate(rpb.ResolveTemplateRequest(fields=[FIELD])))
    assert code == grpc.StatusCode.UNAUTHENTICATED

    plaintext = sgrpc.SecretServiceStub(vault.channel("admin"))
    code = await refused(plaintext.ListSecrets(spb.ListSecretsRequest(), timeout=5))
    assert code == grpc.StatusCode.UNAVAILABLE
    untrusting = sgrpc.SecretServiceStub(tls_channel(vault, pki.other_ca.pem))
    code = await refused(
        untrusting.ListSecrets(
            spb.ListSecretsRequest(), metadata=bearer(vault.tokens["admin"]), timeout=5
        )
    )
    assert code == grpc.StatusCode.UNAVAILABLE
    wrong_name = sgrpc.SecretServiceStub(tls_channel(vault, pki.ca.pem, host="vault.example"))
    code = await refused(
        wrong_name.ListSecrets(
            spb.ListSecretsRequest(), metadata=bearer(vault.tokens["admin"]), timeout=5
        )
    )
    assert code == grpc.StatusCode.UNAVAILABLE

    await vault.runtime.audit.flush()
    rows = await vault.sql("SELECT outcome, count FROM audit_events ORDER BY id")
    # The two refusals come from one address: one aggregated event (per minute) counts them.
    assert [r["outcome"] for r in rows][:2] == ["OK", "OK"]
    refused_rows = rows[2:]
    assert {r["outcome"] for r in refused_rows} == {"UNAUTHENTICATED"}
    assert sum(r["count"] for r in refused_rows) == 2


# -------------------------------------------------------------------------- mTLS


def mtls(pki: Pki) -> TLSSettings:
    return TLSSettings(
        cert_file=pki.cert_file,
        key_file=pki.key_file,
        client_ca_file=pki.ca_file,
        require_client_cert=True,
        client_principals=(ClientPrincipal("resolver-client", "ci-resolver", "resolver"),),
    )


async def test_mtls_subject_maps_to_principal_and_role(make_vault: VaultFactory, pki: Pki) -> None:
    vault = await make_vault(tls=mtls(pki))
    admin_channel = tls_channel(vault, pki.ca.pem, pki.unmapped_client)
    await sgrpc.SecretServiceStub(admin_channel).CreateSecret(
        spb.CreateSecretRequest(name="tls_key", value="tls-value"),
        metadata=bearer(vault.tokens["admin"]),
        timeout=10,
    )

    resolver_channel = tls_channel(vault, pki.ca.pem, pki.resolver_client)
    reply = await rgrpc.ResolverServiceStub(resolver_channel).ResolveTemplate(
        rpb.ResolveTemplateRequest(fields=[FIELD], tool="mtls-tool"), timeout=10
    )
    assert [f.value for f in reply.fields] == ["Bearer tls-value"]
    # The certificate's role is resolver: nothing else.
    code = await refused(
        sgrpc.SecretServiceStub(resolver_channel).ListSecrets(spb.ListSecretsRequest(), timeout=5)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # A bearer token, when sent, is the credential (an admin token cannot resolve).
    code = await refused(
        rgrpc.ResolverServiceStub(resolver_channel).ResolveTemplate(
            rpb.ResolveTemplateRequest(fields=[FIELD]),
            metadata=bearer(vault.tokens["admin"]),
            timeout=5,
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # A verified certificate whose subject is not mapped is no credential on its own.
    code = await refused(
        rgrpc.ResolverServiceStub(admin_channel).ResolveTemplate(
            rpb.ResolveTemplateRequest(fields=[FIELD]), timeout=5
        )
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED

    await vault.runtime.audit.flush()
    events = await vault.sql(
        "SELECT principal, outcome, tool, secret_names, peer FROM audit_events "
        "WHERE method LIKE '%ResolveTemplate' ORDER BY time"
    )
    assert [(e["principal"], e["outcome"]) for e in events] == [
        ("ci-resolver", "OK"),
        ("test-admin", "PERMISSION_DENIED"),
    ]
    refusals = await vault.sql("SELECT count FROM audit_events WHERE method = 'UNAUTHENTICATED'")
    assert [r["count"] for r in refusals] == [1]
    assert events[0]["tool"] == "mtls-tool"
    assert events[0]["secret_names"] == ["tls_key"]
    assert events[0]["peer"].startswith("ipv4:127.0.0.1:")


async def test_mtls_refuses_clients_without_a_trusted_certificate(
    make_vault: VaultFactory, pki: Pki
) -> None:
    vault = await make_vault(tls=mtls(pki))
    for client in (None, pki.foreign_resolver_client):
        stub = rgrpc.ResolverServiceStub(tls_channel(vault, pki.ca.pem, client))
        code = await refused(
            stub.ResolveTemplate(
                rpb.ResolveTemplateRequest(fields=[FIELD]),
                metadata=bearer(vault.tokens["resolver"]),
                timeout=5,
            )
        )
        assert code == grpc.StatusCode.UNAVAILABLE
    plaintext = rgrpc.ResolverServiceStub(vault.channel("resolver"))
    code = await refused(
        plaintext.ResolveTemplate(rpb.ResolveTemplateRequest(fields=[FIELD]), timeout=5)
    )
    assert code == grpc.StatusCode.UNAVAILABLE
    # Refused at the handshake: no RPC reached the vault.
    assert await vault.sql("SELECT 1 FROM audit_events") == []


@pytest.mark.parametrize(
    ("require", "with_ca", "principals", "message"),
    [
        (False, True, True, "require_client_cert"),
        (False, False, True, "require_client_cert"),
        (True, False, False, "client_ca_file"),
    ],
)
async def test_tls_settings_that_would_not_verify_clients_are_refused(
    make_vault: VaultFactory,
    pki: Pki,
    require: bool,
    with_ca: bool,
    principals: bool,
    message: str,
) -> None:
    settings = TLSSettings(
        cert_file=pki.cert_file,
        key_file=pki.key_file,
        client_ca_file=pki.ca_file if with_ca else None,
        require_client_cert=require,
        client_principals=(
            (ClientPrincipal("resolver-client", "ci-resolver", "resolver"),) if principals else ()
        ),
    )
    with pytest.raises(ConfigError, match=message):
        await make_vault(tls=settings)


async def test_unreadable_tls_file_is_a_config_error(
    make_vault: VaultFactory, pki: Pki, tmp_path: Path
) -> None:
    settings = TLSSettings(cert_file=pki.cert_file, key_file=tmp_path / "missing.key")
    with pytest.raises(ConfigError, match=r"missing\.key"):
        await make_vault(tls=settings)


# --------------------------------------------------------------------- plaintext


async def test_plaintext_on_a_non_loopback_address_needs_the_explicit_flag(
    make_vault: VaultFactory, log_capture: LogCapture
) -> None:
    with pytest.raises(ConfigError) as info:
        await make_vault(listen="0.0.0.0:0")
    assert "plaintext" in str(info.value)
    assert "0.0.0.0:0" in str(info.value)
    assert "allow_plaintext_non_loopback" in str(info.value)

    before = log_capture.mark()
    vault = await make_vault(listen="0.0.0.0:0", allow_plaintext_non_loopback=True)
    logged = log_capture.text(before)
    assert any(
        '"level": "WARNING"' in line and "PLAINTEXT" in line for line in logged.splitlines()
    ), logged
    listed = await sgrpc.SecretServiceStub(vault.channel("viewer")).ListSecrets(
        spb.ListSecretsRequest(), timeout=10
    )
    assert listed.total_size == 0


async def test_loopback_plaintext_is_quiet(
    make_vault: VaultFactory, log_capture: LogCapture
) -> None:
    before = log_capture.mark()
    await make_vault(listen="127.0.0.1:0")
    assert "PLAINTEXT" not in log_capture.text(before)
