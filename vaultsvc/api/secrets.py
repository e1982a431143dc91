"""SecretService: secret metadata in and out. No response here ever carries a secret value."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2
from interakt.vault.v1 import secret_service_pb2 as spb
from interakt.vault.v1 import secret_service_pb2_grpc as sgrpc

from vaultsvc.api.convert import timestamp
from vaultsvc.audit import audit_record, mark_audited
from vaultsvc.domain import SecretMeta
from vaultsvc.vault import Vault


def secret_message(meta: SecretMeta) -> spb.Secret:
    return spb.Secret(
        name=meta.name,
        description=meta.description,
        create_time=timestamp(meta.create_time),
        update_time=timestamp(meta.update_time),
        etag=meta.etag,
        allowed_hosts=meta.allowed_hosts,
    )


class SecretServicer(sgrpc.SecretServiceServicer):
    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    async def CreateSecret(self, request: spb.CreateSecretRequest, context: Any) -> spb.Secret:
        audit = audit_record()
        meta = await self.vault.create_secret(
            request.name,
            request.value,
            request.description,
            audit,
            request.request_id,
            request.allowed_hosts,
        )
        mark_audited()
        return secret_message(meta)

    async def GetSecret(self, request: spb.GetSecretRequest, context: Any) -> spb.Secret:
        audit_record().secret_names = [request.name.lower()]
        return secret_message(await self.vault.get_secret(request.name))

    async def ListSecrets(
        self, request: spb.ListSecretsRequest, context: Any
    ) -> spb.ListSecretsResponse:
        rows, next_token, total = await self.vault.list_secrets(
            request.page_size, request.page_token, request.name_contains
        )
        return spb.ListSecretsResponse(
            secrets=[secret_message(m) for m in rows],
            next_page_token=next_token,
            total_size=total,
        )

    async def UpdateSecret(self, request: spb.UpdateSecretRequest, context: Any) -> spb.Secret:
        audit = audit_record()
        meta = await self.vault.update_secret(
            request.name,
            request.value if request.HasField("value") else None,
            request.description if request.HasField("description") else None,
            request.etag,
            audit,
            request.allowed_hosts.hosts if request.HasField("allowed_hosts") else None,
        )
        mark_audited()
        return secret_message(meta)

    async def DeleteSecret(self, request: spb.DeleteSecretRequest, context: Any) -> empty_pb2.Empty:
        await self.vault.delete_secret(request.name, request.etag, audit_record())
        mark_audited()
        return empty_pb2.Empty()

    async def GetVaultStats(
        self, request: spb.GetVaultStatsRequest, context: Any
    ) -> spb.VaultStats:
        total, last = await self.vault.stats()
        return spb.VaultStats(total_secrets=total, last_update_time=timestamp(last))
