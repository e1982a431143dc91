"""What every part of the vault works with: the repository, the envelope, the cache and the
lifecycle settings (versions kept, recovery window, identify budgets)."""

from __future__ import annotations

from dataclasses import dataclass

from vaultsvc.config import Settings
from vaultsvc.crypto import Envelope, Fingerprinter
from vaultsvc.storage.repository import Repository
from vaultsvc.vault.cache import SealedRowCache
from vaultsvc.vault.fetcher import RowFetcher


@dataclass(frozen=True)
class Lifecycle:
    """The settings the value lifecycle follows (defaults: those of :class:`Settings`)."""

    max_versions: int
    delete_recovery_days: int
    identify_rate_per_principal: int
    identify_rate_vault: int
    delete_guard_days: int = 7
    """Deleting what was resolved within this many days needs ``force`` (0: no guard)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Lifecycle:
        return cls(
            max_versions=settings.max_versions,
            delete_recovery_days=settings.delete_recovery_days,
            identify_rate_per_principal=settings.identify_rate_per_principal,
            identify_rate_vault=settings.identify_rate_vault,
            delete_guard_days=settings.delete_guard_days,
        )


class VaultBase:
    """The state shared by the aggregates :class:`~vaultsvc.vault.Vault` is made of."""

    def __init__(
        self,
        repository: Repository,
        envelope: Envelope,
        cache: SealedRowCache | None = None,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self.repo = repository
        self.envelope = envelope
        self.cache = cache if cache is not None else SealedRowCache.disabled()
        """Sealed rows for resolve; a write evicts its key here when it commits (or fails
        not knowing whether it committed), so this replica reads its own writes."""
        self.fetcher = RowFetcher(repository, self.cache)
        """Fetches what resolves miss in the cache, concurrent misses in one query."""
        self.fingerprinter = Fingerprinter(envelope.keyring)
        self.lifecycle = lifecycle or Lifecycle.from_settings(Settings())
