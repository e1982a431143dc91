"""Request limits: over any of them the answer is INVALID_ARGUMENT or RESOURCE_EXHAUSTED,
never a crash, and the server keeps serving afterwards."""

from __future__ import annotations

import grpc
import pytest
from interakt.vault.v1 import resolver_service_pb2 as rpb

from tests.support.resolve import RAW, URL, FieldSpec, put_secrets, request, resolve
from tests.support.rpc import resolver
from tests.support.vault import VaultHandle

MIB = 1024 * 1024
LIMIT_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)


async def refused(vault: VaultHandle, message: rpb.ResolveTemplateRequest) -> grpc.aio.AioRpcError:
    stub = resolver(vault)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ResolveTemplate(message, timeout=60)
    assert info.value.code() in LIMIT_CODES, (info.value.code(), info.value.details())
    return info.value


async def still_serving(vault: VaultHandle) -> None:
    out = await resolve(resolver(vault), [("f", "ok {{secret:alive}}", RAW)])
    assert out == [("f", "ok alive-value")]


@pytest.fixture
async def limits_vault(vault: VaultHandle) -> VaultHandle:
    await put_secrets(vault, {"alive": "alive-value"})
    return vault


def fields_of(count: int, template: str = "x") -> list[FieldSpec]:
    return [(f"f{i}", template, RAW) for i in range(count)]


async def test_256_fields_pass_257_are_refused(limits_vault: VaultHandle) -> None:
    out = await resolve(resolver(limits_vault), fields_of(256, "{{secret:alive}}"))
    assert len(out) == 256
    err = await refused(limits_vault, request(fields_of(257)))
    assert "257" in (err.details() or "")
    await still_serving(limits_vault)


async def test_1000_placeholders_pass_1001_are_refused(limits_vault: VaultHandle) -> None:
    inputs = {"a": "1"}
    out = await resolve(resolver(limits_vault), [("f", "{{input.a}}" * 1000, RAW)], inputs)
    assert out == [("f", "1" * 1000)]
    await refused(limits_vault, request([("f", "{{input.a}}" * 1001, RAW)], inputs))
    # Spread over fields: 250 fields of 4 are fine, one more placeholder is not.
    spread = fields_of(250, "{{input.a}}" * 4)
    assert len(await resolve(resolver(limits_vault), spread, inputs)) == 250
    spread[-1] = ("f249", "{{input.a}}" * 5, RAW)
    await refused(limits_vault, request(spread, inputs))
    await still_serving(limits_vault)


async def test_field_over_one_mib_is_refused(limits_vault: VaultHandle) -> None:
    exactly = "x" * (MIB - len("{{secret:alive}}")) + "{{secret:alive}}"
    (out,) = await resolve(resolver(limits_vault), [("big", exactly, RAW)])
    assert out[1].endswith("xalive-value")
    await refused(limits_vault, request([("big", "x" * (MIB + 1), RAW)]))
    # The limit is in UTF-8 bytes, not characters.
    await refused(limits_vault, request([("big", "\u00e9" * (MIB // 2 + 1), RAW)]))
    await still_serving(limits_vault)


async def test_request_over_four_mib_is_refused(limits_vault: VaultHandle) -> None:
    chunk = "y" * (MIB - 16)
    await refused(limits_vault, request(fields_of(5, chunk)))
    await refused(limits_vault, request([("f", "x", RAW)], {"big": "z" * (5 * MIB)}))
    await still_serving(limits_vault)


async def test_too_many_inputs_are_refused(limits_vault: VaultHandle) -> None:
    inputs = {f"i{n}": "v" for n in range(1001)}
    await refused(limits_vault, request([("f", "{{input.i0}}", RAW)], inputs))
    await still_serving(limits_vault)


async def test_over_long_tool_is_refused(limits_vault: VaultHandle) -> None:
    await refused(limits_vault, request([("f", "x", RAW)], tool="t" * 257))
    await still_serving(limits_vault)


@pytest.mark.parametrize("encoding", [RAW, URL])
async def test_value_amplification_is_bounded(limits_vault: VaultHandle, encoding: int) -> None:
    """1000 uses of a 64 KiB secret would render 64+ MB: refused, and nothing crashes."""
    await put_secrets(limits_vault, {"huge": "\u00e9" * (32 * 1024)})
    prefix = "https://h.example/?q=" if encoding == URL else ""
    template = prefix + "{{secret:huge}}" * 1000
    await refused(limits_vault, request([("f", template, encoding)]))
    await refused(
        limits_vault,
        request([("f", "{{input.big}}" * 1000, RAW)], {"big": "b" * (3 * MIB)}),
    )
    await still_serving(limits_vault)
