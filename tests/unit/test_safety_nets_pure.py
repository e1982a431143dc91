"""Pure parts of the safety nets: host normalisation and patterns, near-miss scanning,
resolver scopes in config."""

from __future__ import annotations

from pathlib import Path

import pytest

from vaultsvc.config import ConfigError, load_settings
from vaultsvc.names import scope_allows
from vaultsvc.templates.encodings import whatwg_origin
from vaultsvc.templates.hosts import (
    HostError,
    covers,
    host_allowed,
    normalise_host,
    normalise_pattern,
)
from vaultsvc.templates.nearmiss import find_near_misses

HASH = "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("API.Example.COM", "api.example.com"),
        ("api.example.com.", "api.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("\uff21\uff30\uff29.example.com", "api.example.com"),  # fullwidth, UTS-46 mapped
        ("0x7f.1", "127.0.0.1"),
        ("[0:0::1]:8443", "[::1]"),
        ("api.example.com:443", "api.example.com"),
    ],
)
def test_hosts_are_read_as_a_whatwg_parser_reads_them(text: str, expected: str) -> None:
    assert normalise_host(text, allow_port=True) == expected


def test_the_url_encoder_and_host_binding_share_one_parser() -> None:
    origin = whatwg_origin("https://BÜCHER.example./x")
    assert origin is not None
    assert normalise_host(origin[1], allow_port=True) == normalise_pattern("bücher.example")


@pytest.mark.parametrize("bad", ["", "a b", "x/y", "user@host", "a*.b", "*", "*.", "*.10.0.0.1"])
def test_bad_patterns_are_refused(bad: str) -> None:
    with pytest.raises(HostError):
        normalise_pattern(bad)


def test_a_port_in_a_pattern_is_refused() -> None:
    with pytest.raises(HostError, match="without a port"):
        normalise_pattern("api.example.com:443")


def test_wildcards_match_labels_below_the_suffix_only() -> None:
    patterns = ("*.example.com", "10.0.0.7")
    assert host_allowed("a.example.com", patterns)
    assert host_allowed("a.b.example.com", patterns)
    assert not host_allowed("example.com", patterns)
    assert not host_allowed("badexample.com", patterns)
    assert host_allowed("10.0.0.7", patterns)
    assert not host_allowed("*.example.com", patterns)
    assert not host_allowed("10.0.0.7", ("*.0.0.7",))


def test_covers_tells_narrowing_from_widening() -> None:
    assert covers(("*.stripe.com",), "api.stripe.com")
    assert covers(("*.stripe.com",), "*.eu.stripe.com")
    assert not covers(("api.stripe.com",), "*.stripe.com")
    assert not covers(("*.stripe.com",), "stripe.com")


def test_near_misses_are_found_in_templates_with_their_fix() -> None:
    [miss] = find_near_misses("a {{ Secrets . orders_key }} b")
    assert (miss.offset, miss.suggestion) == (2, "{{secret:orders_key}}")
    assert find_near_misses("{{secret:x}} {{ input.y }} {{name}} {{secret: x}}") == ()
    # Linear: a megabyte of near misses is bounded in problems and time.
    assert len(find_near_misses("{{secrets:x}}" * 80_000)) == 1000


def test_scopes_match_names_ignoring_case() -> None:
    assert scope_allows((), "anything")
    assert scope_allows(("payments_*",), "Payments_Key")
    assert not scope_allows(("payments_*",), "orders_key")
    assert scope_allows(("stripe_key",), "STRIPE_KEY")
    assert not scope_allows(("stripe_key",), "stripe_key2")


def test_resolver_scopes_from_the_environment_and_the_file(tmp_path: Path) -> None:
    env = {"VAULT_TOKENS": f"exec:resolver:{HASH}:payments_*|shared_key"}
    [entry] = load_settings(None, env).tokens
    assert entry.scopes == ("payments_*", "shared_key")
    toml = tmp_path / "vault.toml"
    toml.write_text(
        f'[[tokens]]\nprincipal = "exec"\nrole = "resolver"\nsha256 = "{HASH}"\n'
        'scopes = ["payments_*"]\n'
    )
    [entry] = load_settings(toml, {}).tokens
    assert entry.scopes == ("payments_*",)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (f"ops:admin:{HASH}:x_*", "only resolver tokens take scopes"),
        (f"exec:resolver:{HASH}:", "empty scope list"),
        (f"exec:resolver:{HASH}:pay*ments", "must be a secret name or a name prefix"),
        (f"exec:resolver:{HASH}:a||b", "must be a secret name or a name prefix"),
    ],
)
def test_bad_scopes_are_refused(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(None, {"VAULT_TOKENS": spec})
