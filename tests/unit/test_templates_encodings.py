"""Per-encoding rules, with the seed examples from the product docs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlsplit

import pytest

from vaultsvc.errors import InvalidArgument
from vaultsvc.templates import (
    CompiledTemplate,
    Encoding,
    Lookup,
    PlaceholderKind,
    compile_template,
    scan_template,
)

SEED_URL = "https://api.example.com/orders?key={{secret:orders_api_key}}"
SEED_HEADER = "Bearer {{secret:orders_api_key}}"
SEED_BODY = '{ "api_key": "{{secret:orders_api_key}}", "order_id": "{{input.order_id}}" }'


def values(
    secrets: Mapping[str, str] | None = None,
    configs: Mapping[str, str] | None = None,
    inputs: Mapping[str, str] | None = None,
) -> Lookup:
    tables = {
        PlaceholderKind.SECRET: secrets or {},
        PlaceholderKind.CONFIG: configs or {},
        PlaceholderKind.INPUT: inputs or {},
    }

    def lookup(kind: PlaceholderKind, name: str) -> str:
        return tables[kind][name]

    return lookup


def same(value: str) -> Lookup:
    return lambda kind, name: value


def reasons(template: str, encoding: Encoding) -> list[str]:
    compiled, problems = scan_template(template, encoding)
    assert (compiled is None) == bool(problems)
    return [p.reason for p in problems]


def rejected(template: str, encoding: Encoding, reason: str) -> None:
    assert reason in reasons(template, encoding)
    with pytest.raises(InvalidArgument) as caught:
        compile_template(template, encoding)
    assert caught.value.reason == reason


def render_error(compiled: CompiledTemplate, lookup: Lookup) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        compiled.render(lookup)
    return caught.value


# ------------------------------------------------------------------ RAW


@pytest.mark.parametrize("encoding", [Encoding.RAW, Encoding.UNSPECIFIED])
def test_raw_is_verbatim(encoding: Encoding) -> None:
    value = 'a b\r\n\x00{{secret:x}}&=#?/"\\é€😀'
    compiled = compile_template("<{{secret:x}}|{{input.y}}>", encoding)
    assert compiled.render(same(value)) == f"<{value}|{value}>"


# ------------------------------------------------------------------ URL


def test_seed_url() -> None:
    compiled = compile_template(SEED_URL, Encoding.URL)
    assert compiled.secret_names == ("orders_api_key",)
    result = compiled.render(values({"orders_api_key": "sk_live/ab+c=d&e f#g?h~i.j-k_l"}))
    assert result == (
        "https://api.example.com/orders?key=sk_live%2Fab%2Bc%3Dd%26e%20f%23g%3Fh~i.j-k_l"
    )
    parts = urlsplit(result)
    assert parts.hostname == "api.example.com"
    assert parse_qsl(parts.query) == [("key", "sk_live/ab+c=d&e f#g?h~i.j-k_l")]


def test_url_percent_encodes_utf8_in_path_query_and_fragment() -> None:
    compiled = compile_template(
        "https://h.example:8443/a/{{input.p}}/b?q={{input.p}}&r=x{{input.p}}#{{input.p}}",
        Encoding.URL,
    )
    result = compiled.render(same("é /"))
    assert result == (
        "https://h.example:8443/a/%C3%A9%20%2F/b?q=%C3%A9%20%2F&r=x%C3%A9%20%2F#%C3%A9%20%2F"
    )


def test_url_config_base_is_verbatim_in_the_origin_zone() -> None:
    compiled = compile_template("{{config:api_base}}/orders?key={{secret:k}}", Encoding.URL)
    result = compiled.render(
        values({"k": "a&b"}, configs={"api_base": "https://api.example.com:8443"})
    )
    assert result == "https://api.example.com:8443/orders?key=a%26b"
    # API.md "ENCODING_URL origin (tightened)": the value must be scheme://host[:port][/path].
    base_only = compile_template("{{config:api_base}}", Encoding.URL)
    assert base_only.render(same("https://h.example/v1")) == "https://h.example/v1"
    assert render_error(base_only, same("x/y")).reason == "INVALID_URL_ORIGIN"


def test_url_config_only_as_the_whole_host() -> None:
    # A config may no longer stand for the scheme or the port (API.md, tightened origin).
    rejected(
        "{{config:scheme}}://{{config:host}}:{{config:port}}/p/{{input.x}}",
        Encoding.URL,
        "PLACEHOLDER_NOT_ALLOWED",
    )
    compiled = compile_template("https://{{config:host}}/p/{{input.x}}", Encoding.URL)
    result = compiled.render(values(configs={"host": "h.example:1"}, inputs={"x": "/"}))
    assert result == "https://h.example:1/p/%2F"
    assert compile_template("https://{{config:host}}?a={{secret:s}}", Encoding.URL).render(
        values({"s": "?"}, {"host": "h"})
    ) == ("https://h?a=%3F")


def test_url_literal_text_is_kept_verbatim() -> None:
    template = "https://h/a%20b/../c?x=1&y=a+b#frag/{{input.x}}"
    assert compile_template(template, Encoding.URL).render(same("")) == template[:-11]


@pytest.mark.parametrize(
    "template",
    [
        "https://{{secret:host}}/x",
        "https://api.example.com{{input.suffix}}/x",
        "https://api.example.com:{{input.port}}/x",
        "https://user:{{secret:password}}@api.example.com/x",
        "{{secret:scheme}}://h/x",
        "{{config:base}}{{input.path}}/x",
        "{{config:base}}{{secret:k}}",
        "https://h{{input.x}}",
    ],
)
def test_url_origin_zone_takes_only_config(template: str) -> None:
    rejected(template, Encoding.URL, "PLACEHOLDER_NOT_ALLOWED")


@pytest.mark.parametrize(
    "template",
    [
        "",
        "/orders?key={{secret:k}}",
        "api.example.com/orders",
        "orders?key={{secret:k}}",
        "{{secret:k}}/orders",
        "{{input.base}}/orders",
        "mailto:someone@example.com",
        "://h/x",
        "1http://h/x",
        "ht tp://h/x",
        "h_ttp://h/x",
        "?x=https://h/",
        "https:/{{config:x}}/",
        "{{config:x}}:/",
    ],
)
def test_url_must_be_absolute(template: str) -> None:
    if template == "{{config:x}}:/":
        # A config base URL must be followed by the path, query or fragment (API.md,
        # tightened origin): here the config would be a scheme.
        rejected(template, Encoding.URL, "PLACEHOLDER_NOT_ALLOWED")
        return
    rejected(template, Encoding.URL, "INVALID_TEMPLATE")


@pytest.mark.parametrize("scheme", ["http", "https", "git+ssh", "a.b-c", "H2"])
def test_url_scheme_characters(scheme: str) -> None:
    assert reasons(f"{scheme}://h/{{{{input.x}}}}", Encoding.URL) == []


@pytest.mark.parametrize(
    ("template", "value"),
    [
        ("https://h/orders/{{input.id}}/items", ".."),
        ("https://h/orders/{{input.id}}/items", "."),
        ("https://h/orders/{{input.id}}", ".."),
        ("https://h/orders/.{{input.id}}", "."),
        ("https://h/orders/%2E{{input.id}}", "."),
        ("https://h/orders/{{input.id}}{{input.id}}?x", "."),
        ("{{config:base}}/{{input.id}}#x", ".."),
    ],
)
def test_url_values_cannot_make_dot_segments(template: str, value: str) -> None:
    lookup = values(configs={"base": "https://h"}, inputs={"id": value})
    error = render_error(compile_template(template, Encoding.URL), lookup)
    assert error.reason == "INVALID_URL_VALUE"
    assert "{{input.id}}" in error.message


@pytest.mark.parametrize(
    ("template", "value"),
    [
        ("https://h/orders/{{input.id}}/items", "..."),
        ("https://h/orders/x{{input.id}}", ".."),
        ("https://h/orders?id={{input.id}}", ".."),
        ("https://h/orders#{{input.id}}", ".."),
        ("https://h/../{{input.id}}", "a"),
    ],
)
def test_url_dots_elsewhere_are_fine(template: str, value: str) -> None:
    assert compile_template(template, Encoding.URL).render(same(value))


def test_url_surrogate_value_is_invalid_argument() -> None:
    error = render_error(compile_template("https://h/{{input.x}}", Encoding.URL), same("\ud800"))
    assert error.reason == "INVALID_VALUE"


# --------------------------------------------------------------- HEADER


def test_seed_header() -> None:
    compiled = compile_template(SEED_HEADER, Encoding.HEADER)
    assert compiled.render(values({"orders_api_key": "sk_live_123"})) == "Bearer sk_live_123"
    assert compiled.render(same('{{secret:x}} "quoted" é\t')) == 'Bearer {{secret:x}} "quoted" é\t'


@pytest.mark.parametrize("bad", ["\r", "\n", "\x00", "a\r\nX-Injected: 1", "tail\n"])
def test_header_value_with_cr_lf_nul_is_rejected_naming_the_placeholder(bad: str) -> None:
    compiled = compile_template("Bearer {{ secret:api_key }}", Encoding.HEADER)
    error = render_error(compiled, same(bad))
    assert error.reason == "INVALID_HEADER_VALUE"
    assert "{{secret:api_key}}" in error.message


def test_header_error_carries_the_field() -> None:
    compiled = compile_template("{{input.x}}", Encoding.HEADER)
    with pytest.raises(InvalidArgument) as caught:
        compiled.render(same("\n"), field="headers[Authorization]")
    assert caught.value.message.startswith("headers[Authorization]: ")


@pytest.mark.parametrize("literal", ["a\rb {{secret:x}}", "{{secret:x}}\n", "\x00"])
def test_header_template_with_cr_lf_nul_is_invalid(literal: str) -> None:
    rejected(literal, Encoding.HEADER, "INVALID_TEMPLATE")


# ----------------------------------------------------------------- JSON


def test_seed_json_body() -> None:
    compiled = compile_template(SEED_BODY, Encoding.JSON)
    assert compiled.secret_names == ("orders_api_key",)
    assert compiled.input_names == ("order_id",)
    tricky = 'a"b\\c\nd\x00e\u2028f{{secret:x}}</script>😀'
    result = compiled.render(values({"orders_api_key": tricky}, inputs={"order_id": "42"}))
    assert json.loads(result) == {"api_key": tricky, "order_id": "42"}
    assert "\u2028" not in result


def test_json_placeholders_in_keys_nested_strings_and_next_to_escapes() -> None:
    template = (
        '{"{{input.k}}": ["x{{secret:a}}y", {"n": "\\n{{secret:a}}\\u00e9"}],'
        ' "z": "\\\\{{secret:a}}\\""}'
    )
    compiled = compile_template(template, Encoding.JSON)
    assert json.loads(compiled.render(same('"'))) == {
        '"': ['x"y', {"n": '\n"é'}],
        "z": '\\""',
    }


@pytest.mark.parametrize(
    "template",
    [
        '{"a": {{secret:x}}}',
        "{{secret:x}}",
        '{"a": 1{{input.n}}}',
        '[{{input.a}}, "x"]',
        '{"a": "x"}{{input.y}}',
        '{"a": "\\{{secret:x}}n"}',
        '{"a": "\\u00{{secret:x}}e9"}',
    ],
)
def test_json_placeholder_outside_a_string_is_not_allowed(template: str) -> None:
    rejected(template, Encoding.JSON, "PLACEHOLDER_NOT_ALLOWED")


@pytest.mark.parametrize(
    "template",
    [
        "",
        "{",
        '{"a": "{{secret:x}}"',
        '{"a": "{{secret:x}}",}',
        "{'a': 1}",
        '{"a": NaN}',
        '{"a": Infinity}',
        '{"a": "raw\ttab {{secret:x}}"}',
        '"{{secret:x}}" "{{secret:y}}"',
        "[" * 100_000 + "]" * 100_000,
    ],
)
def test_json_template_must_be_valid_json(template: str) -> None:
    rejected(template, Encoding.JSON, "INVALID_TEMPLATE")


def test_json_error_names_a_position_not_content() -> None:
    _, problems = scan_template('{"a": "{{secret:x}}" "SOMETEXT"}', Encoding.JSON)
    assert [p.reason for p in problems] == ["INVALID_TEMPLATE"]
    assert "SOMETEXT" not in problems[0].message
    assert problems[0].offset == 21


def test_json_big_numbers_and_scalars_are_fine() -> None:
    compiled = compile_template('{"n": ' + "9" * 10_000 + ', "s": "{{input.s}}"}', Encoding.JSON)
    assert json.loads(compiled.render(same("v")), parse_int=str)["s"] == "v"
    assert compile_template('"{{input.s}}"', Encoding.JSON).render(same("\n")) == '"\\n"'


# ----------------------------------------------------------------- FORM


def test_form_values_cannot_add_fields() -> None:
    compiled = compile_template("grant_type=client_credentials&secret={{secret:s}}", 5)
    result = compiled.render(same("a b&admin=1+2%3~"))
    assert result == "grant_type=client_credentials&secret=a+b%26admin%3D1%2B2%253~"
    assert parse_qsl(result) == [
        ("grant_type", "client_credentials"),
        ("secret", "a b&admin=1+2%3~"),
    ]


def test_form_unicode() -> None:
    assert compile_template("a={{input.x}}", Encoding.FORM).render(same("é")) == "a=%C3%A9"
