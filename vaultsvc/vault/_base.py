"""What every part of the vault works with: the repository and the envelope."""

from __future__ import annotations

from vaultsvc.crypto import Envelope
from vaultsvc.storage.repository import Repository


class VaultBase:
    """The state shared by the aggregates :class:`~vaultsvc.vault.Vault` is made of."""

    def __init__(self, repository: Repository, envelope: Envelope) -> None:
        self.repo = repository
        self.envelope = envelope
