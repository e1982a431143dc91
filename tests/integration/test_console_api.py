"""The console's JSON API (/api/v1) against a real vault: real HTTP on port 0, real Postgres,
the same core, authorization table and audit trail as gRPC."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from interakt.vault.v1 import access_service_pb2 as tpb
from interakt.vault.v1 import access_service_pb2_grpc as tgrpc
from openapi_spec_validator import validate

from tests.support.console import (
    SessionClient,
    bearer_client,
    console_url,
    console_vault,
    error_of,
)
from tests.support.keys import resolve
from tests.support.rpc import resolver
from tests.support.tls import Authority
from tests.support.vault import LogCapture, VaultFactory, VaultHandle
from vaultsvc.api.status import STATUS_TABLE
from vaultsvc.config import ConfigError, TLSSettings
from vaultsvc.errors import Code

PKG = "/interakt.vault.v1."
SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "cache-control": "no-store",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}


@pytest.fixture
async def cvault(make_vault: VaultFactory) -> VaultHandle:
    return await console_vault(make_vault)


async def snapshot(client: httpx.AsyncClient) -> tuple[Any, Any, Any]:
    secrets = (await client.get("/api/v1/secrets", params={"pageSize": 1000})).json()
    configs = (await client.get("/api/v1/configs", params={"pageSize": 1000})).json()
    stats = (await client.get("/api/v1/stats")).json()
    return secrets, configs, stats


def test_every_code_has_an_http_status_in_the_one_table() -> None:
    assert set(STATUS_TABLE) == set(Code)
    assert STATUS_TABLE[Code.INVALID_ARGUMENT][1] == 400
    assert STATUS_TABLE[Code.UNAUTHENTICATED][1] == 401
    assert STATUS_TABLE[Code.PERMISSION_DENIED][1] == 403
    assert STATUS_TABLE[Code.NOT_FOUND][1] == 404
    assert STATUS_TABLE[Code.ALREADY_EXISTS][1] == 409


async def test_security_headers_on_pages_api_static_and_errors(cvault: VaultHandle) -> None:
    async with bearer_client(cvault, None) as anon, bearer_client(cvault) as admin:
        replies = [
            await anon.get("/login"),
            await anon.get("/static/console.js"),
            await anon.get("/api/v1/stats"),
            await anon.get("/api/v1/openapi.json"),
            await anon.get("/nowhere"),
            await admin.get("/api/v1/stats"),
            await admin.post("/api/v1/secrets", content=b"{", headers={"content-type": "x"}),
        ]
        for reply in replies:
            for name, value in SECURITY_HEADERS.items():
                assert reply.headers.get(name) == value, (reply.url, name)
            csp = reply.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        page = await anon.get("/", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login"
        login = await anon.get("/login")
        assert "<script>" not in login.text and "style=" not in login.text


async def test_secret_lifecycle_over_http_and_values_resolve_over_grpc(cvault: VaultHandle) -> None:
    stub = resolver(cvault)
    async with bearer_client(cvault) as admin:
        created = await admin.post(
            "/api/v1/secrets",
            json={"name": "orders_api_key", "value": "v1-value", "description": "orders"},
        )
        assert created.status_code == 200, created.text
        secret = created.json()
        assert set(secret) >= {"name", "description", "createTime", "updateTime", "etag"}
        assert "value" not in secret and "v1-value" not in created.text
        assert (await admin.get("/api/v1/secrets/orders_api_key")).json() == secret

        # Blank value keeps the old one; the description changes, and so do etag and time.
        kept = await admin.patch(
            "/api/v1/secrets/orders_api_key", json={"value": "", "description": "orders v2"}
        )
        assert kept.status_code == 200, kept.text
        assert kept.json()["description"] == "orders v2"
        assert kept.json()["etag"] != secret["etag"]
        assert await resolve(stub, "orders_api_key") == "v1-value"

        stale = await admin.patch(
            "/api/v1/secrets/orders_api_key", json={"value": "v3", "etag": secret["etag"]}
        )
        assert error_of(stale) == (409, "ABORTED", "ETAG_MISMATCH")
        assert await resolve(stub, "orders_api_key") == "v1-value"

        replaced = await admin.patch(
            "/api/v1/secrets/orders_api_key",
            json={"value": "v2-value", "etag": kept.json()["etag"]},
        )
        assert replaced.status_code == 200 and "v2-value" not in replaced.text
        assert await resolve(stub, "orders_api_key") == "v2-value"

        stats = (await admin.get("/api/v1/stats")).json()
        assert stats["totalSecrets"] == "1" and stats["lastUpdateTime"]

        # Just resolved: the delete guard needs force.
        deleted = await admin.delete("/api/v1/secrets/orders_api_key", params={"force": "true"})
        assert deleted.status_code == 200 and deleted.json() == {}
        assert error_of(await admin.get("/api/v1/secrets/orders_api_key")) == (
            404,
            "NOT_FOUND",
            "SECRET_DELETED",  # scheduled for deletion, restorable (issue 11)
        )
        assert (await admin.get("/api/v1/stats")).json()["totalSecrets"] == "0"


async def test_search_and_page_tokens(cvault: VaultHandle) -> None:
    async with bearer_client(cvault) as admin:
        for i in range(7):
            reply = await admin.post(
                "/api/v1/secrets",
                json={"name": f"svc_{i}_{'api' if i % 2 else 'db'}", "value": "x"},
            )
            assert reply.status_code == 200
        seen: list[str] = []
        token = ""
        while True:
            params: dict[str, Any] = {"pageSize": 3, "nameContains": "API"}
            if token:
                params["pageToken"] = token
            page = (await admin.get("/api/v1/secrets", params=params)).json()
            assert page["totalSize"] == 3
            seen += [s["name"] for s in page["secrets"]]
            token = page["nextPageToken"]
            if not token:
                break
        assert seen == ["svc_1_api", "svc_3_api", "svc_5_api"]
        snake = (await admin.get("/api/v1/secrets", params={"page_size": 2})).json()
        assert len(snake["secrets"]) == 2 and snake["nextPageToken"]


async def test_bad_input_gets_a_clear_error_and_changes_nothing(cvault: VaultHandle) -> None:
    async with bearer_client(cvault) as admin:
        await admin.post("/api/v1/secrets", json={"name": "Stripe_Key", "value": "keep-me"})
        await admin.put("/api/v1/configs/base_url", json={"value": "https://a.example"})
        before = await snapshot(admin)
        s, c = "/api/v1/secrets", "/api/v1/configs"
        bad = (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
        too_long = (400, "INVALID_ARGUMENT", "DESCRIPTION_TOO_LONG")
        no_route = (404, "NOT_FOUND", "NOT_FOUND")
        json_type = {"content-type": "application/json"}
        form_type = {"content-type": "application/x-www-form-urlencoded"}
        bad_name = (400, "INVALID_ARGUMENT", "INVALID_NAME")
        long_text = "d" * 1025
        cases: list[tuple[str, str, dict[str, Any], tuple[int, str, str]]] = [
            ("POST", s, {"json": {"name": "bad name", "value": "x"}},
             (400, "INVALID_ARGUMENT", "INVALID_NAME")),
            ("POST", s, {"json": {"name": "stripe_key", "value": "x"}},
             (409, "ALREADY_EXISTS", "ALREADY_EXISTS")),
            ("POST", s, {"json": {"name": "n1", "value": "x", "description": long_text}}, too_long),
            ("POST", s, {"json": {"name": "n1", "value": ""}},
             (400, "INVALID_ARGUMENT", "INVALID_VALUE")),
            ("POST", s, {"json": {"name": "n1", "value": "x", "colour": "red"}}, bad),
            ("POST", s, {"json": {"name": "n1", "value": 12345}}, bad),
            ("POST", s, {"json": ["n1"]}, bad),
            ("POST", s, {"content": b"{not json", "headers": json_type}, bad),
            ("POST", s, {"content": b"name=n1&value=x", "headers": form_type}, bad),
            ("POST", s, {"json": {"name": "n1", "value": "x" * (5 * 1024 * 1024)}},
             (429, "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED")),
            ("PATCH", f"{s}/stripe_key", {"json": {"description": "d" * 1025}}, too_long),
            ("PATCH", f"{s}/stripe_key", {"json": {"name": "other", "value": "y"}}, bad),
            ("PATCH", f"{s}/missing", {"json": {"value": "y"}},
             (404, "NOT_FOUND", "SECRET_NOT_FOUND")),
            ("DELETE", f"{s}/stripe_key", {"params": {"etag": "nope"}},
             (409, "ABORTED", "ETAG_MISMATCH")),
            ("DELETE", f"{s}/bad%20name", {}, (400, "INVALID_ARGUMENT", "INVALID_NAME")),
            ("GET", s, {"params": {"pageSize": -1}},
             (400, "INVALID_ARGUMENT", "INVALID_PAGE_SIZE")),
            ("GET", s, {"params": {"pageSize": "ten"}},
             (400, "INVALID_ARGUMENT", "INVALID_PAGE_SIZE")),
            ("GET", s, {"params": {"pageToken": "garbage"}},
             (400, "INVALID_ARGUMENT", "INVALID_PAGE_TOKEN")),
            ("GET", s, {"params": {"sort": "name"}}, bad),
            ("PUT", f"{c}/bad key", {"json": {"value": "x"}}, bad_name),
            ("PUT", f"{c}/base_url", {"json": {"value": "x", "description": "d" * 1025}}, too_long),
            ("DELETE", f"{c}/missing", {}, (404, "NOT_FOUND", "CONFIG_NOT_FOUND")),
            ("POST", "/api/v1/check", {"json": {"fields": "url"}}, bad),
            ("GET", "/api/v1/resolve", {}, no_route),
            ("PUT", f"{s}/stripe_key", {"json": {"value": "x"}}, no_route),
        ]  # fmt: skip
        for method, path, kwargs, expected in cases:
            reply = await admin.request(method, path, **kwargs)
            assert error_of(reply) == expected, (method, path, reply.text[:300])
            assert "keep-me" not in reply.text
        assert await snapshot(admin) == before
        assert await resolve(resolver(cvault), "Stripe_Key") == "keep-me"


async def test_authentication_and_roles(cvault: VaultHandle) -> None:
    async with (
        bearer_client(cvault, None) as anon,
        bearer_client(cvault, "viewer") as viewer,
        bearer_client(cvault, "resolver") as resolver_client,
        bearer_client(cvault) as admin,
    ):
        created = await admin.post("/api/v1/secrets", json={"name": "k", "value": "v"})
        assert created.status_code == 200
        await admin.put("/api/v1/configs/c", json={"value": "1"})
        before = await snapshot(admin)

        for path in ("/api/v1/secrets", "/api/v1/stats", "/api/v1/configs", "/api/v1/audit"):
            assert error_of(await anon.get(path))[:2] == (401, "UNAUTHENTICATED")
        wrong = httpx.AsyncClient(
            base_url=console_url(cvault), headers={"Authorization": "Bearer vt_nope"}
        )
        async with wrong:
            assert error_of(await wrong.get("/api/v1/secrets"))[:2] == (401, "UNAUTHENTICATED")

        # Resolver: nothing but CheckTemplate (as over gRPC); never a value anywhere.
        assert error_of(await resolver_client.get("/api/v1/secrets"))[:2] == (
            403,
            "PERMISSION_DENIED",
        )
        assert error_of(await resolver_client.get("/api/v1/secrets/k"))[0] == 403
        check = await resolver_client.post(
            "/api/v1/check", json={"fields": [{"key": "b", "template": "{{secret:k}}"}]}
        )
        assert check.status_code == 200
        assert check.json()["references"][0]["secretNames"] == ["k"]

        # Viewer: reads, never writes, no audit.
        for path in ("/api/v1/secrets", "/api/v1/secrets/k", "/api/v1/stats", "/api/v1/configs",
                     "/api/v1/configs/c"):  # fmt: skip
            assert (await viewer.get(path)).status_code == 200, path
        writes = [
            viewer.post("/api/v1/secrets", json={"name": "x", "value": "v"}),
            viewer.patch("/api/v1/secrets/k", json={"description": "d"}),
            viewer.delete("/api/v1/secrets/k"),
            viewer.put("/api/v1/configs/c", json={"value": "2"}),
            viewer.delete("/api/v1/configs/c"),
            viewer.get("/api/v1/audit"),
        ]
        for reply in await asyncio.gather(*writes):
            assert error_of(reply) == (403, "PERMISSION_DENIED", "PERMISSION_DENIED")
        assert await snapshot(admin) == before

        # Refusals are audited like the gRPC calls they mirror.
        events = (await admin.get("/api/v1/audit", params={"principal": "test-viewer"})).json()
        refused = {e["method"] for e in events["events"] if e["outcome"] == "PERMISSION_DENIED"}
        assert PKG + "SecretService/CreateSecret" in refused
        assert PKG + "ConfigService/DeleteConfigValue" in refused


async def test_api_calls_follow_the_grpc_call_flow(cvault: VaultHandle) -> None:
    """Server-assigned request ids (the client's kept beside), the event committed before
    the reply, and unauthenticated calls counted per peer and minute, as over gRPC."""
    async with bearer_client(cvault) as admin, bearer_client(cvault, None) as anon:
        seen: list[str] = []
        for name in ("rid_one", "rid_two"):
            reply = await admin.post(
                "/api/v1/secrets",
                json={"name": name, "value": "v"},
                headers={"X-Request-Id": "client-chosen"},
            )
            assert reply.status_code == 200
            seen.append(reply.headers["x-request-id"])
            # Committed before the reply: the event is already there.
            events = (await admin.get("/api/v1/audit", params={"secretName": name})).json()
            event = events["events"][0]
            assert (event["requestId"], event["clientRequestId"]) == (seen[-1], "client-chosen")
        assert len(set(seen)) == 2 and "client-chosen" not in seen

        for _ in range(5):
            assert error_of(await anon.get("/api/v1/secrets"))[:2] == (401, "UNAUTHENTICATED")
        # Not one INSERT each: nothing is written until the minute is over (or a flush).
        assert (
            await cvault.sql("SELECT 1 FROM audit_events WHERE outcome = 'UNAUTHENTICATED'") == []
        )
        await cvault.runtime.audit.flush()
        rows = await cvault.sql(
            "SELECT method, peer, count FROM audit_events WHERE outcome = 'UNAUTHENTICATED'"
        )
        assert {(r["method"], r["peer"]) for r in rows} == {("UNAUTHENTICATED", "http:127.0.0.1")}
        assert sum(r["count"] for r in rows) == 5


async def test_api_calls_are_refused_before_any_work_when_audit_is_stuck(
    cvault: VaultHandle,
) -> None:
    async with bearer_client(cvault) as admin:
        await cvault.runtime.audit.stop()  # the audit trail takes no more events
        reply = await admin.post("/api/v1/secrets", json={"name": "never", "value": "v"})
        assert error_of(reply)[:3] == (503, "UNAVAILABLE", "AUDIT_UNAVAILABLE")
        assert await cvault.sql("SELECT 1 FROM secrets WHERE name = 'never'") == []


async def test_sign_in_refuses_resolver_and_bad_tokens(cvault: VaultHandle) -> None:
    client = SessionClient(cvault)
    try:
        assert error_of(await client.sign_in(cvault.tokens["resolver"]))[:2] == (
            403,
            "PERMISSION_DENIED",
        )
        assert error_of(await client.sign_in("vt_not_a_token"))[:2] == (401, "UNAUTHENTICATED")
        bad = await client.http.post("/auth/session", content=b"token=x")
        assert error_of(bad)[:2] == (400, "INVALID_ARGUMENT")
        assert not client.http.cookies
        assert (await client.http.get("/", follow_redirects=False)).status_code == 303
    finally:
        await client.aclose()


async def test_session_cookie_csrf_and_sign_out(cvault: VaultHandle) -> None:
    client = SessionClient(cvault)
    try:
        reply = await client.sign_in(cvault.tokens["admin"])
        assert reply.status_code == 200 and reply.json()["role"] == "admin"
        cookie = reply.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plaintext loopback; TLS adds Secure
        assert cvault.tokens["admin"] not in reply.text + cookie

        # Stored hashed: neither the cookie nor the token is in the row.
        value = client.http.cookies["vault_session"]
        rows = await cvault.sql("SELECT * FROM console_sessions")
        assert len(rows) == 1
        assert bytes(rows[0]["session_hash"]) == hashlib.sha256(value.encode()).digest()
        assert (
            bytes(rows[0]["token_hash"]) == hashlib.sha256(cvault.tokens["admin"].encode()).digest()
        )
        assert value not in str(rows[0]) and cvault.tokens["admin"] not in str(rows[0])

        body = {"name": "csrf_key", "value": "v"}
        assert (await client.http.get("/api/v1/secrets")).status_code == 200
        no_csrf = await client.http.post("/api/v1/secrets", json=body)
        assert error_of(no_csrf) == (403, "PERMISSION_DENIED", "PERMISSION_DENIED")
        wrong = await client.http.post("/api/v1/secrets", json=body, headers=client.headers("x"))
        assert error_of(wrong)[0] == 403
        assert (await client.http.get("/api/v1/secrets/csrf_key")).status_code == 404
        ok = await client.http.post("/api/v1/secrets", json=body, headers=client.headers())
        assert ok.status_code == 200

        # Console actions are audited with the token's principal and the mirrored method.
        events = (await client.http.get("/api/v1/audit", params={"secretName": "csrf_key"})).json()
        newest = events["events"][0]
        assert (newest["principal"], newest["method"], newest["outcome"]) == (
            "test-admin",
            PKG + "SecretService/CreateSecret",
            "OK",
        )

        assert error_of(await client.http.post("/auth/signout"))[0] == 403  # CSRF here too
        out = await client.http.post("/auth/signout", headers=client.headers())
        assert out.status_code == 200
        assert not await cvault.sql("SELECT 1 FROM console_sessions")
        replay = httpx.AsyncClient(base_url=console_url(cvault), cookies={"vault_session": value})
        async with replay:
            assert error_of(await replay.get("/api/v1/secrets"))[:2] == (401, "UNAUTHENTICATED")
            assert (await replay.get("/", follow_redirects=False)).status_code == 303
    finally:
        await client.aclose()


async def test_session_expires(make_vault: VaultFactory) -> None:
    # Long enough for sign-in and a first call on a loaded machine; then wait it out.
    vault = await console_vault(make_vault, console_session_ttl=4.0)
    client = SessionClient(vault)
    try:
        signed_in = await client.sign_in(vault.tokens["viewer"])
        assert signed_in.status_code == 200
        assert (await client.http.get("/api/v1/stats")).status_code == 200
        expire = datetime.datetime.fromisoformat(signed_in.json()["expireTime"])
        left = (expire - datetime.datetime.now(datetime.UTC)).total_seconds()
        assert 0 < left <= 4.0
        await asyncio.sleep(left + 0.5)
        assert error_of(await client.http.get("/api/v1/stats"))[:2] == (401, "UNAUTHENTICATED")
        assert (await client.http.get("/", follow_redirects=False)).status_code == 303
    finally:
        await client.aclose()


async def test_revoked_token_ends_the_session_on_every_replica(make_vault: VaultFactory) -> None:
    first = await console_vault(make_vault)
    client = SessionClient(first)
    try:
        assert (await client.sign_in(first.tokens["admin"])).status_code == 200
        # A replica on the same database whose token table no longer holds that admin token.
        tokens = dict(first.tokens, admin="vt_" + "r" * 43)
        second = await console_vault(
            make_vault,
            database_url=first.database_url,
            master_keys=first.master_keys,
            tokens=tokens,
        )
        cookie = client.http.cookies["vault_session"]
        replica = httpx.AsyncClient(base_url=console_url(second), cookies={"vault_session": cookie})
        async with replica:
            assert error_of(await replica.get("/api/v1/stats"))[:2] == (401, "UNAUTHENTICATED")
        # The session row is gone, so the first replica refuses it too.
        assert not await first.sql("SELECT 1 FROM console_sessions")
        assert error_of(await client.http.get("/api/v1/stats"))[0] == 401
    finally:
        await client.aclose()


async def test_configs_endpoints(cvault: VaultHandle) -> None:
    async with bearer_client(cvault) as admin, bearer_client(cvault, "viewer") as viewer:
        put = await admin.put(
            "/api/v1/configs/api_base", json={"value": "https://api.example", "description": "d"}
        )
        assert put.status_code == 200 and put.json()["value"] == "https://api.example"
        assert (await viewer.get("/api/v1/configs/api_base")).json()["value"] == (
            "https://api.example"
        )
        listed = (await viewer.get("/api/v1/configs", params={"keyContains": "BASE"})).json()
        assert [c["key"] for c in listed["configValues"]] == ["api_base"]
        assert listed["totalSize"] == 1
        assert (await admin.delete("/api/v1/configs/api_base")).json() == {}
        assert error_of(await admin.get("/api/v1/configs/api_base"))[:2] == (404, "NOT_FOUND")


async def test_check_endpoint(cvault: VaultHandle) -> None:
    async with bearer_client(cvault) as admin:
        await admin.post("/api/v1/secrets", json={"name": "orders_key", "value": "sv"})
        reply = await admin.post(
            "/api/v1/check",
            json={
                "fields": [
                    {"key": "url", "template": "https://a.example/{{secret:orderskey}}",
                     "encoding": "ENCODING_URL"},
                    {"key": "header:Authorization", "template": "Bearer {{secret:orders_key}}",
                     "encoding": "ENCODING_HEADER"},
                    {"key": "body", "template": "{{secret:broken", "encoding": "ENCODING_RAW"},
                ]
            },
        )  # fmt: skip
        assert reply.status_code == 200, reply.text
        data = reply.json()
        assert data["references"][1]["secretNames"] == ["orders_key"]
        kinds = {(p["fieldKey"], p["kind"]) for p in data["problems"]}
        assert ("url", "PROBLEM_KIND_SECRET_NOT_FOUND") in kinds
        assert any(key == "body" for key, _ in kinds)
        assert "sv" not in reply.text.replace("secretNames", "")


async def test_audit_endpoint_filters_and_pages(cvault: VaultHandle) -> None:
    async with bearer_client(cvault) as admin:
        for i in range(3):
            await admin.post("/api/v1/secrets", json={"name": f"a{i}", "value": "v"})
        page = (await admin.get("/api/v1/audit", params={"pageSize": 2, "secretName": "A1"})).json()
        assert [e["secretNames"] for e in page["events"]] == [["a1"]]
        event = page["events"][0]
        assert event["method"] == PKG + "SecretService/CreateSecret"
        assert event["peer"].startswith("http:127.0.0.1:")
        first = (await admin.get("/api/v1/audit", params={"pageSize": 2})).json()
        assert len(first["events"]) == 2 and first["nextPageToken"]
        second = await admin.get(
            "/api/v1/audit", params={"pageSize": 2, "pageToken": first["nextPageToken"]}
        )
        assert second.status_code == 200 and second.json()["events"]


async def test_openapi_document_is_valid_and_matches_the_routes(cvault: VaultHandle) -> None:
    async with bearer_client(cvault) as admin:
        doc = (await admin.get("/api/v1/openapi.json")).json()
        validate(doc)
        assert set(doc["paths"]) == {
            "/api/v1/secrets",
            "/api/v1/secrets/{name}",
            "/api/v1/stats",
            "/api/v1/configs",
            "/api/v1/configs/{key}",
            "/api/v1/audit",
            "/api/v1/check",
        }
        props = doc["components"]["schemas"]["Secret"]["properties"]
        assert {"name", "description", "createTime", "updateTime", "etag"} <= set(props)
        assert "value" not in props
        for path, methods in doc["paths"].items():
            concrete = path.replace("{name}", "zz_none").replace("{key}", "zz_none")
            for method in methods:
                reply = await admin.request(method.upper(), concrete)
                assert not (
                    reply.status_code == 404 and "no route" in reply.json()["error"]["message"]
                ), (method, path)


async def test_console_values_never_reach_responses_or_logs(
    cvault: VaultHandle, log_capture: LogCapture
) -> None:
    canary = "CANARY-api-7f3a9c"
    async with bearer_client(cvault) as admin:
        replies = [
            await admin.post("/api/v1/secrets", json={"name": "canary", "value": canary}),
            await admin.patch("/api/v1/secrets/canary", json={"value": canary + "-2"}),
            await admin.post("/api/v1/secrets", json={"name": "bad name", "value": canary}),
            await admin.post("/api/v1/secrets", json={"name": "n", "value": canary, "x": canary}),
            await admin.get("/api/v1/secrets"),
            await admin.get("/api/v1/secrets/canary"),
            await admin.get("/api/v1/audit"),
        ]
    for reply in replies:
        assert canary not in reply.text
    assert canary not in log_capture.text()
    assert await resolve(resolver(cvault), "canary") == canary + "-2"


async def test_console_is_off_by_default_and_plaintext_only_on_loopback(
    make_vault: VaultFactory,
) -> None:
    plain = await make_vault()
    assert plain.runtime.console is None
    with pytest.raises(ConfigError, match="plaintext"):
        await make_vault(console_listen="0.0.0.0:0")


async def test_console_uses_the_grpc_tls_settings(make_vault: VaultFactory, tmp_path: Path) -> None:
    ca = Authority("console test CA")
    server = ca.issue("vault-server", server=True)
    (tmp_path / "server.crt").write_bytes(server.cert)
    (tmp_path / "server.key").write_bytes(server.key)
    tls = TLSSettings(cert_file=tmp_path / "server.crt", key_file=tmp_path / "server.key")
    vault = await console_vault(make_vault, tls=tls)
    url = console_url(vault)
    assert url.startswith("https://127.0.0.1:")
    context = ssl.create_default_context(cadata=ca.pem.decode())
    async with httpx.AsyncClient(base_url=url, verify=context, timeout=30) as http:
        reply = await http.post("/auth/session", json={"token": vault.tokens["admin"]})
        assert reply.status_code == 200
        cookie = reply.headers["set-cookie"]
        assert cookie.startswith("__Host-vault_session=") and "Secure" in cookie
        assert "max-age=31536000" in reply.headers["strict-transport-security"]
        assert (await http.get("/api/v1/stats")).status_code == 200
    async with httpx.AsyncClient(base_url=url.replace("https:", "http:"), timeout=10) as plain:
        with pytest.raises(httpx.HTTPError):
            await plain.get("/login")


async def test_database_tokens_sign_in_and_revoking_one_ends_its_session(
    make_vault: VaultFactory,
) -> None:
    """Tokens minted with AccessService work in the console and the JSON API like
    configured ones, and revoking one ends its sessions and its bearer use."""
    vault = await console_vault(make_vault)
    access = tgrpc.AccessServiceStub(vault.channel("admin"))
    created = await access.CreateToken(
        tpb.CreateTokenRequest(principal="db-viewer", role="viewer", description="console")
    )
    client = SessionClient(vault)
    try:
        signed_in = await client.sign_in(created.token)
        assert signed_in.status_code == 200 and signed_in.json()["role"] == "viewer"
        assert (await client.http.get("/api/v1/stats")).status_code == 200
        headers = {"Authorization": f"Bearer {created.token}"}
        async with httpx.AsyncClient(base_url=console_url(vault), headers=headers) as bearer:
            assert (await bearer.get("/api/v1/stats")).status_code == 200
            await access.RevokeToken(tpb.RevokeTokenRequest(id=created.info.id))
            deadline = asyncio.get_running_loop().time() + 5
            while (await bearer.get("/api/v1/stats")).status_code == 200:
                assert asyncio.get_running_loop().time() < deadline, "revocation not seen"
                await asyncio.sleep(0.05)
            assert error_of(await bearer.get("/api/v1/stats"))[:2] == (401, "UNAUTHENTICATED")
        assert error_of(await client.http.get("/api/v1/stats"))[:2] == (401, "UNAUTHENTICATED")
        assert not await vault.sql("SELECT 1 FROM console_sessions")
    finally:
        await client.aclose()
