"""The Secrets Vault admin console and its JSON API (``/api/v1``), served by the vault in
the same process and event loop as gRPC, over the same :mod:`vaultsvc.vault` core, the same
authorization table and the same audit path."""
