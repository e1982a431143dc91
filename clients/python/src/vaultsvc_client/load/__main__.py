"""``python -m vaultsvc_client.load``: the load tool on its own (same as ``vaultctl load``)."""

import sys

from .command import main

# Guarded: --procs spawns processes that import this module again as __mp_main__.
if __name__ == "__main__":
    sys.exit(main())
