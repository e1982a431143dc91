"""``python -m vaultsvc_client.cli`` runs vaultctl."""

import sys

from . import main

sys.exit(main())
