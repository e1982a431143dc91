"""The sealed-row cache's bounds, LRU order, fill/invalidate race rule and trust, and the
change listener's sequence bookkeeping (no connection needed for either)."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from datetime import UTC, datetime

import pytest

from vaultsvc.crypto import SealedValue
from vaultsvc.storage.notify import ChangeListener
from vaultsvc.storage.repository import ConfigRow, SealedRow
from vaultsvc.vault.cache import (
    CONFIG_KIND,
    ENTRY_OVERHEAD_BYTES,
    RECENT_INVALIDATIONS,
    SECRET_KIND,
    SealedRowCache,
    entry_size,
)


def row(name: str, size: int = 32) -> SealedRow:
    return SealedRow(
        id=uuid.uuid4(),
        name=name,
        value_version=1,
        sealed=SealedValue("k1", b"w" * 60, b"c" * size),
    )


def config(value: str) -> ConfigRow:
    return ConfigRow(value, datetime(2026, 1, 2, tzinfo=UTC))


def trusted(**limits: int) -> SealedRowCache:
    settings = {"max_entries": 100, "max_bytes": 1 << 20, "negative_max_entries": 100}
    settings.update(limits)
    cache = SealedRowCache(**settings)
    cache.resume()
    return cache


def fill(cache: SealedRowCache, *names: str, absent: tuple[str, ...] = ()) -> None:
    ticket = cache.begin_fill()
    cache.store(ticket, [*names, *absent], [], {n: row(n) for n in names}, {})


def test_a_hit_is_the_sealed_row_itself_and_a_miss_is_listed() -> None:
    cache = trusted()
    stored = row("a")
    cache.store(cache.begin_fill(), ["a"], ["c"], {"a": stored}, {"c": config("cfg")})
    found = cache.lookup(["a", "b"], ["c", "d"])
    assert found.secrets == {"a": stored}
    assert isinstance(found.secrets["a"].sealed, SealedValue)  # never an opened value
    assert found.configs == {"c": config("cfg")}
    assert found.missing_secrets == ["b"] and found.missing_configs == ["d"]
    assert cache.stats.hits == 2 and cache.stats.misses == 2


def test_entry_bound_evicts_least_recently_used() -> None:
    cache = trusted(max_entries=3)
    fill(cache, "a", "b", "c")
    cache.lookup(["a"], [])  # a is now the most recent
    fill(cache, "d")
    assert len(cache) == 3
    assert cache.peek(SECRET_KIND, "b") is None
    assert all(cache.peek(SECRET_KIND, n) is not None for n in ("a", "c", "d"))


def test_byte_bound_evicts_and_an_oversized_entry_is_not_kept() -> None:
    one = entry_size(row("a", size=1000))
    cache = trusted(max_bytes=one * 2 + 10)
    for name in ("a", "b", "c"):
        cache.store(cache.begin_fill(), [name], [], {name: row(name, size=1000)}, {})
    assert len(cache) == 2 and cache.bytes_used <= cache.max_bytes
    assert cache.peek(SECRET_KIND, "a") is None
    big = row("big", size=one * 3)
    cache.store(cache.begin_fill(), ["big"], [], {"big": big}, {})
    assert cache.peek(SECRET_KIND, "big") is None
    assert len(cache) == 2
    assert entry_size(config("x" * 100)) >= ENTRY_OVERHEAD_BYTES + 100


def test_the_size_estimate_counts_host_bindings_and_deletion_state() -> None:
    plain = row("a")
    hosts = tuple(f"h{n}.{'x' * 200}.example" for n in range(50))
    bound = dataclasses.replace(plain, allowed_hosts=hosts)
    assert entry_size(bound) >= entry_size(plain) + sum(len(h) for h in hosts)
    deleted = dataclasses.replace(plain, delete_time=datetime.now(UTC))
    assert entry_size(deleted) > entry_size(plain)


def test_made_up_names_cannot_evict_real_entries() -> None:
    cache = trusted(max_entries=5, negative_max_entries=10)
    fill(cache, "r1", "r2", "r3")
    for i in range(1000):
        fill(cache, absent=(f"made_up_{i}",))
    assert cache.negative_count == 10
    assert all(cache.peek(SECRET_KIND, n) is not None for n in ("r1", "r2", "r3"))
    found = cache.lookup(["made_up_999", "made_up_0"], [])
    assert found.absent_secrets == {"made_up_999"}
    assert found.missing_secrets == ["made_up_0"]


def test_a_found_row_replaces_its_negative_entry_and_kinds_are_separate() -> None:
    cache = trusted()
    fill(cache, absent=("x",))
    assert cache.is_negative(SECRET_KIND, "x")
    cache.store(cache.begin_fill(), [], ["x"], {}, {"x": config("config x")})
    assert cache.is_negative(SECRET_KIND, "x")  # the config x is another name
    fill(cache, "x")
    assert not cache.is_negative(SECRET_KIND, "x") and cache.peek(SECRET_KIND, "x") is not None
    assert cache.peek(CONFIG_KIND, "x") == config("config x")


def test_a_fill_that_raced_an_invalidation_is_not_stored() -> None:
    cache = trusted()
    ticket = cache.begin_fill()  # the read starts ...
    cache.invalidate(SECRET_KIND, "a")  # ... the change's notification arrives ...
    cache.store(ticket, ["a", "b"], [], {"a": row("a"), "b": row("b")}, {})  # ... then store
    assert cache.peek(SECRET_KIND, "a") is None
    assert cache.peek(SECRET_KIND, "b") is not None  # untouched keys are still kept
    assert cache.stats.refused_fills == 1
    ticket = cache.begin_fill()
    cache.invalidate(SECRET_KIND, "gone")
    cache.store(ticket, ["gone"], [], {}, {})  # a raced "not found" is not kept either
    assert not cache.is_negative(SECRET_KIND, "gone")


def test_a_fill_older_than_a_clear_or_than_forgotten_invalidations_is_refused() -> None:
    cache = trusted()
    ticket = cache.begin_fill()
    cache.clear()
    fill_ticket_after = cache.begin_fill()
    cache.store(ticket, ["a"], [], {"a": row("a")}, {})
    assert cache.peek(SECRET_KIND, "a") is None
    cache.store(fill_ticket_after, ["a"], [], {"a": row("a")}, {})
    assert cache.peek(SECRET_KIND, "a") is not None

    ticket = cache.begin_fill()
    cache.invalidate(SECRET_KIND, "z")
    for i in range(RECENT_INVALIDATIONS):  # z's invalidation is forgotten ...
        cache.invalidate(SECRET_KIND, f"other_{i}")
    cache.store(ticket, ["z"], [], {"z": row("z")}, {})  # ... so the old ticket is refused
    assert cache.peek(SECRET_KIND, "z") is None


def test_untrusted_or_disabled_cache_serves_nothing_and_keeps_nothing() -> None:
    cache = trusted()
    fill(cache, "a")
    cache.suspend()
    assert len(cache) == 0
    assert cache.lookup(["a"], []).missing_secrets == ["a"]
    fill(cache, "a")
    assert len(cache) == 0
    cache.resume()
    fill(cache, "a")
    assert cache.lookup(["a"], []).secrets.keys() == {"a"}

    off = SealedRowCache.disabled()
    off.resume()
    fill(off, "a")
    assert off.lookup(["a"], []).missing_secrets == ["a"] and len(off) == 0


# ------------------------------------------------------------------ the listener


def listener_at(seq: int) -> tuple[ChangeListener, SealedRowCache]:
    cache = trusted()
    listener = ChangeListener("postgresql://unused", cache)
    listener._last_seq = seq  # as after connecting
    return listener, cache


def test_notifications_evict_their_key_and_track_the_sequence() -> None:
    listener, cache = listener_at(10)
    fill(cache, "a", "b")
    cache.store(cache.begin_fill(), [], ["c"], {}, {"c": config("v")})
    listener.on_payload("11 s a")
    listener.on_payload("12 c c")
    assert cache.peek(SECRET_KIND, "a") is None and cache.peek(SECRET_KIND, "b") is not None
    assert cache.peek(CONFIG_KIND, "c") is None
    assert listener.seen_seq == 12
    listener.on_payload("13 * ")
    assert len(cache) == 0 and listener.seen_seq == 13


def test_a_gap_in_the_sequence_clears_the_cache(caplog: pytest.LogCaptureFixture) -> None:
    listener, cache = listener_at(10)
    fill(cache, "a", "b")
    with caplog.at_level(logging.WARNING, logger="vaultsvc.storage"):
        listener.on_payload("12 s a")  # 11 never arrived
    assert len(cache) == 0 and listener.seen_seq == 12
    assert "change notifications were lost" in caplog.text
    fill(cache, "b")
    listener.on_payload("5 s zz")  # late, already accounted for: evicts only
    assert cache.peek(SECRET_KIND, "b") is not None and listener.seen_seq == 12


def test_an_unreadable_notification_clears_the_cache() -> None:
    listener, cache = listener_at(3)
    fill(cache, "a")
    listener.on_payload("garbage")
    assert len(cache) == 0


def test_the_periodic_check_clears_when_the_sequence_moved_silently(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listener, cache = listener_at(10)
    fill(cache, "a")
    listener.check_sequence(10)
    listener.check_sequence(12)  # maybe still in flight: give it one interval
    assert cache.peek(SECRET_KIND, "a") is not None
    listener.on_payload("11 s x")
    listener.on_payload("12 s y")
    listener.check_sequence(12)
    assert cache.peek(SECRET_KIND, "a") is not None
    listener.check_sequence(14)
    with caplog.at_level(logging.WARNING, logger="vaultsvc.storage"):
        listener.check_sequence(15)  # 13 and 14 never came in a whole interval
    assert len(cache) == 0 and listener.seen_seq == 15
    assert "change sequence moved without notifications" in caplog.text
