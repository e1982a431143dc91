"""Property tests of ENCODING_URL against ada-url, a WHATWG-conformant URL parser.

Whatever the template and the values, whenever a URL template compiles and renders,
a WHATWG parser reads the result with the host that the template planned: a literal
host, or the host of a whole-origin / whole-host config value, and never anything a
secret or an input contributed. The properties hold with the final re-parse switched
off too, so the template rules and the config value rules are safe on their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

import pytest
from ada_url import URL as WhatwgUrl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vaultsvc.templates.compiler as compiler_module
from vaultsvc.errors import InvalidArgument
from vaultsvc.templates import Encoding, PlaceholderKind, compile_template

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MARKER = "zqz"  # in every secret and input value; must never reach a host
PIECES = [
    "https:",
    "http:",
    "ws:",
    "file:",
    "git+ssh:",
    "//",
    "/",
    "\\",
    "/\\",
    "\\\\",
    "\t",
    "\n",
    "\r",
    ":",
    "@",
    "?",
    "#",
    ".",
    "..",
    "%2e",
    "%2E",
    "%",
    "[",
    "]",
    "evil.com",
    "h.example",
    ":8443",
    " ",
    "x",
    "\x00",
    "\u3002",
    "{{secret:s}}",
    "{{input.i}}",
    "{{config:c}}",
    "{{config:d}}",
]
CONFIG_VALUES = [
    "",
    "https:",
    "https",
    "//",
    "https://api.example.com",
    "https://api.example.com:8443/v1",
    "http://[::1]:8080",
    "https://b\u00fccher.example",
    "api.example.com",
    "api.example.com:8443",
    "evil.com",
    "[::1]",
    "127.0.0.1",
    "h.example/",
    "https://a@evil.com",
    "//evil.com",
    "https:/\\evil.com",
    "https:evil.com",
    "https://h.example/..",
    "h.example\t",
    "h.example.",
    "H.EXAMPLE",
    "h.example\u3002evil.com",
    "https://h%2eexample",
    "https://h.example?x",
]
VALUE_TEXT = st.text(
    st.one_of(st.sampled_from("/\\.?#@:%\t\r\n []{}&="), st.characters(exclude_categories=["Cs"])),
    max_size=6,
)


def value_for(draw: st.DrawFn) -> str:
    return MARKER + draw(VALUE_TEXT) + MARKER


@contextlib.contextmanager
def reparse(enabled: bool) -> Iterator[None]:
    if enabled:
        yield
        return
    with mock.patch.object(compiler_module, "check_resolved_origin", lambda *a, **k: None):
        yield


def render(template: str, configs: dict[str, str], secret: str, input_value: str) -> str | None:
    """The rendered URL, or None when the template or a value is refused."""
    try:
        compiled = compile_template(template, Encoding.URL)
    except InvalidArgument:
        return None
    table = {
        PlaceholderKind.SECRET: secret,
        PlaceholderKind.INPUT: input_value,
    }

    def lookup(kind: PlaceholderKind, name: str) -> str:
        return configs[name] if kind is PlaceholderKind.CONFIG else table[kind]

    try:
        return compiled.render(lookup)
    except InvalidArgument:
        return None


@pytest.mark.parametrize("with_reparse", [True, False])
@PROPERTY
@given(data=st.data())
def test_random_templates_never_put_a_value_in_the_host(
    with_reparse: bool, data: st.DataObject
) -> None:
    template = "".join(data.draw(st.lists(st.sampled_from(PIECES), max_size=12)))
    configs = {key: data.draw(st.sampled_from(CONFIG_VALUES)) for key in ("c", "d")}
    hosts: set[str] = set()
    with reparse(with_reparse):
        for _ in range(2):
            result = render(template, configs, value_for(data.draw), value_for(data.draw))
            if result is None:
                continue
            parsed = WhatwgUrl(result)  # a result always parses
            assert MARKER not in parsed.host.lower()
            assert MARKER not in parsed.username + parsed.password
            hosts.add(parsed.host)
    assert len(hosts) <= 1


LITERAL_ORIGINS = [
    "https://api.example.com",
    "http://127.0.0.1:8080",
    "https://[::1]",
    "https://API.Example.com.",
    "https://b\u00fccher.example:443",
    "ws://h.example",
    "git+ssh://h.example",
    "https://u:p@h.example",
]
BASES = [
    "https://api.example.com",
    "https://api.example.com:8443/v1",
    "http://[::1]:8080",
    "https://h.example/a/b",
]
HOSTS = [
    "api.example.com",
    "api.example.com:8443",
    "[::1]",
    "127.0.0.1",
    "b\u00fccher.example",
    "H.example.",
]
REST_PIECES = [
    "/",
    "\\",
    "?",
    "#",
    "@",
    ":",
    ".",
    "..",
    "%2e",
    "\t",
    "x",
    "evil.com",
    "{{secret:s}}",
    "{{input.i}}",
]


@pytest.mark.parametrize("with_reparse", [True, False])
@PROPERTY
@given(data=st.data())
def test_the_host_is_the_planned_one(with_reparse: bool, data: st.DataObject) -> None:
    form = data.draw(st.sampled_from(["literal", "base", "host"]))
    configs: dict[str, str] = {}
    if form == "literal":
        origin = data.draw(st.sampled_from(LITERAL_ORIGINS))
        planned = WhatwgUrl(origin + "/").host
    elif form == "base":
        configs["c"] = data.draw(st.sampled_from(BASES))
        origin = "{{config:c}}"
        planned = WhatwgUrl(configs["c"]).host
    else:
        configs["c"] = data.draw(st.sampled_from(HOSTS))
        origin = "https://{{config:c}}"
        planned = WhatwgUrl("https://" + configs["c"] + "/").host
    # What follows the origin starts the path, query or fragment (or there is nothing).
    start = data.draw(st.sampled_from(["", "/", "?", "#", "/x/"]))
    rest = "".join(data.draw(st.lists(st.sampled_from(REST_PIECES), max_size=10))) if start else ""
    template = origin + start + rest
    with reparse(with_reparse):
        result = render(template, configs, value_for(data.draw), value_for(data.draw))
    if result is not None:
        assert WhatwgUrl(result).host == planned
