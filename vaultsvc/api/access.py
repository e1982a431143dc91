"""AccessService: tokens kept in the database (create once, list, revoke)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from interakt.vault.v1 import access_service_pb2 as tpb
from interakt.vault.v1 import access_service_pb2_grpc as tgrpc

from vaultsvc.api.convert import timestamp
from vaultsvc.audit import audit_record, current_call, mark_audited
from vaultsvc.auth import Principal
from vaultsvc.errors import InvalidArgument, Reason
from vaultsvc.storage.tokens import TokenRecord
from vaultsvc.vault.tokens import AccessTokens


def token_info(record: TokenRecord) -> tpb.TokenInfo:
    return tpb.TokenInfo(
        id=record.id,
        principal=record.principal,
        role=record.role,
        description=record.description,
        create_time=timestamp(record.create_time),
        expire_time=timestamp(record.expire_time),
        scopes=record.scopes,
        fingerprint=record.fingerprint,
    )


def _caller() -> Principal:
    call = current_call.get()
    return Principal(call.principal, call.role, call.scopes)


class AccessServicer(tgrpc.AccessServiceServicer):
    def __init__(self, tokens: AccessTokens) -> None:
        self.tokens = tokens

    async def CreateToken(
        self, request: tpb.CreateTokenRequest, context: Any
    ) -> tpb.CreateTokenResponse:
        expire_time = None
        if request.HasField("expire_time"):
            try:
                expire_time = request.expire_time.ToDatetime(tzinfo=UTC)
            except (ValueError, OverflowError):
                raise InvalidArgument(
                    "expire_time is not a valid timestamp",
                    reason=Reason.INVALID_ARGUMENT,
                    metadata={"field": "expire_time"},
                ) from None
        token, record = await self.tokens.create(
            _caller(),
            request.principal,
            request.role,
            request.description,
            expire_time,
            request.scopes,
            audit_record(),
        )
        mark_audited()
        return tpb.CreateTokenResponse(token=token, info=token_info(record))

    async def ListTokens(
        self, request: tpb.ListTokensRequest, context: Any
    ) -> tpb.ListTokensResponse:
        records, next_token = await self.tokens.list_tokens(request.page_size, request.page_token)
        return tpb.ListTokensResponse(
            tokens=[token_info(r) for r in records], next_page_token=next_token
        )

    async def RevokeToken(
        self, request: tpb.RevokeTokenRequest, context: Any
    ) -> tpb.RevokeTokenResponse:
        await self.tokens.revoke(_caller(), request.id, audit_record())
        mark_audited()
        return tpb.RevokeTokenResponse()
