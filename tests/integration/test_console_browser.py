"""The console in a real browser (Debian's chromium through Playwright) against a real vault:
every flow of the product page, read-only viewers, CSRF, session expiry, the value canary
and escaping of attacker-controlled text. Screenshots land in a temporary directory, and in
docs/screenshots/ only with VAULT_UPDATE_SCREENSHOTS=1 (see tests/support/browser.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import secret_service_pb2 as spb
from playwright.async_api import BrowserContext, Page, expect

from tests.support.browser import BodyRecorder, chromium, pg_dump, shot, sign_in
from tests.support.console import console_url, console_vault
from tests.support.keys import resolve
from tests.support.rpc import resolver, secrets_admin
from tests.support.vault import LogCapture, VaultFactory, VaultHandle
from vaultsvc.storage.embedded import EmbeddedPostgres

pytestmark = pytest.mark.slow
NOTHING = "\u2013"  # what a card shows before it is loaded


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    async with chromium(tmp_path / "profile") as context:
        yield context


@pytest.fixture
async def cvault(make_vault: VaultFactory) -> VaultHandle:
    return await console_vault(make_vault)


async def new_page(browser: BrowserContext) -> Page:
    page = await browser.new_page()
    return page


def row(page: Page, name: str):  # type: ignore[no-untyped-def]
    return page.locator(f'#secrets-body tr[data-name="{name}"]')


async def create_secret(page: Page, name: str, value: str, description: str = "") -> None:
    await page.click("#new-secret")
    await page.fill("#secret-name", name)
    await page.fill("#secret-value", value)
    await page.fill("#secret-description", description)
    await page.click("#secret-save")
    await expect(page.locator("#secret-dialog")).to_be_hidden()
    await expect(row(page, name)).to_be_visible()


async def open_menu(page: Page, name: str, item: str) -> None:
    await row(page, name).locator(".menu-toggle").click()
    await row(page, name).locator(item).click()


async def api_from_page(page: Page, method: str, path: str, body: object, csrf: str | None) -> int:
    """A fetch from inside the signed-in page (same origin, the session cookie attached)."""
    status = await page.evaluate(
        """async ([method, path, body, csrf]) => {
            const headers = {"Content-Type": "application/json"};
            if (csrf !== null) headers["X-CSRF-Token"] = csrf;
            const r = await fetch(path, {method, headers, body: JSON.stringify(body)});
            return r.status;
        }""",
        [method, path, body, csrf],
    )
    return int(status)


async def page_csrf(page: Page) -> str:
    return str(await page.get_attribute('meta[name="csrf-token"]', "content"))


async def test_admin_flows_of_the_product_page(
    browser: BrowserContext, cvault: VaultHandle
) -> None:
    base = console_url(cvault)
    stub = resolver(cvault)
    page = await new_page(browser)
    await sign_in(page, base, cvault.tokens["admin"])
    await expect(page.locator("#principal")).to_have_text("test-admin")
    await expect(page.locator("#stat-total")).to_have_text("0")

    # Create, through the dialog (value in a password field that browsers will not store).
    await page.click("#new-secret")
    value_field = page.locator("#secret-value")
    assert await value_field.get_attribute("type") == "password"
    assert await value_field.get_attribute("autocomplete") == "off"
    assert await page.locator("#secret-dialog form").count() == 0  # no native submission
    await page.fill("#secret-name", "orders_api_key")
    await page.fill("#secret-value", "sk_orders_v1")
    await page.fill("#secret-description", "OpenAI key for the order-tracking tool")
    await shot(page, "new-secret-dialog.png")
    await page.click("#secret-save")
    await expect(row(page, "orders_api_key")).to_be_visible()
    await create_secret(page, "stripe_webhook_secret", "whsec_1", "Stripe webhooks")
    await create_secret(page, "auth_token_3", "tok_3", "legacy CRM")
    await expect(page.locator("#stat-total")).to_have_text("3")
    await expect(page.locator("#stat-updated")).not_to_have_text(NOTHING)
    assert await resolve(stub, "orders_api_key") == "sk_orders_v1"
    await shot(page, "console-secrets.png")

    # Search (debounced) by name, then clear it.
    await page.fill("#search", "STRIPE")
    await expect(page.locator("#secrets-body tr")).to_have_count(1)
    await expect(row(page, "stripe_webhook_secret")).to_be_visible()
    await page.fill("#search", "")
    await expect(page.locator("#secrets-body tr")).to_have_count(3)

    # Refresh shows what another client added.
    await secrets_admin(cvault).CreateSecret(
        spb.CreateSecretRequest(name="added_elsewhere", value="x", description="via gRPC")
    )
    await expect(row(page, "added_elsewhere")).to_have_count(0)
    await page.click("#refresh")
    await expect(row(page, "added_elsewhere")).to_be_visible()
    await expect(page.locator("#stat-total")).to_have_text("4")

    # Edit with a blank value: the old value still resolves; the description changes.
    await open_menu(page, "orders_api_key", ".menu-edit")
    await expect(page.locator("#secret-name")).to_have_value("orders_api_key")
    assert await page.locator("#secret-name").get_attribute("readonly") is not None
    await expect(page.locator("#secret-value")).to_have_value("")
    await page.fill("#secret-description", "orders, rotated quarterly")
    await shot(page, "edit-secret-dialog.png")
    await page.click("#secret-save")
    await expect(row(page, "orders_api_key").locator(".description")).to_have_text(
        "orders, rotated quarterly"
    )
    assert await resolve(stub, "orders_api_key") == "sk_orders_v1"

    # Edit with a new value: the new value resolves.
    await open_menu(page, "orders_api_key", ".menu-edit")
    await page.fill("#secret-value", "sk_orders_v2")
    await page.click("#secret-save")
    await expect(page.locator("#secret-dialog")).to_be_hidden()
    assert await resolve(stub, "orders_api_key") == "sk_orders_v2"

    # Copy button for the placeholder.
    await browser.grant_permissions(["clipboard-read", "clipboard-write"], origin=base.rstrip("/"))
    await row(page, "orders_api_key").locator(".copy").click()
    await expect(page.locator("#toast")).to_have_text("Copied {{secret:orders_api_key}}")
    assert await page.evaluate("navigator.clipboard.readText()") == "{{secret:orders_api_key}}"

    # Delete: only after typing the exact name.
    await open_menu(page, "auth_token_3", ".menu-delete")
    ok = page.locator("#delete-ok")
    await expect(ok).to_be_disabled()
    await page.fill("#delete-confirm", "auth_token")
    await expect(ok).to_be_disabled()
    await page.fill("#delete-confirm", "auth_token_3")
    await expect(ok).to_be_enabled()
    await shot(page, "delete-secret-dialog.png")
    await ok.click()
    await expect(row(page, "auth_token_3")).to_have_count(0)
    await expect(page.locator("#stat-total")).to_have_text("3")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await secrets_admin(cvault).GetSecret(spb.GetSecretRequest(name="auth_token_3"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    # Config values tab (readable), template checker and audit tab.
    await page.click("#tab-configs")
    await page.click("#new-config")
    await page.fill("#config-key", "orders_base")
    await page.fill("#config-value", "https://orders.example")
    await page.click("#config-save")
    await expect(page.locator('#configs-body tr[data-key="orders_base"]')).to_contain_text(
        "https://orders.example"
    )
    await page.click("#tab-checker")
    await page.fill("#check-url", "{{config:orders_base}}/v1/{{input.id}}?key={{secret:orderskey}}")
    await page.fill("#check-headers", "Authorization: Bearer {{secret:orders_api_key}}")
    await page.click("#check-run")
    await expect(page.locator("#check-problems")).to_contain_text("orderskey")
    await expect(page.locator("#check-references")).to_contain_text("orders_api_key")
    await shot(page, "template-checker.png", full_page=True)
    await page.click("#tab-audit")
    await expect(page.locator("#audit-body")).to_contain_text(
        "/interakt.vault.v1.SecretService/DeleteSecret"
    )
    await shot(page, "audit.png")

    # Sign out ends the session.
    await page.click("#sign-out")
    await page.wait_for_url(base + "login")
    await page.goto(base)
    await page.wait_for_url(base + "login")


async def test_deleting_a_secret_in_use_shows_who_uses_it_then_deletes_anyway(
    browser: BrowserContext, cvault: VaultHandle
) -> None:
    await secrets_admin(cvault).CreateSecret(spb.CreateSecretRequest(name="busy", value="b-1"))
    await secrets_admin(cvault).CreateSecret(spb.CreateSecretRequest(name="idle", value="i-1"))
    assert await resolve(resolver(cvault), "busy") == "b-1"
    page = await new_page(browser)
    await sign_in(page, console_url(cvault), cvault.tokens["admin"])
    await expect(page.locator("#usage-header")).to_be_visible()
    await expect(row(page, "idle").locator("td").nth(4)).to_have_text("never")
    await expect(row(page, "busy").locator("td").nth(4)).not_to_have_text("never")

    await open_menu(page, "busy", ".menu-delete")
    await expect(page.locator("#delete-usage")).to_contain_text("In use: last resolved")
    await page.fill("#delete-confirm", "busy")
    ok = page.locator("#delete-ok")
    await ok.click()
    # Refused by the delete guard, naming the tool; the button now deletes anyway.
    await expect(page.locator("#delete-error")).to_contain_text("is in use")
    await expect(page.locator("#delete-error")).to_contain_text("test-keys")
    await expect(ok).to_have_text("Delete anyway")
    await expect(row(page, "busy")).to_have_count(1)
    await ok.click()
    await expect(row(page, "busy")).to_have_count(0)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await secrets_admin(cvault).GetSecret(spb.GetSecretRequest(name="busy"))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_validation_errors_are_shown_next_to_the_field(
    browser: BrowserContext, cvault: VaultHandle
) -> None:
    page = await new_page(browser)
    await sign_in(page, console_url(cvault), cvault.tokens["admin"])
    await create_secret(page, "Stripe_Key", "sk_1")

    await page.click("#new-secret")
    await page.fill("#secret-name", "bad name")
    await page.fill("#secret-value", "typed-value")
    await page.click("#secret-save")
    name_error = page.locator("#secret-name-error")
    await expect(name_error).to_be_visible()
    await expect(name_error).to_contain_text("name")
    await expect(page.locator("#secret-value")).to_have_value("")  # never refilled
    await expect(page.locator("#secret-value-error")).to_contain_text("paste it again")
    await shot(page, "validation-error.png")

    await page.fill("#secret-name", "stripe_key")
    await page.fill("#secret-value", "typed-value")
    await page.click("#secret-save")
    await expect(name_error).to_contain_text("already exists")
    await expect(name_error).to_contain_text("ignoring case")

    await page.fill("#secret-name", "long_description")
    await page.fill("#secret-value", "typed-value")
    await page.fill("#secret-description", "d" * 1025)
    await expect(page.locator("#secret-description-count")).to_have_text("1025")
    await page.click("#secret-save")
    await expect(page.locator("#secret-description-error")).to_contain_text("1024")
    await expect(name_error).to_be_hidden()

    await page.click("#secret-cancel")
    await page.click("#refresh")
    await expect(page.locator("#secrets-body tr")).to_have_count(1)
    await expect(page.locator("#stat-total")).to_have_text("1")


async def test_viewer_sees_everything_and_changes_nothing(
    browser: BrowserContext, cvault: VaultHandle
) -> None:
    await secrets_admin(cvault).CreateSecret(
        spb.CreateSecretRequest(name="orders_api_key", value="v", description="orders")
    )
    page = await new_page(browser)
    await sign_in(page, console_url(cvault), cvault.tokens["viewer"])
    await expect(row(page, "orders_api_key")).to_be_visible()
    await expect(page.locator("#stat-total")).to_have_text("1")
    for hidden in ("#new-secret", ".menu-toggle", "#tab-audit", "#secret-dialog", "#new-config"):
        assert await page.locator(hidden).count() == 0, hidden
    await expect(row(page, "orders_api_key").locator(".copy")).to_be_visible()
    await shot(page, "viewer.png")

    csrf = await page_csrf(page)
    body = {"name": "viewer_made", "value": "v"}
    assert await api_from_page(page, "POST", "/api/v1/secrets", body, csrf) == 403
    assert await api_from_page(page, "PATCH", "/api/v1/secrets/orders_api_key", {}, csrf) == 403
    assert await api_from_page(page, "DELETE", "/api/v1/secrets/orders_api_key", {}, csrf) == 403
    assert await api_from_page(page, "PUT", "/api/v1/configs/k", {"value": "1"}, csrf) == 403
    listed = await secrets_admin(cvault).ListSecrets(spb.ListSecretsRequest())
    assert [s.name for s in listed.secrets] == ["orders_api_key"]
    assert listed.secrets[0].description == "orders"


async def test_resolver_token_cannot_sign_in(browser: BrowserContext, cvault: VaultHandle) -> None:
    base = console_url(cvault)
    page = await new_page(browser)
    await page.goto(base + "login")
    await page.fill("#token", cvault.tokens["resolver"])
    await page.click("#sign-in")
    await expect(page.locator("#token-error")).to_contain_text("admin and viewer")
    await expect(page.locator("#token")).to_have_value("")
    assert not await browser.cookies()


async def test_csrf_is_required_for_changes(browser: BrowserContext, cvault: VaultHandle) -> None:
    page = await new_page(browser)
    await sign_in(page, console_url(cvault), cvault.tokens["admin"])
    body = {"name": "csrf_probe", "value": "v"}
    assert await api_from_page(page, "POST", "/api/v1/secrets", body, None) == 403
    assert await api_from_page(page, "POST", "/api/v1/secrets", body, "forged") == 403
    assert not (await secrets_admin(cvault).ListSecrets(spb.ListSecretsRequest())).secrets
    assert await api_from_page(page, "POST", "/api/v1/secrets", body, await page_csrf(page)) == 200
    cookie = next(c for c in await browser.cookies() if c["name"] == "vault_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert await page.evaluate("document.cookie") == ""


async def test_session_expiry_sends_the_user_back_to_sign_in(
    browser: BrowserContext, make_vault: VaultFactory
) -> None:
    vault = await console_vault(make_vault, console_session_ttl=2.0)
    base = console_url(vault)
    page = await new_page(browser)
    await sign_in(page, base, vault.tokens["admin"])
    await page.wait_for_timeout(2500)
    await page.click("#refresh")
    await page.wait_for_url(base + "login?ended=1")
    await expect(page.locator("#session-ended")).to_be_visible()


async def test_canary_value_is_nowhere_but_in_the_vault(
    browser: BrowserContext,
    cvault: VaultHandle,
    pg: EmbeddedPostgres,
    log_capture: LogCapture,
) -> None:
    created = "CANARY-created-5b1e0c"
    edited = "CANARY-edited-9d7f2a"
    refused = "CANARY-refused-3c8e41"
    page = await new_page(browser)
    recorder = BodyRecorder(page)
    await sign_in(page, console_url(cvault), cvault.tokens["admin"])
    await create_secret(page, "canary_key", created, "canary")
    await page.click("#new-secret")
    await page.fill("#secret-name", "bad name")
    await page.fill("#secret-value", refused)
    await page.click("#secret-save")
    await expect(page.locator("#secret-name-error")).to_be_visible()
    await page.click("#secret-cancel")
    await open_menu(page, "canary_key", ".menu-edit")
    await page.fill("#secret-value", edited)
    await page.click("#secret-save")
    await expect(page.locator("#secret-dialog")).to_be_hidden()
    for tab in ("#tab-configs", "#tab-audit", "#tab-checker", "#tab-secrets"):
        await page.click(tab)
    await page.click("#refresh")
    await expect(row(page, "canary_key")).to_be_visible()
    assert await resolve(resolver(cvault), "canary_key") == edited

    places: dict[str, str] = {}
    for url, body in await recorder.settled():
        places[f"response {url}"] = body.decode("utf-8", "replace")
    places["DOM"] = await page.content()
    places["input values"] = json.dumps(
        await page.evaluate("[...document.querySelectorAll('input, textarea')].map(e => e.value)")
    )
    places["cookies"] = json.dumps(await browser.cookies())
    places["storage"] = str(
        await page.evaluate("JSON.stringify([{...localStorage}, {...sessionStorage}])")
    )
    places["server log"] = log_capture.text()
    places["database dump"] = (await pg_dump(pg, cvault.database_url)).decode("utf-8", "replace")
    assert len(places) > 8
    for where, text in places.items():
        for canary in (created, edited, refused):
            assert canary not in text, f"{canary} found in {where}"


XSS_SCRIPT = "<script>window.__xss = 'script'</script>"
XSS_IMG = "\"><img src=x onerror=\"window.__xss='img'; alert('xss')\">"
# Tool ids are limited to ^[A-Za-z0-9][A-Za-z0-9._:/-]{0,255}$ (no markup can get through
# them): the payloads travel in descriptions and config values; the audit tab is checked to
# show valid tool ids as plain text.
XSS_TOOLS = ("xss-img/tool:1.0", "xss-script/tool:2.0")


async def test_attacker_text_is_shown_as_text_and_never_runs(
    browser: BrowserContext, cvault: VaultHandle
) -> None:
    admin = secrets_admin(cvault)
    await admin.CreateSecret(
        spb.CreateSecretRequest(name="xss_script", value="v", description=XSS_SCRIPT)
    )
    await admin.CreateSecret(
        spb.CreateSecretRequest(name="xss_img", value="v", description=XSS_IMG)
    )
    field = rpb.TemplateField(key="body", template="{{secret:xss_img}}")
    await resolver(cvault).ResolveTemplate(
        rpb.ResolveTemplateRequest(fields=[field], tool=XSS_TOOLS[0])
    )
    await resolver(cvault).ResolveTemplate(
        rpb.ResolveTemplateRequest(fields=[field], tool=XSS_TOOLS[1])
    )

    page = await new_page(browser)
    dialogs: list[str] = []
    page.on("dialog", lambda d: dialogs.append(d.message))
    await sign_in(page, console_url(cvault), cvault.tokens["admin"])
    await page.evaluate("() => { window.__xss = undefined; }")

    await expect(row(page, "xss_script").locator(".description")).to_have_text(XSS_SCRIPT)
    await expect(row(page, "xss_img").locator(".description")).to_have_text(XSS_IMG)
    await open_menu(page, "xss_img", ".menu-edit")
    await expect(page.locator("#secret-description")).to_have_value(XSS_IMG)
    await page.click("#secret-cancel")
    await page.fill("#search", "xss")
    await expect(page.locator("#secrets-body tr")).to_have_count(2)

    await page.click("#tab-configs")
    await page.click("#new-config")
    await page.fill("#config-key", "xss_config")
    await page.fill("#config-value", XSS_IMG)
    await page.fill("#config-description", XSS_SCRIPT)
    await page.click("#config-save")
    config_row = page.locator('#configs-body tr[data-key="xss_config"]')
    await expect(config_row).to_contain_text(XSS_IMG)
    await expect(config_row).to_contain_text(XSS_SCRIPT)

    await page.click("#tab-audit")
    tools = page.locator("#audit-body td.tool")
    for tool in XSS_TOOLS:
        await expect(tools.filter(has_text=tool)).to_have_count(1)

    await page.click("#tab-checker")
    await page.fill("#check-body", '{"a": "{{secret:<img src=x onerror=alert(1)>}}"}')
    await page.click("#check-run")
    await expect(page.locator("#check-problems")).to_contain_text("<img src=x onerror=alert(1)>")

    assert await page.evaluate("window.__xss") is None
    assert await page.locator("#secrets-body img, #configs-body img, #audit-body img").count() == 0
    assert await page.locator("main script, #check-result img").count() == 0
    assert dialogs == []
