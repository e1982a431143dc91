"""ConfigService: plain config values that templates can reference."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2
from interakt.vault.v1 import config_service_pb2 as cpb
from interakt.vault.v1 import config_service_pb2_grpc as cgrpc

from vaultsvc.api.convert import timestamp, usage_message
from vaultsvc.audit import audit_record, mark_audited
from vaultsvc.domain import ConfigRecord
from vaultsvc.vault import Vault


def config_message(record: ConfigRecord) -> cpb.ConfigValue:
    return cpb.ConfigValue(
        key=record.key,
        value=record.value,
        description=record.description,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        usage=usage_message(record.usage),
    )


class ConfigServicer(cgrpc.ConfigServiceServicer):
    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    async def PutConfigValue(
        self, request: cpb.PutConfigValueRequest, context: Any
    ) -> cpb.ConfigValue:
        record = await self.vault.put_config(
            request.key, request.value, request.description, audit_record()
        )
        mark_audited()
        return config_message(record)

    async def GetConfigValue(
        self, request: cpb.GetConfigValueRequest, context: Any
    ) -> cpb.ConfigValue:
        return config_message(await self.vault.get_config(request.key))

    async def ListConfigValues(
        self, request: cpb.ListConfigValuesRequest, context: Any
    ) -> cpb.ListConfigValuesResponse:
        rows, next_token, total = await self.vault.list_configs(
            request.page_size, request.page_token, request.key_contains
        )
        return cpb.ListConfigValuesResponse(
            config_values=[config_message(r) for r in rows],
            next_page_token=next_token,
            total_size=total,
        )

    async def DeleteConfigValue(
        self, request: cpb.DeleteConfigValueRequest, context: Any
    ) -> empty_pb2.Empty:
        await self.vault.delete_config(request.key, audit_record(), force=request.force)
        mark_audited()
        return empty_pb2.Empty()
