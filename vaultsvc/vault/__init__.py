"""The vault's behaviour, independent of gRPC: secrets, configs, resolve and check, and
the audit trail as it is listed.

Servicers (:mod:`vaultsvc.api`) translate protos to calls here; this layer validates,
seals and opens values (through :class:`~vaultsvc.crypto.Envelope`) and talks to the
repository. One module per aggregate; :class:`Vault` is all of them over one repository
and one envelope.
"""

from __future__ import annotations

from vaultsvc.vault._base import Lifecycle
from vaultsvc.vault.configs import Configs
from vaultsvc.vault.events import AuditEvents
from vaultsvc.vault.resolve import (
    Caller,
    Field,
    FieldProblem,
    FieldReferences,
    Resolution,
    record_secret_names,
)
from vaultsvc.vault.secrets import Secrets
from vaultsvc.vault.versions import Versions


class Vault(Secrets, Versions, Configs, Resolution, AuditEvents):
    """Everything the vault does; built with a repository and an envelope."""


__all__ = [
    "Caller",
    "Field",
    "FieldProblem",
    "FieldReferences",
    "Lifecycle",
    "Vault",
    "record_secret_names",
]
