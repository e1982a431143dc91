"""The scripted fake vault (tests/support/fake_vault.py) speaks real rich statuses."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from interakt.vault.v1 import secret_service_pb2, secret_service_pb2_grpc

from tests.support.fake_vault import start_fake


async def test_fake_sends_a_rich_status_the_reference_parser_reads() -> None:
    fake, server = await start_fake()
    try:
        fake.fail("GetVaultStats", grpc.StatusCode.NOT_FOUND, "nope", "SOME_REASON", {"k": "v"})
        async with grpc.aio.insecure_channel(fake.address) as channel:
            stub = secret_service_pb2_grpc.SecretServiceStub(channel)
            try:
                await stub.GetVaultStats(secret_service_pb2.GetVaultStatsRequest(), timeout=10)
            except grpc.aio.AioRpcError as exc:
                status = rpc_status.from_call(exc)
            else:  # pragma: no cover
                raise AssertionError("expected a failure")
        assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        assert (info.reason, dict(info.metadata)) == ("SOME_REASON", {"k": "v"})
    finally:
        await server.stop(None)
