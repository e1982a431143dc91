"""``python -m vaultsvc_client`` runs vaultctl."""

import sys

from .cli import main

sys.exit(main())
