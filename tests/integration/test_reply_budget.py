"""Slow readers and big replies (issue 15, item 3): a resolve reply is at most 4 MiB
encoded, and the bytes of replies not yet taken by their clients are bounded per process."""

from __future__ import annotations

import asyncio
import gc

import grpc
import psutil
import pytest

from tests.support.http2 import StalledReader
from tests.support.resolve import RAW, RESOLVE_METHOD, put_secrets, request
from tests.support.rpc import expect_error, resolver
from tests.support.vault import VaultFactory, VaultHandle

MIB = 1024 * 1024
VALUE = "v" * (64 * 1024)


async def test_resolve_replies_are_at_most_four_mib(vault: VaultHandle) -> None:
    await put_secrets(vault, {"big": VALUE})
    stub = resolver(vault)
    # 63 x 64 KiB = 3.94 MiB: served.
    fitting = "{{secret:big}}" * 63
    reply = await stub.ResolveTemplate(request([("f", fitting, RAW)]), timeout=30)
    assert len(reply.fields[0].value) == 63 * len(VALUE)
    # 65 x 64 KiB = 4.06 MiB of reply: refused, before anything is rendered.
    _, _info = await expect_error(
        stub.ResolveTemplate(request([("f", "{{secret:big}}" * 65, RAW)]), timeout=30),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RESPONSE_TOO_LARGE",
    )
    # Encoded size counts, not characters: 2-byte characters reach the cap sooner.
    await put_secrets(vault, {"wide": "\u00e9" * (32 * 1024)})
    await expect_error(
        stub.ResolveTemplate(request([("f", "{{secret:wide}}" * 65, RAW)]), timeout=30),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RESPONSE_TOO_LARGE",
    )


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


@pytest.mark.parametrize("readers", [40])
async def test_clients_that_stop_reading_cannot_grow_the_server(
    make_vault: VaultFactory, readers: int
) -> None:
    budget = 16 * MIB
    vault = await make_vault(max_reply_bytes_in_flight=budget)
    await put_secrets(vault, {"big": VALUE})
    big = request([("f", "{{secret:big}}" * 60, RAW)])  # 3.75 MiB each
    stub = resolver(vault)
    await stub.ResolveTemplate(big, timeout=30)  # warm up: every code path allocated once
    baseline = _rss()

    token = [("authorization", f"Bearer {vault.tokens['resolver']}")]
    stalled = [StalledReader(vault.address) for _ in range(4)]
    try:
        for i in range(readers):
            stalled[i % 4].call(RESOLVE_METHOD, big, token)
        await asyncio.sleep(2.0)  # every call answered (or refused) by now
        held = vault.runtime.frontdoor.replies.in_flight
        assert 0 < held <= budget
        # While the stalled replies hold the budget, a new big reply is refused...
        _, _info = await expect_error(
            stub.ResolveTemplate(big, timeout=30), grpc.StatusCode.UNAVAILABLE, "OVERLOADED"
        )
        # ... small ones still go through.
        small = await stub.ResolveTemplate(request([("f", "ok", RAW)]), timeout=30)
        assert small.fields[0].value == "ok"
        grown = _rss() - baseline
        assert grown < 4 * budget, f"RSS grew {grown / MIB:.0f} MiB"
    finally:
        for reader in stalled:
            reader.close()
    # Closing the connections releases what they held.
    for _ in range(100):
        if vault.runtime.frontdoor.replies.in_flight == 0:
            break
        await asyncio.sleep(0.05)
    assert vault.runtime.frontdoor.replies.in_flight == 0
    assert len((await stub.ResolveTemplate(big, timeout=30)).fields[0].value) == 60 * len(VALUE)
