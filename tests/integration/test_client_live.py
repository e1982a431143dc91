"""The Python clients (sync and async) against a live in-process vault."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from vaultsvc_client import (
    AlreadyExists,
    AsyncVaultClient,
    ConfigNotFound,
    EtagMismatch,
    InvalidArgument,
    PermissionDenied,
    Redactor,
    SecretInUse,
    SecretNotFound,
    Unauthenticated,
    VaultClient,
)

pytestmark = pytest.mark.timeout(120)

VALUE = 'pa$$/word "quoted" & ünïcode'


async def test_async_client_round_trip(vault: Any) -> None:
    admin = AsyncVaultClient(vault.address, vault.tokens["admin"])
    resolver = AsyncVaultClient(vault.address, vault.tokens["resolver"])
    viewer = AsyncVaultClient(vault.address, vault.tokens["viewer"])
    try:
        created = await admin.create_secret("stripe_key", VALUE, "Stripe")
        assert (created.name, created.description) == ("stripe_key", "Stripe")
        assert created.etag

        with pytest.raises(AlreadyExists) as duplicate:
            await admin.create_secret("Stripe_Key", "other")
        assert duplicate.value.reason == "ALREADY_EXISTS"
        assert "other" not in str(duplicate.value)

        updated = await admin.update_secret("stripe_key", description="Stripe live")
        assert updated.etag != created.etag
        with pytest.raises(EtagMismatch):
            await admin.update_secret("stripe_key", description="x", etag=created.etag)

        response = await resolver.resolve_template(
            [("auth", "Bearer {{secret:stripe_key}}", "HEADER")], tool="t"
        )
        assert [(f.key, f.value) for f in response.fields] == [("auth", f"Bearer {VALUE}")]

        with pytest.raises(SecretNotFound) as missing:
            await resolver.resolve_template({"a": "{{secret:zeta}}{{secret:alpha}}"})
        assert sorted(missing.value.names) == ["alpha", "zeta"]
        assert missing.value.request_id

        with pytest.raises(ConfigNotFound) as no_config:
            await resolver.resolve_template({"a": "{{config:base_url}}"})
        assert no_config.value.names == ["base_url"]

        with pytest.raises(InvalidArgument) as no_input:
            await resolver.resolve_template({"a": "{{input.order_id}}"})
        assert no_input.value.reason == "INPUT_MISSING"

        with pytest.raises(PermissionDenied):
            await admin.resolve_template({"a": "{{secret:stripe_key}}"})
        with pytest.raises(PermissionDenied):
            await viewer.delete_secret("stripe_key")

        stats = await viewer.get_vault_stats()
        assert stats.total_secrets == 1

        check = await viewer.check_template({"h": "{{secret:stripe_kye}}"})
        assert [p.name for p in check.problems] == ["stripe_kye"]

        # Resolved above: the delete guard names the tool; force deletes anyway.
        with pytest.raises(SecretInUse) as in_use:
            await admin.delete_secret("stripe_key", etag=updated.etag)
        assert in_use.value.tools and in_use.value.last_resolve_time is not None
        await admin.delete_secret("stripe_key", etag=updated.etag, force=True)
        with pytest.raises(SecretNotFound) as gone:
            await admin.get_secret("stripe_key")
        assert gone.value.names == ["stripe_key"]
    finally:
        for client in (admin, resolver, viewer):
            await client.close()


async def test_async_pagers_and_configs(vault: Any) -> None:
    async with AsyncVaultClient(vault.address, vault.tokens["admin"]) as admin:
        names = [f"key_{i:02d}" for i in range(7)]
        for name in names:
            await admin.create_secret(name, f"value-{name}")
        page = await admin.list_secrets(page_size=3)
        assert len(page.secrets) == 3 and page.next_page_token and page.total_size == 7
        assert [s.name async for s in admin.iter_secrets(page_size=3)] == names
        assert [s.name async for s in admin.iter_secrets("KEY_0", page_size=2)] == names
        pages = [[s.name for s in p.secrets] async for p in page.pages]
        assert pages == [names[0:3], names[3:6], names[6:]]
        assert [s.name async for s in page] == names  # again, from the first page
        assert page.total_size == 7 and page.next_page_token == ""
        first = await admin.list_secrets(page_size=3)
        resumed = await admin.list_secrets(page_size=3, page_token=first.next_page_token)
        assert [s.name async for s in resumed] == names[3:]

        def sync_pages() -> tuple[list[int], int | None, list[str]]:
            with VaultClient(vault.address, vault.tokens["admin"]) as client:
                pager = client.list_secrets("key_0", page_size=2)
                sizes = [len(p.secrets) for p in pager.pages]
                return sizes, pager.total_size, [s.name for s in client.iter_secrets(page_size=4)]

        assert await asyncio.to_thread(sync_pages) == ([2, 2, 2, 1], 7, names)

        for key in ("b_cfg", "a_cfg", "c_cfg"):
            await admin.put_config_value(key, f"v-{key}")
        assert (await admin.get_config_value("a_cfg")).value == "v-a_cfg"
        assert [c.key async for c in admin.iter_config_values(page_size=2)] == [
            "a_cfg",
            "b_cfg",
            "c_cfg",
        ]
        await admin.delete_config_value("b_cfg")
        with pytest.raises(ConfigNotFound):
            await admin.get_config_value("b_cfg")

        # The audit trail is written by a background flusher: poll briefly.
        for _ in range(100):
            events = [e async for e in admin.iter_audit_events(secret_name="key_03", page_size=1)]
            if any(e.method.endswith("/CreateSecret") for e in events):
                break
            await asyncio.sleep(0.05)
        assert any(e.method.endswith("/CreateSecret") for e in events)
        assert all("value-key_03" not in str(e) for e in events)


async def test_sync_client_round_trip(vault: Any) -> None:
    def scenario() -> None:
        with (
            VaultClient(vault.address, vault.tokens["admin"]) as admin,
            VaultClient(vault.address, vault.tokens["resolver"]) as resolver,
            VaultClient(vault.address) as anonymous,
        ):
            admin.create_secret("gh_token", VALUE)
            admin.put_config_value("api_host", "api.github.com")
            secret = admin.get_secret("gh_token")
            kept = admin.update_secret("gh_token", description="GitHub", etag=secret.etag)
            assert kept.description == "GitHub"
            fields = resolver.resolve_template(
                [
                    ("url", "https://{{config:api_host}}/repos/{{input.repo}}", "URL"),
                    ("body", '{"t": "{{secret:gh_token}}"}', "JSON"),
                ],
                {"repo": "a b"},
                tool="gh",
            ).fields
            assert fields[0].value == "https://api.github.com/repos/a%20b"
            assert json.loads(fields[1].value) == {"t": VALUE}
            assert [s.name for s in admin.iter_secrets(page_size=1)] == ["gh_token"]
            # The audit trail is written by a background flusher: poll briefly.
            tools: list[str] = []
            for _ in range(100):
                tools = [e.tool for e in admin.iter_audit_events(principal="test-resolver")]
                if tools:
                    break
                time.sleep(0.05)
            assert tools == ["gh"]
            with pytest.raises(Unauthenticated):
                anonymous.get_vault_stats()
            with pytest.raises(SecretInUse) as in_use:
                admin.delete_secret("gh_token")
            assert in_use.value.tools == ["gh"]
            admin.delete_secret("gh_token", force=True)
            with pytest.raises(SecretNotFound):
                admin.delete_secret("gh_token")

    await asyncio.to_thread(scenario)


async def test_redactor_masks_what_a_resolve_returned(vault: Any) -> None:
    async with (
        AsyncVaultClient(vault.address, vault.tokens["admin"]) as admin,
        AsyncVaultClient(vault.address, vault.tokens["resolver"]) as resolver,
    ):
        await admin.create_secret("api_key", VALUE)
        response = await resolver.resolve_template(
            [
                ("header", "{{secret:api_key}}", "HEADER"),
                ("url", "https://h/x?k={{secret:api_key}}", "URL"),
                ("body", '{"k": "{{secret:api_key}}"}', "JSON"),
                ("form", "k={{secret:api_key}}", "FORM"),
            ]
        )
    redactor = Redactor(field.value for field in response.fields)
    by_key = {field.key: field.value for field in response.fields}
    # an upstream echoing the request back, in each encoding the vault produced
    upstream_echo = (
        f"GET {by_key['url']} -> 401; auth header was {by_key['header']}; "
        f"body {by_key['body']}; form {by_key['form']}"
    )
    redacted = redactor.redact(upstream_echo)
    for field in response.fields:
        assert field.value not in redacted
    assert VALUE not in redacted
    assert "[REDACTED]" in redacted
    assert redactor.redact("nothing secret here") == "nothing secret here"
