"""Errors listing many long names stay under gRPC's metadata limits (issue 15, item 5): the
first names (at most 20 and 1024 characters of them), then ``and N more``, in the message
and in ErrorInfo metadata."""

from __future__ import annotations

import grpc

from tests.support.resolve import RAW, request
from tests.support.rpc import expect_error, resolver
from tests.support.vault import VaultHandle

#: 128-character names: as many as fit in 1024 characters.
LISTED = 1024 // 128


def _long_names(prefix: str, count: int = 1000) -> list[str]:
    return [f"{prefix}{i:04d}".ljust(128, "x") for i in range(count)]


def _check_capped(message: str, names_meta: str, names: list[str]) -> None:
    assert message.endswith(f"and {len(names) - LISTED} more"), message[-80:]
    listed = [n for n in names if n in message]
    assert len(listed) == LISTED
    assert names_meta.split(",")[:LISTED] == sorted(names, key=str.lower)[:LISTED]
    assert names_meta.endswith(f"and {len(names) - LISTED} more")


async def test_a_thousand_missing_secrets_give_a_readable_not_found(vault: VaultHandle) -> None:
    names = _long_names("s")
    template = "".join(f"{{{{secret:{n}}}}}" for n in names)
    message, info = await expect_error(
        resolver(vault).ResolveTemplate(request([("f", template, RAW)]), timeout=30),
        grpc.StatusCode.NOT_FOUND,
        "SECRET_NOT_FOUND",
    )
    assert message.startswith("secret not found: ")
    _check_capped(message, info.metadata["names"], names)


async def test_a_thousand_missing_configs_and_inputs_too(vault: VaultHandle) -> None:
    keys = _long_names("c")
    template = "".join(f"{{{{config:{k}}}}}" for k in keys)
    message, info = await expect_error(
        resolver(vault).ResolveTemplate(request([("f", template, RAW)]), timeout=30),
        grpc.StatusCode.NOT_FOUND,
        "CONFIG_NOT_FOUND",
    )
    _check_capped(message, info.metadata["names"], keys)

    inputs = _long_names("i")
    template = "".join(f"{{{{input.{n}}}}}" for n in inputs)
    message, info = await expect_error(
        resolver(vault).ResolveTemplate(request([("f", template, RAW)]), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INPUT_MISSING",
    )
    assert message.endswith(f"and {len(inputs) - LISTED} more")
    assert info.metadata["names"].endswith(f"and {len(inputs) - LISTED} more")
    assert len(info.metadata["names"].split(",")) == LISTED + 1
