"""The per-process cache of database tokens, without a server: what it answers from memory,
and when it refuses to (a load that raced a change, no listener, more tokens than fit)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from vaultsvc.auth import RESOLVER, VIEWER, hash_token, new_token
from vaultsvc.storage.tokens import TokenRecord
from vaultsvc.vault.cache import SealedRowCache
from vaultsvc.vault.tokens import TOKEN_KIND, ChangeRouter, TokenCache

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def row(principal: str, role: str = VIEWER) -> tuple[bytes, TokenRecord]:
    record = TokenRecord(
        id=f"id-{principal}",
        principal=principal,
        role=role,
        description="",
        scopes=(),
        create_time=NOW,
        expire_time=None,
        fingerprint="f" * 12,
    )
    return hash_token(new_token()), record


def test_untrusted_until_the_listener_listens() -> None:
    cache = TokenCache(max_entries=10)
    assert not cache.trusted and not cache.needs_load and not cache.usable
    ticket = cache.begin_load()
    assert not cache.install(ticket, [row("a")]), "no listener: nothing kept"
    cache.resume()
    assert cache.needs_load and not cache.usable
    digest, record = row("a")
    assert cache.install(cache.begin_load(), [(digest, record)])
    assert cache.usable and cache.get(digest) == record and cache.get(b"x" * 32) is None


def test_a_load_that_raced_a_change_is_not_kept() -> None:
    cache = TokenCache(max_entries=10)
    cache.resume()
    ticket = cache.begin_load()
    cache.invalidate("id-a")  # the notification arrived while the query ran
    assert not cache.install(ticket, [row("a")])
    assert cache.needs_load and not cache.usable and len(cache) == 0
    assert cache.install(cache.begin_load(), [row("a")])


def test_losing_the_listener_drops_trust_and_entries() -> None:
    cache = TokenCache(max_entries=10)
    cache.resume()
    cache.install(cache.begin_load(), [row("a")])
    cache.suspend()
    assert not cache.trusted and not cache.usable and len(cache) == 0
    assert not cache.needs_load, "untrusted: per-call lookups, no point loading"


def test_more_tokens_than_fit_make_the_set_incomplete() -> None:
    cache = TokenCache(max_entries=2)
    cache.resume()
    assert cache.install(cache.begin_load(), [row("a"), row("b"), row("c")])
    assert not cache.usable and len(cache) == 2
    assert cache.install(cache.begin_load(), [row("a"), row("b")])
    assert cache.usable


def test_the_router_sends_token_changes_to_the_token_cache_only() -> None:
    rows = SealedRowCache(max_entries=10, max_bytes=1 << 20, negative_max_entries=10)
    tokens = TokenCache(max_entries=10)
    router = ChangeRouter(rows, tokens)
    router.resume()
    assert rows.active and tokens.trusted
    tokens.install(tokens.begin_load(), [row("a", RESOLVER)])
    clears = rows.stats.clears
    router.invalidate(TOKEN_KIND, "id-a")
    assert not tokens.usable and rows.stats.clears == clears and rows.stats.invalidations == 0
    router.invalidate("s", "api")
    assert rows.stats.invalidations == 1
    router.suspend()
    assert not rows.active and not tokens.trusted


def test_expiry_is_a_property_of_the_record() -> None:
    _, record = row("a")
    ending = TokenRecord(**{**record.__dict__, "expire_time": NOW + timedelta(seconds=1)})
    assert not record.expired(NOW + timedelta(days=9999))
    assert not ending.expired(NOW) and ending.expired(NOW + timedelta(seconds=1))
