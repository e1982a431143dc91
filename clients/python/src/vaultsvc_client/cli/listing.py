"""The one paging loop of vaultctl: at most ``limit`` items of a pager (0: all)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import TypeVar

_Item = TypeVar("_Item")


def take(items: Iterable[_Item], limit: int) -> list[_Item]:
    """The first ``limit`` items (all when 0); a pager fetches no page past them."""
    return list(itertools.islice(items, limit or None))
