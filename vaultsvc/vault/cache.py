"""The per-process cache of what a resolve reads: SEALED secret rows and config values.

Never plaintext and never an unwrapped data key: a secret entry is the row as stored
(key id, wrapped data key, ciphertext, value version), so every hit is still opened per
request by :class:`~vaultsvc.crypto.Envelope` and the value is dropped after the reply.

Bounds: positive entries by count and by (estimated) bytes, least recently used first out;
names found missing live in a separate, separately bounded LRU space, so requests naming
a thousand made-up secrets cannot push real entries out.

Coherence (see :mod:`vaultsvc.storage.notify`): every change evicts its key here. A fill
takes a *ticket* (the invalidation counter) before its query and is stored only if no
invalidation of that key, and no clear, happened since: a read that raced a change is
served once and never cached. Until the change listener says it is listening the cache
is *untrusted*: lookups miss and fills are dropped (bypass).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from vaultsvc.storage.repository import ConfigRow, SealedRow

Kind = Literal["s", "c"]
"""``s``: a secret by lower-cased name; ``c``: a config value by lower-cased key."""
SECRET_KIND: Final = "s"  # noqa: S105 (a kind tag, not a password)
CONFIG_KIND: Final = "c"

CacheKey = tuple[str, str]

#: Per-entry cost beyond the byte strings themselves: the row object, its SealedValue,
#: the key tuple and the OrderedDict slot (measured on CPython 3.11, rounded up).
ENTRY_OVERHEAD_BYTES: Final = 400
#: How many recent per-key invalidations are remembered for racing fills; older ones fold
#: into a floor (fills that started before it are refused, which is only conservative).
RECENT_INVALIDATIONS: Final = 4096


def entry_size(value: SealedRow | ConfigRow) -> int:
    """Estimated resident bytes of one cached entry."""
    if isinstance(value, ConfigRow):
        return ENTRY_OVERHEAD_BYTES + sys.getsizeof(value.value) + sys.getsizeof(value.create_time)
    sealed = value.sealed
    return (
        ENTRY_OVERHEAD_BYTES
        + sys.getsizeof(sealed.wrapped_dek)
        + sys.getsizeof(sealed.ciphertext)
        + sys.getsizeof(value.name)
        + sys.getsizeof(sealed.key_id)
        + sys.getsizeof(value.allowed_hosts)
        + sum(sys.getsizeof(host) for host in value.allowed_hosts)
        + (sys.getsizeof(value.delete_time) if value.delete_time is not None else 0)
    )


@dataclass
class CacheStats:
    hits: int = 0
    negative_hits: int = 0
    misses: int = 0
    stored: int = 0
    refused_fills: int = 0
    evictions: int = 0
    invalidations: int = 0
    clears: int = 0


@dataclass
class Lookup:
    """What the cache answered for one request; ``missing_*`` must be fetched."""

    secrets: dict[str, SealedRow] = field(default_factory=dict)
    configs: dict[str, ConfigRow] = field(default_factory=dict)
    absent_secrets: set[str] = field(default_factory=set)
    absent_configs: set[str] = field(default_factory=set)
    missing_secrets: list[str] = field(default_factory=list)
    missing_configs: list[str] = field(default_factory=list)


class SealedRowCache:
    """Bounded LRU of sealed rows and config values, plus a bounded negative space.

    Not thread-safe: one instance per event loop (per server process), used only from it.
    """

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        negative_max_entries: int,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.negative_max_entries = negative_max_entries
        self.stats = CacheStats()
        self._entries: OrderedDict[CacheKey, tuple[SealedRow | ConfigRow, int]] = OrderedDict()
        self._negative: OrderedDict[CacheKey, None] = OrderedDict()
        self._bytes = 0
        self._trusted = False
        self._epoch = 0
        self._cleared_at = 0
        self._floor = 0
        self._invalidated: OrderedDict[CacheKey, int] = OrderedDict()
        self.before_store: Callable[[], Awaitable[None]] | None = None
        """Test hook awaited between a fill's query and its store (forces the race)."""

    @classmethod
    def disabled(cls) -> SealedRowCache:
        return cls(max_entries=0, max_bytes=0, negative_max_entries=0, enabled=False)

    # ------------------------------------------------------------------ reading

    @property
    def active(self) -> bool:
        """Serving from memory: enabled and kept coherent by a live listener."""
        return self.enabled and self._trusted

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def negative_count(self) -> int:
        return len(self._negative)

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def peek(self, kind: Kind, key: str) -> SealedRow | ConfigRow | None:
        """The cached value of ``key`` without touching LRU order or counters (tests)."""
        entry = self._entries.get((kind, key))
        return None if entry is None else entry[0]

    def is_negative(self, kind: Kind, key: str) -> bool:
        return (kind, key) in self._negative

    def lookup(self, secret_keys: Iterable[str], config_keys: Iterable[str]) -> Lookup:
        """Answer what memory can; keys are lower-cased names."""
        found = Lookup()
        if not self.active:
            found.missing_secrets = list(secret_keys)
            found.missing_configs = list(config_keys)
            self.stats.misses += len(found.missing_secrets) + len(found.missing_configs)
            return found
        entries, negative, stats = self._entries, self._negative, self.stats
        for key in secret_keys:
            ck = (SECRET_KIND, key)
            entry = entries.get(ck)
            if entry is not None:
                entries.move_to_end(ck)
                found.secrets[key] = entry[0]  # type: ignore[assignment]
                stats.hits += 1
            elif ck in negative:
                negative.move_to_end(ck)
                found.absent_secrets.add(key)
                stats.negative_hits += 1
            else:
                found.missing_secrets.append(key)
                stats.misses += 1
        for key in config_keys:
            ck = (CONFIG_KIND, key)
            entry = entries.get(ck)
            if entry is not None:
                entries.move_to_end(ck)
                found.configs[key] = entry[0]  # type: ignore[assignment]
                stats.hits += 1
            elif ck in negative:
                negative.move_to_end(ck)
                found.absent_configs.add(key)
                stats.negative_hits += 1
            else:
                found.missing_configs.append(key)
                stats.misses += 1
        return found

    # ------------------------------------------------------------------ filling

    def begin_fill(self) -> int:
        """A ticket to take BEFORE the query whose result :meth:`store` may keep."""
        return self._epoch

    def store(
        self,
        ticket: int,
        secret_keys: Iterable[str],
        config_keys: Iterable[str],
        secrets: Mapping[str, SealedRow],
        configs: Mapping[str, ConfigRow],
    ) -> None:
        """Keep what one query read for the requested keys (absent ones negatively),
        unless the key was invalidated, or the cache cleared, since ``ticket``."""
        if not self.active:
            return
        if ticket < self._cleared_at or ticket < self._floor:
            self.stats.refused_fills += 1
            return
        for kind, keys, values in (
            (SECRET_KIND, secret_keys, secrets),
            (CONFIG_KIND, config_keys, configs),
        ):
            for key in keys:
                ck = (kind, key)
                if self._invalidated.get(ck, 0) > ticket:
                    self.stats.refused_fills += 1
                    continue
                value = values.get(key)
                if value is None:
                    self._put_negative(ck)
                else:
                    self._put(ck, value)

    def _put(self, ck: CacheKey, value: SealedRow | ConfigRow) -> None:
        size = entry_size(value)
        self._negative.pop(ck, None)
        self._drop(ck)
        if size > self.max_bytes or self.max_entries <= 0:
            return
        self._entries[ck] = (value, size)
        self._bytes += size
        self.stats.stored += 1
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped
            self.stats.evictions += 1

    def _put_negative(self, ck: CacheKey) -> None:
        self._drop(ck)
        if self.negative_max_entries <= 0:
            return
        self._negative[ck] = None
        self._negative.move_to_end(ck)
        while len(self._negative) > self.negative_max_entries:
            self._negative.popitem(last=False)
            self.stats.evictions += 1

    def _drop(self, ck: CacheKey) -> None:
        entry = self._entries.pop(ck, None)
        if entry is not None:
            self._bytes -= entry[1]

    # ------------------------------------------------------------- invalidating

    def invalidate(self, kind: Kind, key: str) -> None:
        """``key`` changed (or may have): forget it, and refuse fills that raced it."""
        ck = (kind, key)
        self._drop(ck)
        self._negative.pop(ck, None)
        self._epoch += 1
        self._invalidated[ck] = self._epoch
        self._invalidated.move_to_end(ck)
        if len(self._invalidated) > RECENT_INVALIDATIONS:
            _, forgotten = self._invalidated.popitem(last=False)
            self._floor = max(self._floor, forgotten)
        self.stats.invalidations += 1

    def clear(self) -> None:
        """Forget everything; fills that started before now are refused."""
        self._entries.clear()
        self._negative.clear()
        self._invalidated.clear()
        self._bytes = 0
        self._epoch += 1
        self._cleared_at = self._epoch
        self.stats.clears += 1

    def suspend(self) -> None:
        """Coherence lost (no listener): bypass and clear until :meth:`resume`."""
        self._trusted = False
        self.clear()

    def resume(self) -> None:
        """Listening again: start from empty (changes made meanwhile were not seen)."""
        self.clear()
        self._trusted = True
