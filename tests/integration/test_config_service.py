"""ConfigService against a real server, and `{{config:KEY}}` resolving from it."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import empty_pb2
from interakt.vault.v1 import config_service_pb2 as cpb
from interakt.vault.v1 import config_service_pb2_grpc as cpbg

from tests.support.resolve import RAW, URL, put_secrets, request, resolve
from tests.support.rpc import expect_error, resolver
from tests.support.vault import VaultHandle


def configs(vault: VaultHandle, role: str | None = "admin") -> cpbg.ConfigServiceStub:
    return cpbg.ConfigServiceStub(vault.channel(role))


async def put(
    stub: cpbg.ConfigServiceStub, key: str, value: str, description: str = ""
) -> cpb.ConfigValue:
    return await stub.PutConfigValue(
        cpb.PutConfigValueRequest(key=key, value=value, description=description)
    )


async def test_put_creates_then_replaces(vault: VaultHandle) -> None:
    stub = configs(vault)
    created = await put(stub, "api_host", "api.example.com", "base host")
    assert (created.key, created.value, created.description) == (
        "api_host",
        "api.example.com",
        "base host",
    )
    assert created.create_time.seconds > 0
    assert created.create_time == created.update_time
    await asyncio.sleep(0.01)
    replaced = await put(stub, "API_HOST", "api2.example.com")
    assert replaced.value == "api2.example.com"
    assert replaced.description == ""
    assert replaced.create_time == created.create_time
    assert replaced.update_time.ToDatetime() > created.update_time.ToDatetime()
    got = await stub.GetConfigValue(cpb.GetConfigValueRequest(key="Api_Host"))
    assert got.value == "api2.example.com"
    listed = await stub.ListConfigValues(cpb.ListConfigValuesRequest())
    assert listed.total_size == 1


async def test_get_and_delete_missing_is_not_found(vault: VaultHandle) -> None:
    stub = configs(vault)
    await expect_error(
        stub.GetConfigValue(cpb.GetConfigValueRequest(key="nope")),
        grpc.StatusCode.NOT_FOUND,
        "CONFIG_NOT_FOUND",
    )
    await expect_error(
        stub.DeleteConfigValue(cpb.DeleteConfigValueRequest(key="nope")),
        grpc.StatusCode.NOT_FOUND,
        "CONFIG_NOT_FOUND",
    )


async def test_delete(vault: VaultHandle) -> None:
    stub = configs(vault)
    await put(stub, "region", "eu-west-1")
    result = await stub.DeleteConfigValue(cpb.DeleteConfigValueRequest(key="REGION"))
    assert result == empty_pb2.Empty()
    await expect_error(
        stub.GetConfigValue(cpb.GetConfigValueRequest(key="region")),
        grpc.StatusCode.NOT_FOUND,
        "CONFIG_NOT_FOUND",
    )


@pytest.mark.parametrize("key", ["", "1abc", "_x", "has space", "dot.key", "a" * 129, "k/x"])
async def test_key_rule_is_invalid_argument(vault: VaultHandle, key: str) -> None:
    stub = configs(vault)
    await expect_error(
        stub.PutConfigValue(cpb.PutConfigValueRequest(key=key, value="v")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_NAME",
    )
    await expect_error(
        stub.GetConfigValue(cpb.GetConfigValueRequest(key=key)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_NAME",
    )


async def test_value_and_description_limits(vault: VaultHandle) -> None:
    stub = configs(vault)
    await expect_error(
        stub.PutConfigValue(cpb.PutConfigValueRequest(key="k", value="v" * (64 * 1024 + 1))),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_error(
        stub.PutConfigValue(cpb.PutConfigValueRequest(key="k", value="v", description="d" * 1025)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert (await put(stub, "k", "v" * (64 * 1024))).key == "k"


async def test_list_sorted_filtered_paginated(vault: VaultHandle) -> None:
    stub = configs(vault)
    keys = ["Zeta", "alpha", "Beta_host", "gamma-host", "delta", "HOST_main", "epsilon"]
    for key in keys:
        await put(stub, key, f"value of {key}")
    everything = await stub.ListConfigValues(cpb.ListConfigValuesRequest())
    assert [c.key for c in everything.config_values] == sorted(keys, key=str.lower)
    assert everything.total_size == len(keys)
    assert everything.next_page_token == ""

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await stub.ListConfigValues(
            cpb.ListConfigValuesRequest(page_size=3, page_token=token, key_contains="")
        )
        pages += 1
        assert len(page.config_values) <= 3
        assert page.total_size == len(keys)
        seen += [c.key for c in page.config_values]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(keys, key=str.lower)
    assert pages == 3

    hosts = await stub.ListConfigValues(
        cpb.ListConfigValuesRequest(key_contains="HOST", page_size=2)
    )
    assert [c.key for c in hosts.config_values] == ["Beta_host", "gamma-host"]
    assert hosts.total_size == 3
    rest = await stub.ListConfigValues(
        cpb.ListConfigValuesRequest(
            key_contains="HOST", page_size=2, page_token=hosts.next_page_token
        )
    )
    assert [c.key for c in rest.config_values] == ["HOST_main"]
    assert rest.next_page_token == ""

    # LIKE wildcards are literal text.
    none = await stub.ListConfigValues(cpb.ListConfigValuesRequest(key_contains="%"))
    assert (list(none.config_values), none.total_size) == ([], 0)
    underscore = await stub.ListConfigValues(cpb.ListConfigValuesRequest(key_contains="_"))
    assert [c.key for c in underscore.config_values] == ["Beta_host", "HOST_main"]


async def test_list_bad_paging_arguments(vault: VaultHandle) -> None:
    stub = configs(vault)
    await expect_error(
        stub.ListConfigValues(cpb.ListConfigValuesRequest(page_size=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_error(
        stub.ListConfigValues(cpb.ListConfigValuesRequest(page_token="garbage")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    for key in ("a1", "a2", "a3"):
        await put(stub, key, "v")
    page = await stub.ListConfigValues(cpb.ListConfigValuesRequest(page_size=1, key_contains="a"))
    await expect_error(
        stub.ListConfigValues(
            cpb.ListConfigValuesRequest(page_token=page.next_page_token, key_contains="b")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_roles(vault: VaultHandle) -> None:
    await put(configs(vault), "shared", "x")
    viewer = configs(vault, "viewer")
    assert (await viewer.GetConfigValue(cpb.GetConfigValueRequest(key="shared"))).value == "x"
    assert (await viewer.ListConfigValues(cpb.ListConfigValuesRequest())).total_size == 1
    for role in ("viewer", "resolver"):
        stub = configs(vault, role)
        await expect_error(
            stub.PutConfigValue(cpb.PutConfigValueRequest(key="k", value="v")),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        await expect_error(
            stub.DeleteConfigValue(cpb.DeleteConfigValueRequest(key="shared")),
            grpc.StatusCode.PERMISSION_DENIED,
        )
    await expect_error(
        configs(vault, "resolver").GetConfigValue(cpb.GetConfigValueRequest(key="shared")),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_error(
        configs(vault, None).GetConfigValue(cpb.GetConfigValueRequest(key="shared")),
        grpc.StatusCode.UNAUTHENTICATED,
    )


async def test_config_resolves_and_follows_changes(vault: VaultHandle) -> None:
    stub = configs(vault)
    await put(stub, "api_host", "api.example.com")
    await put_secrets(vault, {"x": "s3cr3t/&"})
    resolve_stub = resolver(vault)
    fields = [
        ("url", "https://{{config:api_host}}/v1?k={{secret:x}}&h={{config:api_host}}", URL),
        ("raw", "{{config:API_HOST}}", RAW),
    ]
    assert await resolve(resolve_stub, fields) == [
        ("url", "https://api.example.com/v1?k=s3cr3t%2F%26&h=api.example.com"),
        ("raw", "api.example.com"),
    ]
    await put(stub, "api_host", "api.example.org:8443")
    assert (await resolve(resolve_stub, fields))[0] == (
        "url",
        "https://api.example.org:8443/v1?k=s3cr3t%2F%26&h=api.example.org%3A8443",
    )
    # Just resolved: the delete guard needs force (tests/integration/test_usage.py).
    await stub.DeleteConfigValue(cpb.DeleteConfigValueRequest(key="api_host", force=True))
    message, _ = await expect_error(
        resolve_stub.ResolveTemplate(request(fields)),
        grpc.StatusCode.NOT_FOUND,
        "CONFIG_NOT_FOUND",
    )
    assert "api_host" in message
