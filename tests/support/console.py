"""Helpers for the console: a vault with its console on port 0, and an httpx client that
signs in like the page does (cookie + the CSRF token from the page's meta tag)."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.support.vault import VaultFactory, VaultHandle

CONSOLE_ON = {"console_listen": "127.0.0.1:0"}
_CSRF = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


async def console_vault(make_vault: VaultFactory, **overrides: Any) -> VaultHandle:
    return await make_vault(**{**CONSOLE_ON, **overrides})


def console_url(vault: VaultHandle) -> str:
    assert vault.runtime.console is not None
    return vault.runtime.console.url


def bearer_client(vault: VaultHandle, role: str | None = "admin") -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {vault.tokens[role]}"} if role else {}
    return httpx.AsyncClient(base_url=console_url(vault), headers=headers, timeout=30)


class SessionClient:
    """A signed-in browser-like client: the session cookie and the page's CSRF token."""

    def __init__(self, vault: VaultHandle) -> None:
        self.http = httpx.AsyncClient(base_url=console_url(vault), timeout=30)
        self.csrf = ""

    async def sign_in(self, token: str) -> httpx.Response:
        reply = await self.http.post("/auth/session", json={"token": token})
        if reply.status_code == 200:
            page = await self.http.get("/")
            assert page.status_code == 200, page.text
            match = _CSRF.search(page.text)
            assert match is not None
            self.csrf = match.group(1)
        return reply

    def headers(self, csrf: str | None = None) -> dict[str, str]:
        return {"X-CSRF-Token": self.csrf if csrf is None else csrf}

    async def aclose(self) -> None:
        await self.http.aclose()


def error_of(reply: httpx.Response) -> tuple[int, str, str]:
    """(HTTP status, gRPC status name, ErrorInfo reason) of an AIP-193 error reply."""
    data = reply.json()
    assert "error" in data, (reply.request.method, str(reply.url), reply.status_code, reply.text)
    body = data["error"]
    assert body["code"] == reply.status_code
    assert isinstance(body["message"], str) and body["message"]
    (detail,) = body["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert detail["domain"] == "vault.interakt"
    return reply.status_code, body["status"], detail["reason"]
