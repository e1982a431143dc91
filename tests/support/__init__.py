"""Helpers for the tests (no tests, no fixtures): fixtures live in ``tests/conftest.py``.

- :mod:`tests.support.vault`: settings, databases and in-process vaults (``VaultHandle``)
- :mod:`tests.support.rpc`: stubs, metadata and status / ErrorInfo decoding
- :mod:`tests.support.resolve`: building and running ResolveTemplate requests
- :mod:`tests.support.cli`: ``python -m vaultsvc`` subprocesses (``run_cli``, ``start_serve``)
- :mod:`tests.support.keys`: master keys, leak checks and database fingerprints
"""
