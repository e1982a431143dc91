"""Hosts as a WHATWG URL parser reads them, and the destination patterns secrets are bound to.

One parser (ada-url, WHATWG URL with UTS-46 host processing) reads every host the vault
compares: the origin of an ``ENCODING_URL`` template and of its resolved URL, a config
value standing for a host, ``ResolveTemplateRequest.destination_host`` and the entries of
``Secret.allowed_hosts``. So ``API.Example.COM``, ``api.example.com.`` and
``bücher.example`` / ``xn--bcher-kva.example`` compare the way an HTTP client sees them.

Patterns: an exact host, or ``*.suffix`` matching one or more labels below the suffix
(never the suffix itself). IP literals match exactly only (a wildcard never matches an IP).
Ports are ignored when comparing. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from ada_url import URL as WhatwgUrl

MAX_HOST_CHARS: Final = 253
"""The longest host name DNS allows (without the trailing dot)."""

_NOT_IN_HOST: Final = re.compile(r"[\s/\\?#@\x00-\x1f\x7f]")
_IPV4: Final = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$")
WILDCARD_PREFIX: Final = "*."


class HostError(ValueError):
    """A host or host pattern that cannot be used; the message says why (no value in it)."""


def parse_url(url: str) -> WhatwgUrl | None:
    """``url`` as a WHATWG parser reads it, or None when it is not a valid URL."""
    try:
        return WhatwgUrl(url)
    except ValueError:
        return None


def whatwg_origin(url: str) -> tuple[str, str] | None:
    """The protocol and host (with any port) a WHATWG parser reads in ``url``, or None."""
    parsed = parse_url(url)
    if parsed is None or not parsed.host:
        return None
    return parsed.protocol, parsed.host


def comparable_host(host: str) -> str:
    """A WHATWG-parsed host name (no port) as hosts are compared: trailing dot removed."""
    return host[:-1] if host.endswith(".") and not host.endswith("..") else host


def normalise_host(text: str, *, allow_port: bool) -> str:
    """``text`` (``host`` or, with ``allow_port``, ``host:port``) normalised for comparison:
    UTS-46 processed and lower-cased by the WHATWG parser, trailing dot removed, port
    dropped. Raises :class:`HostError` when it is not a valid host."""
    if not text:
        raise HostError("a host is required")
    if len(text) > MAX_HOST_CHARS + 7:
        raise HostError(f"host is longer than {MAX_HOST_CHARS} characters")
    if _NOT_IN_HOST.search(text):
        raise HostError("a host may not hold whitespace, control characters, '/', '\\', '?', '#'")
    parsed = parse_url("http://" + text + "/")
    if parsed is None or not parsed.hostname or parsed.username or parsed.password:
        raise HostError("not a valid host name")
    if parsed.pathname != "/" or parsed.search or parsed.hash:
        raise HostError("not a valid host name")
    if parsed.port and not allow_port:
        raise HostError("give the host without a port (ports are ignored)")
    host = comparable_host(parsed.hostname)
    if not host or host.endswith("."):
        raise HostError("not a valid host name")
    if len(host) > MAX_HOST_CHARS:
        raise HostError(f"host is longer than {MAX_HOST_CHARS} characters")
    return host


def is_ip_literal(host: str) -> bool:
    """True for a normalised IPv4 (dotted decimal, as the parser writes every IPv4 form)
    or bracketed IPv6 host."""
    return host.startswith("[") or _IPV4.match(host) is not None


def normalise_pattern(text: str) -> str:
    """An ``allowed_hosts`` entry in its stored form; raises :class:`HostError`."""
    stripped = text.strip()
    if stripped.startswith(WILDCARD_PREFIX):
        suffix = normalise_host(stripped[len(WILDCARD_PREFIX) :], allow_port=False)
        if is_ip_literal(suffix):
            raise HostError("a '*.' pattern needs a domain name after '*.', not an IP address")
        return WILDCARD_PREFIX + suffix
    if "*" in stripped:
        raise HostError("'*' is allowed only as a whole first label ('*.example.com')")
    return normalise_host(stripped, allow_port=False)


def normalise_patterns(texts: Iterable[str]) -> tuple[str, ...]:
    """Every entry normalised, duplicates dropped, sorted (raises on the first bad one,
    naming its position)."""
    found: dict[str, None] = {}
    for position, text in enumerate(texts, start=1):
        try:
            found[normalise_pattern(text)] = None
        except HostError as exc:
            raise HostError(f"allowed_hosts entry {position}: {exc}") from None
    return tuple(sorted(found))


def host_matches(host: str, pattern: str) -> bool:
    """Does the normalised ``host`` match the normalised ``pattern``? (A host holding
    ``*`` never matches: no client resolves it.)"""
    if "*" in host:
        return False
    if pattern.startswith(WILDCARD_PREFIX):
        suffix = pattern[len(WILDCARD_PREFIX) :]
        return not is_ip_literal(host) and host.endswith("." + suffix)
    return host == pattern


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    return any(host_matches(host, pattern) for pattern in patterns)


def covers(patterns: Iterable[str], pattern: str) -> bool:
    """Is everything ``pattern`` matches already matched by one of ``patterns``?
    (So that replacing a list by a narrower one needs no new value.)"""
    for existing in patterns:
        if existing == pattern:
            return True
        if existing.startswith(WILDCARD_PREFIX):
            suffix = existing[len(WILDCARD_PREFIX) :]
            inner = pattern.removeprefix(WILDCARD_PREFIX)
            if not is_ip_literal(inner) and inner.endswith("." + suffix):
                return True
    return False
