"""One database round trip per resolve, one snapshot per request, and updates racing
with resolves: only whole old or whole new values, the same version in every field."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import grpc
import pytest
from interakt.vault.v1 import secret_service_pb2 as spb

from tests.support.resolve import (
    HEADER,
    JSON,
    RAW,
    URL,
    FetchSpy,
    FieldSpec,
    StatementSpy,
    put_configs,
    put_secrets,
    request,
    resolve,
)
from tests.support.rpc import resolver, secrets_admin
from tests.support.vault import VaultHandle


async def test_one_round_trip_for_twenty_secrets_and_configs(vault: VaultHandle) -> None:
    secrets = {f"secret_{i:02d}": f'value-{i:02d}-"&\n' for i in range(20)}
    configs = {f"config_{i}": f"cfg{i}.example.com" for i in range(5)}
    await put_secrets(vault, secrets)
    await put_configs(vault, configs)
    fields: list[FieldSpec] = []
    for i, name in enumerate(secrets):
        upper = name.upper() if i % 2 else name
        fields.append((f"raw{i}", f"{{{{secret:{upper}}}}}/{{{{config:config_{i % 5}}}}}", RAW))
        fields.append(
            (f"json{i}", f'{{"k": "{{{{secret:{name}}}}}", "i": "{{{{input.x}}}}"}}', JSON)
        )
    fields.append(
        (
            "url",
            "https://{{config:config_0}}/p?"
            + "&".join(f"k{i}={{{{secret:{n}}}}}" for i, n in enumerate(secrets)),
            URL,
        )
    )
    fields.append(("header", "Bearer {{config:config_1}}", HEADER))
    await put_secrets(vault, {"warmup": "w"})
    await vault.caught_up()  # no notification of these writes is still on its way
    stub = resolver(vault)
    await resolve(stub, [("warm", "{{secret:warmup}}", RAW)])  # opens pooled connections

    fetches = FetchSpy(vault)
    statements = StatementSpy(vault)
    out = await resolve(stub, fields, {"x": "in"})

    assert fetches.calls == 1
    assert fetches.secret_names == [sorted(secrets)]
    assert fetches.config_keys == [sorted(configs)]
    assert statements.request_statements() == 1, statements.by_task
    assert statements.acquisitions == 1
    assert len(out) == len(fields)
    for i, name in enumerate(secrets):
        assert out[2 * i] == (f"raw{i}", f"{secrets[name]}/cfg{i % 5}.example.com")
        assert json.loads(out[2 * i + 1][1]) == {"k": secrets[name], "i": "in"}

    # Failing requests make the same single round trip (for what the cache does not
    # know yet), or none at all.
    statements.reset()
    await _expect_not_found(vault, [("a", "{{secret:nope_1}}{{secret:secret_01}}", RAW)])
    assert statements.request_statements() == 1
    statements.reset()
    await _expect_not_found(vault, [("a", "{{secret:nope_1}}{{secret:secret_01}}", RAW)])
    assert statements.request_statements() == 0
    statements.reset()
    out = await resolve(stub, [("plain", "no placeholders, only {{input.x}}", RAW)], {"x": "1"})
    assert out == [("plain", "no placeholders, only 1")]
    assert statements.request_statements() == 0


async def _expect_not_found(vault: VaultHandle, fields: list[FieldSpec]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await resolver(vault).ResolveTemplate(request(fields))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_concurrent_updates_give_whole_values_and_one_version_per_request(
    vault: VaultHandle,
) -> None:
    old = "OLD-" + "o" * 3000 + "-OLD"
    new = "NEW-" + "n" * 3000 + "-NEW"
    await put_secrets(vault, {"race": old, "steady": "steady-value"})
    stub = resolver(vault)
    admin = secrets_admin(vault)
    fields: list[FieldSpec] = [
        ("a", "{{secret:race}}", RAW),
        ("b", "[{{secret:race}}|{{secret:steady}}|{{secret:RACE}}]", RAW),
        ("c", '{"v": "{{secret:race}}"}', JSON),
        ("d", "https://h.example/?v={{secret:race}}", URL),
        ("e", "{{secret:race}}", HEADER),
    ]
    seen: Counter[str] = Counter()
    limit = asyncio.Semaphore(16)

    async def one_resolve() -> None:
        async with limit:
            out = dict(await resolve(stub, fields))
        version = out["a"]
        assert version in (old, new), "a torn or mixed value"
        assert out["b"] == f"[{version}|steady-value|{version}]"
        assert json.loads(out["c"]) == {"v": version}
        assert out["d"] == f"https://h.example/?v={version}"
        assert out["e"] == version
        seen[version[:3]] += 1

    async def updates() -> None:
        for i in range(20):
            value = new if i % 2 == 0 else old
            await admin.UpdateSecret(spb.UpdateSecretRequest(name="race", value=value))
            await asyncio.sleep(0)

    await asyncio.gather(updates(), *(one_resolve() for _ in range(200)))
    assert sum(seen.values()) == 200
    # The last of the 20 updates wrote ``old``; every later resolve sees it.
    assert dict(await resolve(stub, fields))["a"] == old
