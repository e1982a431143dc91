"""What every part of the vault works with: the repository, the envelope and the cache."""

from __future__ import annotations

from vaultsvc.crypto import Envelope
from vaultsvc.storage.repository import Repository
from vaultsvc.vault.cache import SealedRowCache


class VaultBase:
    """The state shared by the aggregates :class:`~vaultsvc.vault.Vault` is made of."""

    def __init__(
        self,
        repository: Repository,
        envelope: Envelope,
        cache: SealedRowCache | None = None,
    ) -> None:
        self.repo = repository
        self.envelope = envelope
        self.cache = cache if cache is not None else SealedRowCache.disabled()
        """Sealed rows for resolve; a write evicts its key here when it commits (or fails
        not knowing whether it committed), so this replica reads its own writes."""
