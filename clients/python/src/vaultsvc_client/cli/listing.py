"""The one paging loop of vaultctl, and the one way a listing is shown."""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from .exits import EXIT_OK
from .output import note, print_json, print_table, wants_json

_Item = TypeVar("_Item")


def take(items: Iterable[_Item], limit: int) -> list[_Item]:
    """The first ``limit`` items (all when 0); a pager fetches no page past them."""
    return list(itertools.islice(items, limit or None))


def show_listing(
    args: argparse.Namespace,
    pager: Any,
    row_of: Callable[[Any], dict[str, Any]],
    *,
    key: str,
    columns: dict[str, str],
    noun: str,
    blanks: Mapping[str, str] | None = None,
) -> int:
    """``--limit`` items of a pager as ``{key: rows, total_size}`` or a table + count note.

    ``columns`` maps a table header to the row field shown under it; ``blanks`` gives the
    table text of a field without a value (``never`` for a last use).
    """
    rows = [row_of(item) for item in take(pager, args.limit)]
    blank = dict(blanks or {})
    if wants_json(args):
        print_json({key: rows, "total_size": pager.total_size})
    else:
        print_table(
            list(columns),
            [
                [
                    row[field] if row[field] is not None else blank.get(field)
                    for field in columns.values()
                ]
                for row in rows
            ],
        )
        note(f"{len(rows)} of {pager.total_size} {noun}(s)")
    return EXIT_OK
