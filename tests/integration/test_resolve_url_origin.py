"""ENCODING_URL origin (tightened) through the real ResolveTemplate and CheckTemplate RPCs.

The four attacks from the hardening issue put a secret into a URL's host as WHATWG
parsers read it; each is refused, and the secret's value reaches neither the reply,
the error, nor the logs. A whole-origin or whole-host config of the wrong shape is
INVALID_ARGUMENT ``INVALID_URL_ORIGIN``.
"""

from __future__ import annotations

import grpc
import pytest
from interakt.vault.v1 import resolver_service_pb2 as rpb

from tests.support.resolve import HEADER, URL, put_configs, put_secrets, request, resolve
from tests.support.rpc import expect_error, resolver
from tests.support.vault import LogCapture, VaultHandle

SECRET_VALUE = "zq9secretvalue"
CONFIGS = {
    "scheme": "https:",
    "empty": "",
    "proto": "https",
    "base": "https://api.example.com",
    "host": "api.example.com:8443",
    "bad_base": "https:",
    "bad_host": "user@evil.com",
}
ATTACKS = [
    "{{config:scheme}}//{{secret:x}}.evil.com/x",
    "{{config:empty}}https:/\\{{secret:x}}.evil.com",
    "{{config:proto}}:/\\{{secret:x}}.evil.com/x",
    "{{config:empty}}//{{secret:x}}.evil.com/x",
]


async def stock(vault: VaultHandle) -> None:
    await put_secrets(vault, {"x": SECRET_VALUE})
    await put_configs(vault, CONFIGS)


@pytest.mark.parametrize("template", ATTACKS)
async def test_the_four_attacks_are_refused(
    vault: VaultHandle, log_capture: LogCapture, template: str
) -> None:
    await stock(vault)
    message, info = await expect_error(
        resolver(vault).ResolveTemplate(request([("url", template, URL)]), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert info.reason in ("PLACEHOLDER_NOT_ALLOWED", "INVALID_TEMPLATE")
    assert message.startswith("url: ")
    assert SECRET_VALUE not in message
    assert SECRET_VALUE not in log_capture.text()

    field = rpb.TemplateField(key="url", template=template, encoding=URL)  # type: ignore[arg-type]
    response = await resolver(vault).CheckTemplate(
        rpb.CheckTemplateRequest(fields=[field]), timeout=30
    )
    assert response.problems, "CheckTemplate reports the origin problem"
    assert all(p.kind == rpb.PROBLEM_KIND_INVALID_FOR_ENCODING for p in response.problems)


@pytest.mark.parametrize(
    "template",
    ["{{config:bad_base}}/{{secret:x}}.evil.com", "https://{{config:bad_host}}/{{secret:x}}"],
)
async def test_origin_configs_of_the_wrong_shape_are_invalid_url_origin(
    vault: VaultHandle, template: str
) -> None:
    await stock(vault)
    message, _ = await expect_error(
        resolver(vault).ResolveTemplate(request([("url", template, URL)]), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_URL_ORIGIN",
    )
    assert "{{config:bad_" in message
    assert SECRET_VALUE not in message and "evil.com" not in message


async def test_whole_origin_and_whole_host_configs_resolve(vault: VaultHandle) -> None:
    await stock(vault)
    out = await resolve(
        resolver(vault),
        [
            ("a", "{{config:base}}/v1/{{input.id}}?k={{secret:x}}", URL),
            ("b", "https://{{config:host}}/v1\\{{input.id}}", URL),
            ("h", "Bearer {{secret:x}}", HEADER),
        ],
        {"id": "a/b"},
    )
    assert out == [
        ("a", f"https://api.example.com/v1/a%2Fb?k={SECRET_VALUE}"),
        ("b", "https://api.example.com:8443/v1\\a%2Fb"),
        ("h", f"Bearer {SECRET_VALUE}"),
    ]


async def test_backslash_does_not_bypass_the_dot_segment_check(vault: VaultHandle) -> None:
    await stock(vault)
    await expect_error(
        resolver(vault).ResolveTemplate(
            request([("url", "https://api.example.com/a\\{{input.id}}\\b", URL)], {"id": ".."}),
            timeout=30,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_URL_VALUE",
    )


async def test_header_values_with_other_control_characters_are_refused(vault: VaultHandle) -> None:
    await put_secrets(vault, {"x": "sk\x0bvalue", "y": "sk\u2028value"})
    for name in ("x", "y"):
        await expect_error(
            resolver(vault).ResolveTemplate(
                request([("h", "Bearer {{secret:" + name + "}}", HEADER)]), timeout=30
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_HEADER_VALUE",
        )
