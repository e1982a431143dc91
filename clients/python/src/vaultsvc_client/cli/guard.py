"""The delete guard at the terminal: a delete the vault refused because the secret or
config value was resolved recently shows who uses it and asks again before forcing."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ..errors import InUse
from .exits import EXIT_USAGE, CliError
from .output import note
from .stdio import is_tty


def add_force(parser: argparse.ArgumentParser, kind: str) -> None:
    parser.add_argument(
        "--force",
        action="store_true",
        help=f"delete even if a resolve used the {kind} recently (the delete guard); "
        "without it a script is refused (exit 10) and a terminal is asked again",
    )


def delete_guarded(
    args: argparse.Namespace, kind: str, name: str, delete: Callable[[bool], None]
) -> bool:
    """``delete(force)``; on SECRET_IN_USE / CONFIG_IN_USE, show the tools and the last
    use, and on a terminal ask again (type ``force``). Returns whether it was forced."""
    try:
        delete(args.force)
    except InUse as exc:
        last = exc.last_resolve_time
        when = last.isoformat().replace("+00:00", "Z") if last is not None else "?"
        tools = ", ".join(exc.tools) or "(resolves that named no tool)"
        if exc.tools_omitted:
            tools += f" and {exc.tools_omitted} more"
        if not is_tty(sys.stdin):
            # The error names the tools and the last use: only how to go on is added.
            note(f"{kind} {name} not deleted; pass --force to delete it anyway")
            raise
        note(f"{kind} {name} is in use: last resolved at {when}")
        note(f"used by: {tools}")
        print(
            f"Tools will fail once {kind} {name!r} is gone. Type 'force' to delete it anyway: ",
            end="",
            file=sys.stderr,
            flush=True,
        )
        if sys.stdin.readline().strip() != "force":
            raise CliError("not confirmed; nothing deleted", EXIT_USAGE, "aborted") from None
        delete(True)
        return True
    return bool(args.force)
