"""ResolveTemplate over a real server, a real channel and the real embedded Postgres.

Covers the seed documentation's three examples, fail-closed errors, per-encoding
rules, single-pass substitution, case-insensitive names and field order. The helpers
live in ``tests.support.resolve``.
"""

from __future__ import annotations

import json
import urllib.parse

import grpc
import pytest
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import secret_service_pb2 as spb

from tests.support.resolve import (
    FORM,
    HEADER,
    HEADER_SAFE,
    JSON,
    RAW,
    TRICKY,
    URL,
    FetchSpy,
    FieldSpec,
    put_configs,
    put_secrets,
    request,
    resolve,
    resolve_events,
)
from tests.support.rpc import expect_error, resolver, secrets_admin
from tests.support.vault import VaultHandle

# ----------------------------------------------------------- the seed's examples


async def test_seed_examples_resolve_exactly(vault: VaultHandle) -> None:
    """The URL, header and body examples of the docs, one request like one tool call."""
    await put_secrets(vault, {"orders_api_key": HEADER_SAFE})
    order_id = 'A-17 "rush"\n\\'
    out = await resolve(
        resolver(vault),
        [
            ("url", "https://api.example.com/orders?key={{secret:orders_api_key}}", URL),
            ("header:Authorization", "Bearer {{secret:orders_api_key}}", HEADER),
            (
                "body",
                '{ "api_key": "{{secret:orders_api_key}}", "order_id": "{{input.order_id}}" }',
                JSON,
            ),
        ],
        {"order_id": order_id},
    )
    assert [k for k, _ in out] == ["url", "header:Authorization", "body"]
    url = out[0][1]
    assert url == "https://api.example.com/orders?key=" + urllib.parse.quote(HEADER_SAFE, safe="")
    parsed = urllib.parse.urlsplit(url)
    assert parsed.hostname == "api.example.com"
    assert parsed.fragment == ""
    assert urllib.parse.parse_qs(parsed.query, strict_parsing=True) == {"key": [HEADER_SAFE]}
    assert out[1][1] == "Bearer " + HEADER_SAFE
    assert json.loads(out[2][1]) == {"api_key": HEADER_SAFE, "order_id": order_id}


async def test_seed_json_body_with_quotes_backslashes_newlines(vault: VaultHandle) -> None:
    await put_secrets(vault, {"orders_api_key": TRICKY})
    order_id = '\u0000 "}\n{'
    (out,) = await resolve(
        resolver(vault),
        [
            (
                "body",
                '{ "api_key": "{{secret:orders_api_key}}", "order_id": "{{input.order_id}}" }',
                JSON,
            )
        ],
        {"order_id": order_id},
    )
    assert json.loads(out[1]) == {"api_key": TRICKY, "order_id": order_id}
    # A URL field gets the same value percent-encoded, so it cannot add a parameter.
    (url,) = await resolve(
        resolver(vault),
        [("url", "https://api.example.com/orders?key={{secret:orders_api_key}}", URL)],
    )
    query = urllib.parse.urlsplit(url[1]).query
    assert urllib.parse.parse_qs(query, strict_parsing=True) == {"key": [TRICKY]}


async def test_url_value_is_percent_encoded_everything_but_unreserved(vault: VaultHandle) -> None:
    value = "a b/c?d=e&f#g%h+i~j-k_l.m"
    await put_secrets(vault, {"k": value})
    (out,) = await resolve(resolver(vault), [("u", "https://h.example/p/{{secret:k}}?q=1", URL)])
    assert out[1] == "https://h.example/p/a%20b%2Fc%3Fd%3De%26f%23g%25h%2Bi~j-k_l.m?q=1"


async def test_form_encoding_round_trips(vault: VaultHandle) -> None:
    await put_secrets(vault, {"form_secret": TRICKY})
    (out,) = await resolve(
        resolver(vault),
        [("form", "grant=client&secret={{secret:form_secret}}&who={{input.who}}", FORM)],
        {"who": "a b&c=d"},
    )
    assert urllib.parse.parse_qs(out[1], strict_parsing=True) == {
        "grant": ["client"],
        "secret": [TRICKY],
        "who": ["a b&c=d"],
    }


async def test_raw_and_unspecified_are_verbatim(vault: VaultHandle) -> None:
    await put_secrets(vault, {"raw_one": TRICKY})
    out = await resolve(
        resolver(vault),
        [
            ("raw", "<{{secret:raw_one}}>", RAW),
            ("unspecified", "[{{ secret:raw_one }}]", rpb.ENCODING_UNSPECIFIED),
        ],
    )
    assert out == [("raw", f"<{TRICKY}>"), ("unspecified", f"[{TRICKY}]")]


async def test_template_without_placeholders_and_other_braces_are_literal(
    vault: VaultHandle,
) -> None:
    out = await resolve(
        resolver(vault),
        [("plain", "no placeholders {{here}} {{ other:thing }} {{input}}", RAW)],
    )
    assert out == [("plain", "no placeholders {{here}} {{ other:thing }} {{input}}")]


# ----------------------------------------------------------------- fail closed


async def test_every_missing_secret_in_one_not_found(vault: VaultHandle) -> None:
    await put_secrets(vault, {"present": "present-value-123"})
    stub = resolver(vault)
    message, info = await expect_error(
        stub.ResolveTemplate(
            request(
                [
                    ("a", "{{secret:present}}-{{secret:b_missing}}", RAW),
                    ("b", "{{secret:a_missing}} {{secret:b_missing}}", HEADER),
                ]
            )
        ),
        grpc.StatusCode.NOT_FOUND,
        "SECRET_NOT_FOUND",
    )
    assert message == "secret not found: a_missing, b_missing"
    assert "present-value-123" not in message
    assert "present-value-123" not in str(info)


async def test_missing_config_is_not_found(vault: VaultHandle) -> None:
    await put_secrets(vault, {"s": "v"})
    message, _ = await expect_error(
        resolver(vault).ResolveTemplate(request([("u", "{{secret:s}}{{config:nope}}", RAW)])),
        grpc.StatusCode.NOT_FOUND,
        "CONFIG_NOT_FOUND",
    )
    assert "nope" in message


async def test_missing_input_is_invalid_argument(vault: VaultHandle) -> None:
    message, _ = await expect_error(
        resolver(vault).ResolveTemplate(
            request([("b", "{{input.order_id}} {{input.other}}", RAW)], {"other": "x"})
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INPUT_MISSING",
    )
    assert "order_id" in message


@pytest.mark.parametrize(
    "template",
    [
        "Bearer {{secret:}}",
        "Bearer {{secret:orders key}}",
        "Bearer {{secret:orders_api_key}",
        "Bearer {{secret:orders_api_key",
        "Bearer {{input.}}",
        "Bearer {{config:1bad}}",
        "Bearer {{secret:a/b}}",
    ],
)
async def test_malformed_placeholder_names_field_and_placeholder(
    vault: VaultHandle, template: str
) -> None:
    await put_secrets(vault, {"orders_api_key": "never-shown-42"})
    message, info = await expect_error(
        resolver(vault).ResolveTemplate(request([("header:X-Token", template, HEADER)])),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "header:X-Token" in message
    assert info.reason == "MALFORMED_PLACEHOLDER"
    assert info.metadata["field"] == "header:X-Token"
    assert info.metadata["placeholder"]
    assert info.metadata["placeholder"] in template
    assert "never-shown-42" not in message


@pytest.mark.parametrize(
    "template",
    [
        "https://{{secret:host_secret}}/v1",
        "https://api.{{secret:host_secret}}.example.com/v1",
        "https://{{input.host}}/v1",
        "https://example.com:{{input.port}}/v1",
        "{{secret:host_secret}}://example.com/",
    ],
)
async def test_secret_or_input_in_url_authority_is_refused(
    vault: VaultHandle, template: str
) -> None:
    await put_secrets(vault, {"host_secret": "evil.example.net"})
    message, _ = await expect_error(
        resolver(vault).ResolveTemplate(
            request([("url", template, URL)], {"host": "evil.example.net", "port": "1"})
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "evil.example.net" not in message


async def test_url_value_cannot_add_a_parameter_or_change_the_host(vault: VaultHandle) -> None:
    (out,) = await resolve(
        resolver(vault),
        [("url", "https://api.example.com/o/{{input.id}}?k={{input.k}}#{{input.f}}", URL)],
        {"id": "../../@evil.net/x", "k": "1&admin=true", "f": "a#b"},
    )
    parsed = urllib.parse.urlsplit(out[1])
    assert parsed.hostname == "api.example.com"
    assert urllib.parse.parse_qs(parsed.query) == {"k": ["1&admin=true"]}
    assert parsed.path == "/o/..%2F..%2F%40evil.net%2Fx"
    assert urllib.parse.unquote(parsed.fragment) == "a#b"


@pytest.mark.parametrize("bad", ["\r\n", "\n", "\r", "\x00"])
async def test_header_value_with_cr_lf_nul_is_refused_without_the_value(
    vault: VaultHandle, bad: str
) -> None:
    value = f"TOKEN-SHOULD-NOT-LEAK{bad}X-Evil: 1"
    await put_secrets(vault, {"hdr": value})
    message, info = await expect_error(
        resolver(vault).ResolveTemplate(
            request(
                [("ok", "fine", RAW), ("header:Authorization", "Bearer {{secret:hdr}}", HEADER)]
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_HEADER_VALUE",
    )
    assert "{{secret:hdr}}" in message
    assert "header:Authorization" in message
    assert "TOKEN-SHOULD-NOT-LEAK" not in message
    assert all("TOKEN-SHOULD-NOT-LEAK" not in v for v in info.metadata.values())


async def test_header_input_with_newline_is_refused(vault: VaultHandle) -> None:
    message, _ = await expect_error(
        resolver(vault).ResolveTemplate(
            request([("header:X-Id", "{{input.id}}", HEADER)], {"id": "1\r\nX-Admin: yes"})
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_HEADER_VALUE",
    )
    assert "{{input.id}}" in message
    assert "X-Admin" not in message


@pytest.mark.parametrize(
    "template",
    [
        '{"api_key": {{secret:j}}}',
        '{"n": 1, {{secret:j}}: "x"}',
        "[{{secret:j}}]",
        '{"a": "x"} {{secret:j}}',
    ],
)
async def test_json_placeholder_outside_a_string_is_refused(
    vault: VaultHandle, template: str
) -> None:
    await put_secrets(vault, {"j": "json-secret-value"})
    message, _ = await expect_error(
        resolver(vault).ResolveTemplate(request([("body", template, JSON)])),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "body" in message
    assert "json-secret-value" not in message


async def test_errors_render_nothing_partially(vault: VaultHandle) -> None:
    """One bad field fails the whole request: no response fields at all."""
    await put_secrets(vault, {"good": "good-value"})
    stub = resolver(vault)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ResolveTemplate(
            request([("first", "{{secret:good}}", RAW), ("second", "{{secret:absent}}", RAW)])
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "good-value" not in (info.value.details() or "")
    assert "good-value" not in str(info.value.trailing_metadata())


# ------------------------------------------------------------------ single pass


async def test_input_holding_a_placeholder_comes_back_literally(vault: VaultHandle) -> None:
    await put_secrets(vault, {"stripe_key": "sk_stripe_SHOULD_NOT_APPEAR", "other": "o"})
    spy = FetchSpy(vault)
    out = await resolve(
        resolver(vault),
        [
            ("raw", "x={{input.x}} o={{secret:other}}", RAW),
            ("json", '{"x": "{{input.x}}"}', JSON),
            ("header", "{{input.x}}", HEADER),
        ],
        {"x": "{{secret:stripe_key}}"},
        tool="single-pass-tool",
    )
    assert out == [
        ("raw", "x={{secret:stripe_key}} o=o"),
        ("json", '{"x": "{{secret:stripe_key}}"}'),
        ("header", "{{secret:stripe_key}}"),
    ]
    assert spy.secret_names == [["other"]]
    (event,) = await resolve_events(vault, 1)
    assert list(event.secret_names) == ["other"]
    assert event.tool == "single-pass-tool"
    assert event.outcome == "OK"


async def test_secret_value_holding_a_placeholder_is_not_expanded(vault: VaultHandle) -> None:
    await put_secrets(
        vault,
        {"nested": "pre {{input.x}} {{secret:target}} {{config:c}} post", "target": "TARGET"},
    )
    out = await resolve(
        resolver(vault), [("raw", "[{{secret:nested}}]", RAW)], {"x": "INPUT-EXPANDED"}
    )
    assert out == [("raw", "[pre {{input.x}} {{secret:target}} {{config:c}} post]")]


async def test_input_value_with_placeholder_does_not_trigger_missing_errors(
    vault: VaultHandle,
) -> None:
    out = await resolve(
        resolver(vault), [("f", "{{input.a}}", RAW)], {"a": "{{secret:does_not_exist}}"}
    )
    assert out == [("f", "{{secret:does_not_exist}}")]


# ---------------------------------------------------------- names, order, reuse


async def test_secret_names_ignore_case(vault: VaultHandle) -> None:
    await put_secrets(vault, {"orders_api_key": "case-value"})
    out = await resolve(
        resolver(vault),
        [
            ("a", "{{secret:ORDERS_API_KEY}}", RAW),
            ("b", "{{ secret:Orders_Api_Key }}", RAW),
            ("c", "{{secret:orders_api_key}}", RAW),
        ],
    )
    assert out == [("a", "case-value"), ("b", "case-value"), ("c", "case-value")]


async def test_config_keys_ignore_case(vault: VaultHandle) -> None:
    await put_configs(vault, {"Api_Host": "api.example.com"})
    out = await resolve(resolver(vault), [("a", "{{config:API_HOST}}|{{config:api_host}}", RAW)])
    assert out == [("a", "api.example.com|api.example.com")]


async def test_fields_come_back_in_request_order_with_duplicates(vault: VaultHandle) -> None:
    await put_secrets(vault, {"dup": "D"})
    keys = ["z", "a", "m", "a", "b", "header:Z", "0"]
    fields: list[FieldSpec] = [(k, f"{i}:{{{{secret:dup}}}}", RAW) for i, k in enumerate(keys)]
    out = await resolve(resolver(vault), fields)
    assert out == [(k, f"{i}:D") for i, k in enumerate(keys)]


async def test_same_secret_many_times_across_fields(vault: VaultHandle) -> None:
    await put_secrets(vault, {"many": "M&M"})
    template = "{{secret:many}}" * 10
    out = await resolve(
        resolver(vault),
        [("raw", template, RAW), ("url", "https://h.example/?a=" + template, URL)],
    )
    assert out[0] == ("raw", "M&M" * 10)
    assert out[1] == ("url", "https://h.example/?a=" + "M%26M" * 10)


async def test_config_allowed_verbatim_in_url_host(vault: VaultHandle) -> None:
    await put_configs(vault, {"api_host": "api.example.com:8443"})
    await put_secrets(vault, {"x": "a/b c"})
    (out,) = await resolve(
        resolver(vault), [("url", "https://{{config:api_host}}/v1?k={{secret:x}}", URL)]
    )
    assert out == ("url", "https://api.example.com:8443/v1?k=a%2Fb%20c")


async def test_updated_secret_is_seen_by_the_next_resolve(vault: VaultHandle) -> None:
    await put_secrets(vault, {"rot": "old-value"})
    stub = resolver(vault)
    assert await resolve(stub, [("f", "{{secret:rot}}", RAW)]) == [("f", "old-value")]
    await secrets_admin(vault).UpdateSecret(spb.UpdateSecretRequest(name="rot", value="new-value"))
    assert await resolve(stub, [("f", "{{secret:rot}}", RAW)]) == [("f", "new-value")]
    await secrets_admin(vault).DeleteSecret(spb.DeleteSecretRequest(name="rot", force=True))
    await expect_error(
        stub.ResolveTemplate(request([("f", "{{secret:rot}}", RAW)])),
        grpc.StatusCode.NOT_FOUND,
        "SECRET_DELETED",
    )
    await secrets_admin(vault).DeleteSecret(spb.DeleteSecretRequest(name="rot", purge=True))
    await expect_error(
        stub.ResolveTemplate(request([("f", "{{secret:rot}}", RAW)])),
        grpc.StatusCode.NOT_FOUND,
        "SECRET_NOT_FOUND",
    )


async def test_no_fields_is_invalid_argument(vault: VaultHandle) -> None:
    await expect_error(
        resolver(vault).ResolveTemplate(rpb.ResolveTemplateRequest(tool="t")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_unknown_encoding_is_invalid_argument(vault: VaultHandle) -> None:
    await expect_error(
        resolver(vault).ResolveTemplate(request([("f", "x", 99)])),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


# ------------------------------------------------------------------------- roles


@pytest.mark.parametrize(
    ("role", "code"),
    [
        ("admin", grpc.StatusCode.PERMISSION_DENIED),
        ("viewer", grpc.StatusCode.PERMISSION_DENIED),
        (None, grpc.StatusCode.UNAUTHENTICATED),
    ],
)
async def test_only_the_resolver_role_resolves(
    vault: VaultHandle, role: str | None, code: grpc.StatusCode
) -> None:
    await put_secrets(vault, {"guarded": "guarded-value"})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await resolver(vault, role).ResolveTemplate(request([("f", "{{secret:guarded}}", RAW)]))
    assert info.value.code() == code
    assert "guarded-value" not in (info.value.details() or "")
