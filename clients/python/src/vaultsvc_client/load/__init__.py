"""``vaultctl load``: a load-test tool for ResolveTemplate, in the spirit of ghz.

Modules: ``options`` (flags, validation, exit codes), ``scenario`` (the built-in
seed-shaped templates, ``--template-file``, per-call requests), ``schedule``
(workers; closed loop or open loop from intended start times), ``runner`` (one
process: channels and the raw-stub hot path), ``procs`` (several processes,
merged), ``stats`` (HDR histogram and error counts), ``report`` (text and JSON),
``progress`` (the live line), ``seeding`` (throwaway secrets, always removed),
``command`` (the command itself).

Wire it into an argparse CLI with :func:`add_load_parser`, or run it alone:
``python -m vaultsvc_client.load --help``.
"""

from .command import add_load_parser, build_parser, main, run_load
from .options import EXIT_CODES

__all__ = ["EXIT_CODES", "add_load_parser", "build_parser", "main", "run_load"]
