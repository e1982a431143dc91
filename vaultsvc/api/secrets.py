"""SecretService: secret metadata in and out. No response here ever carries a secret value."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2
from interakt.vault.v1 import secret_service_pb2 as spb
from interakt.vault.v1 import secret_service_pb2_grpc as sgrpc

from vaultsvc.api.convert import optional_time, timestamp, usage_message
from vaultsvc.audit import audit_record, mark_audited
from vaultsvc.domain import SecretMeta, VersionRecord
from vaultsvc.vault import Vault


def secret_message(meta: SecretMeta) -> spb.Secret:
    return spb.Secret(
        name=meta.name,
        description=meta.description,
        create_time=timestamp(meta.create_time),
        update_time=timestamp(meta.update_time),
        etag=meta.etag,
        allowed_hosts=meta.allowed_hosts,
        current_version=meta.current_version,
        delete_time=timestamp(meta.delete_time),
        purge_time=timestamp(meta.purge_time),
        usage=usage_message(meta.usage),
    )


def version_message(record: VersionRecord) -> spb.SecretVersion:
    state = (
        spb.SecretVersion.STATE_DESTROYED if record.destroyed else spb.SecretVersion.STATE_ENABLED
    )
    return spb.SecretVersion(
        version=record.version,
        create_time=timestamp(record.create_time),
        created_by=record.created_by,
        state=state,
        current=record.current,
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
            request.page_size,
            request.page_token,
            request.name_contains,
            show_deleted=request.show_deleted,
            order_by=request.order_by,
            never_resolved=request.never_resolved,
            unused_since=optional_time(request, "unused_since"),
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
        await self.vault.delete_secret(
            request.name, request.etag, audit_record(), purge=request.purge, force=request.force
        )
        mark_audited()
        return empty_pb2.Empty()

    async def GetVaultStats(
        self, request: spb.GetVaultStatsRequest, context: Any
    ) -> spb.VaultStats:
        total, last = await self.vault.stats()
        return spb.VaultStats(total_secrets=total, last_update_time=timestamp(last))

    async def ListSecretVersions(
        self, request: spb.ListSecretVersionsRequest, context: Any
    ) -> spb.ListSecretVersionsResponse:
        audit_record().secret_names = [request.name.lower()]
        rows, next_token = await self.vault.list_secret_versions(
            request.name, request.page_size, request.page_token
        )
        return spb.ListSecretVersionsResponse(
            versions=[version_message(r) for r in rows], next_page_token=next_token
        )

    async def RollbackSecret(self, request: spb.RollbackSecretRequest, context: Any) -> spb.Secret:
        meta = await self.vault.rollback_secret(
            request.name, request.version, request.etag, audit_record()
        )
        mark_audited()
        return secret_message(meta)

    async def DestroySecretVersion(
        self, request: spb.DestroySecretVersionRequest, context: Any
    ) -> empty_pb2.Empty:
        await self.vault.destroy_secret_version(request.name, request.version, audit_record())
        mark_audited()
        return empty_pb2.Empty()

    async def RestoreSecret(self, request: spb.RestoreSecretRequest, context: Any) -> spb.Secret:
        meta = await self.vault.restore_secret(request.name, audit_record())
        mark_audited()
        return secret_message(meta)

    async def IdentifySecretValue(
        self, request: spb.IdentifySecretValueRequest, context: Any
    ) -> spb.IdentifySecretValueResponse:
        # Audited by the interceptor after this returns, with match_count and the names.
        matches = await self.vault.identify_secret_value(request.value, audit_record())
        return spb.IdentifySecretValueResponse(
            matches=[
                spb.ValueMatch(name=m.name, version=m.version, current=m.current) for m in matches
            ]
        )
