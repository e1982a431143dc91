"""Fault experiments, discovered by :mod:`tests.faults.run`.

Every module here exposes ``EXPERIMENTS``: a list of ``async def name(lab: Lab) -> None``
functions. Each gets a fresh :class:`tests.faults.lab.Lab` (its own Postgres and vault
process), drives a fault under a workload (``lab.workload``), and ends with
``lab.check_nothing_lost()``; what clients saw and what was lost land in ``lab.result``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Awaitable, Callable

from tests.faults.lab import Lab

Experiment = Callable[[Lab], Awaitable[None]]


def discover() -> list[Experiment]:
    found: list[Experiment] = []
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        loaded = importlib.import_module(f"{__name__}.{module.name}")
        found.extend(getattr(loaded, "EXPERIMENTS", []))
    return found
