"""``python -m vaultsvc keys generate|status|rewrap``: the master key lifecycle.

``generate`` prints a new key. ``status`` and ``rewrap`` load settings exactly like
``serve`` (``--config`` TOML file, ``VAULT_*`` environment wins), refuse a wrong or missing
master key with the same start-up checks as the server (before anything is written), then
talk to the database directly.

``keys rewrap`` moves every data key of every retained version under the primary master
key while the vault keeps serving, and recomputes each version's value fingerprint under
the primary: small transactions, rows locked with ``FOR UPDATE SKIP LOCKED``, only
``kek_id``, ``wrapped_dek`` and the fingerprint change (never the value ciphertext). It
can be stopped at any moment (Ctrl-C, SIGTERM, even SIGKILL) and simply continues with the
rows that are not yet under the primary when run again.

Nothing here prints key material or values; secret names are printed only for rows that
cannot be rewrapped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass
from typing import IO

from vaultsvc.bootstrap import StartupError, check_master_keys, opened_database
from vaultsvc.cli.common import (
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Subparsers,
    add_config_flag,
    fail,
    warn,
)
from vaultsvc.config import ConfigError, Settings, load_settings
from vaultsvc.crypto import (
    NONCE_HARD_LIMIT,
    NONCE_WARN_THRESHOLD,
    DecryptionFailed,
    Envelope,
    Fingerprinter,
    Keyring,
    KeyringError,
    generate_master_key,
)
from vaultsvc.errors import VaultError
from vaultsvc.limits import MAX_REWRAP_BATCH_SIZE
from vaultsvc.logs import configure_logging
from vaultsvc.storage.db import Database, schema_exists
from vaultsvc.storage.repository import Repository, Rewrapped, SealedRow

_IDLE_PASSES = 5
"""Passes in a row that move nothing (every remaining row locked) before rewrap gives up."""


def register(sub: Subparsers) -> None:
    keys = sub.add_parser("keys", help="master key lifecycle")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    gen = keys_sub.add_parser("generate", help="print a new master key id and key")
    gen.set_defaults(func=cmd_keys_generate)

    status = keys_sub.add_parser(
        "status",
        help="show every master key: primary, configured, data keys wrapped, nonce budget used",
    )
    add_config_flag(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_keys_status)

    rewrap = keys_sub.add_parser(
        "rewrap",
        help="re-wrap every data key under the primary master key (online, resumable)",
    )
    add_config_flag(rewrap)
    rewrap.add_argument(
        "--batch-size", type=int, default=100, help="rows per transaction (default 100)"
    )
    rewrap.add_argument(
        "--max-batches",
        type=int,
        default=None,
        help="stop after this many batches (run again to continue)",
    )
    rewrap.add_argument(
        "--pause",
        type=float,
        default=0.0,
        help="seconds to sleep between batches, to limit the load on the database",
    )
    rewrap.set_defaults(func=cmd_keys_rewrap)


# ------------------------------------------------------------------- generate


def cmd_keys_generate(args: argparse.Namespace) -> int:
    key_id, key = generate_master_key()
    print(f"key id : {key_id}")
    print(f"key    : {key}")
    print("Put it FIRST in VAULT_MASTER_KEYS to make it the primary, keep the old keys after it:")
    print(f"  VAULT_MASTER_KEYS={key_id}:{key},<old-id>:<old-key>")
    return EXIT_OK


# ---------------------------------------------------------------------- setup


@contextlib.asynccontextmanager
async def _checked_database(
    settings: Settings,
) -> AsyncIterator[tuple[Database, Keyring, bool]]:
    """Open the database and run the server's start-up key checks (read-only).

    Yields ``(db, keyring, has_schema)``; raises StartupError / ConfigError on refusal.
    """
    keyring = settings.require_keyring()
    async with opened_database(settings) as db:
        async with db.connection() as conn:
            has_schema = await schema_exists(conn)
        for warning in await check_master_keys(db, keyring):
            warn(warning)
        yield db, keyring, has_schema


# --------------------------------------------------------------------- status


@dataclass(frozen=True)
class KeyStatus:
    key_id: str
    primary: bool
    configured: bool
    registered: bool
    data_keys: int
    wrap_count: int
    nonce_budget_percent: float
    """wrap_count as a percentage of the 2^32 random-nonce limit of AES-GCM."""


async def key_status(settings: Settings) -> tuple[Keyring, list[KeyStatus], bool]:
    """Every key id either configured or known to the database, primary first."""
    async with _checked_database(settings) as (db, keyring, has_schema):
        usage = await Repository(db).key_usage() if has_schema else []
    by_id = {u.key_id: u for u in usage}
    ordered = list(keyring.ids) + sorted(set(by_id) - set(keyring.ids))
    rows = []
    for key_id in ordered:
        entry = by_id.get(key_id)
        wraps = entry.wrap_count if entry else 0
        rows.append(
            KeyStatus(
                key_id=key_id,
                primary=key_id == keyring.primary.key_id,
                configured=key_id in keyring,
                registered=entry is not None and entry.check_value is not None,
                data_keys=entry.data_keys if entry else 0,
                wrap_count=wraps,
                nonce_budget_percent=100.0 * wraps / NONCE_HARD_LIMIT,
            )
        )
    return keyring, rows, has_schema


def _format_status(keyring: Keyring, rows: list[KeyStatus], has_schema: bool) -> str:
    header = ("KEY ID", "PRIMARY", "CONFIGURED", "REGISTERED", "DATA KEYS", "WRAPS", "NONCE BUDGET")
    table = [header]
    for r in rows:
        flag = "  ROTATE" if r.wrap_count >= NONCE_WARN_THRESHOLD else ""
        table.append(
            (
                r.key_id,
                "yes" if r.primary else "no",
                "yes" if r.configured else "no",
                "yes" if r.registered else "no",
                str(r.data_keys),
                str(r.wrap_count),
                f"{r.nonce_budget_percent:.4f}%{flag}",
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    numeric = {4, 5}
    lines = [
        "  ".join(
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ).rstrip()
        for line in table
    ]
    if not has_schema:
        lines.append("The database has no vault schema yet: nothing is wrapped under any key.")
        return "\n".join(lines)
    elsewhere = sum(r.data_keys for r in rows if not r.primary)
    primary = keyring.primary.key_id
    if elsewhere:
        lines.append(
            f"{elsewhere} data key(s) are not under the primary key {primary!r}: "
            "run `python -m vaultsvc keys rewrap`."
        )
    else:
        lines.append(f"Every data key is wrapped under the primary key {primary!r}.")
        retired = [r.key_id for r in rows if not r.primary and r.configured]
        if retired:
            lines.append(
                "These keys wrap nothing and may be removed from the configuration: "
                + ", ".join(retired)
            )
    return "\n".join(lines)


def cmd_keys_status(args: argparse.Namespace) -> int:
    configure_logging("WARNING", "text")
    try:
        settings = load_settings(args.config)
        keyring, rows, has_schema = asyncio.run(key_status(settings))
    except (ConfigError, StartupError, KeyringError) as exc:
        return fail(str(exc))
    except VaultError as exc:
        return fail(f"{exc.message} ({exc.reason})")
    if args.json:
        print(
            json.dumps(
                {
                    "primary": keyring.primary.key_id,
                    "schema": has_schema,
                    "nonce_limit": NONCE_HARD_LIMIT,
                    "warn_threshold": NONCE_WARN_THRESHOLD,
                    "keys": [asdict(r) for r in rows],
                },
                indent=2,
            )
        )
    else:
        print(_format_status(keyring, rows, has_schema))
    return EXIT_OK


# --------------------------------------------------------------------- rewrap


class Progress:
    """A progress bar on a terminal (``\\r`` redraws), periodic plain lines otherwise."""

    def __init__(
        self, total: int, stream: IO[str], *, label: str = "rewrap", interval: float = 5.0
    ) -> None:
        self.total = total
        self.stream = stream
        self.label = label
        self.interval = interval
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.done = 0
        self._last_draw = 0.0
        self._last_decile = -1
        self._drawn: int | None = None

    def _percent(self) -> float:
        return 100.0 if self.total <= 0 else min(100.0, 100.0 * self.done / self.total)

    def update(self, done: int, *, force: bool = False) -> None:
        self.done = done
        if force and done == self._drawn:
            return
        now = time.monotonic()
        percent = self._percent()
        if self.tty:
            if force or now - self._last_draw >= 0.1 or done >= self.total:
                width = 30
                filled = int(width * percent / 100)
                bar = "#" * filled + "." * (width - filled)
                self.stream.write(
                    f"\r{self.label} [{bar}] {done}/{self.total} data keys {percent:5.1f}%"
                )
                self.stream.flush()
                self._last_draw = now
                self._drawn = done
            return
        decile = int(percent // 10)
        if force or decile > self._last_decile or now - self._last_draw >= self.interval:
            self.stream.write(f"{self.label}: {done}/{self.total} data keys ({percent:.0f}%)\n")
            self.stream.flush()
            self._last_draw = now
            self._last_decile = decile
            self._drawn = done

    def close(self) -> None:
        self.update(self.done, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


@dataclass
class RewrapOutcome:
    primary: str
    rewrapped: int = 0
    batches: int = 0
    remaining: int = 0
    unreadable: tuple[str, ...] = ()
    interrupted: bool = False
    batch_limit_reached: bool = False


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT/SIGTERM finish the current batch, then stop (the run can be resumed)."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def rewrap_all(
    settings: Settings,
    *,
    batch_size: int = 100,
    max_batches: int | None = None,
    pause: float = 0.0,
    progress_stream: IO[str] | None = None,
    stop: asyncio.Event | None = None,
) -> RewrapOutcome:
    """Re-wrap every data key under the primary; see the module docstring."""
    stop = stop or asyncio.Event()
    async with _checked_database(settings) as (db, keyring, has_schema):
        primary = keyring.primary.key_id
        outcome = RewrapOutcome(primary=primary)
        if not has_schema:
            return outcome
        repo = Repository(db)
        registered = {u.key_id for u in await repo.key_usage() if u.check_value is not None}
        if primary not in registered:
            raise StartupError(
                f"the primary master key {primary!r} is not registered in this database yet: "
                "restart every vault replica with the new VAULT_MASTER_KEYS (new key first, old "
                "keys kept) so that all of them can read data keys wrapped under it, then run "
                "`keys rewrap` again (`python -m vaultsvc migrate` with the new keys also "
                "registers it)"
            )
        envelope = Envelope(keyring)
        fingerprinter = Fingerprinter(keyring)

        def rewrap_row(row: SealedRow) -> Rewrapped | None:
            try:
                plaintext = envelope.open(row.sealed, row.context)
                sealed = (
                    envelope.rewrap(row.sealed, row.context)
                    if envelope.needs_rewrap(row.sealed)
                    else row.sealed
                )
            except DecryptionFailed:
                return None
            return Rewrapped(sealed, fingerprinter.fingerprint(plaintext))

        await _rewrap_passes(
            repo, rewrap_row, outcome, batch_size, max_batches, pause, progress_stream, stop
        )
        outcome.remaining = await repo.count_not_under(primary)
    return outcome


async def _rewrap_passes(
    repo: Repository,
    rewrap_row: Callable[[SealedRow], Rewrapped | None],
    outcome: RewrapOutcome,
    batch_size: int,
    max_batches: int | None,
    pause: float,
    progress_stream: IO[str] | None,
    stop: asyncio.Event,
) -> None:
    """Keyset passes over the rows not under the primary until none is left to move.

    A pass skips rows other transactions hold locked; the next pass retries them.
    """
    progress = Progress(await repo.count_not_under(outcome.primary), progress_stream or sys.stderr)
    progress.update(0, force=True)
    unreadable: dict[str, None] = {}
    idle_passes = 0
    try:
        while True:
            cursor = None
            moved_in_pass = 0
            while True:
                if stop.is_set():
                    outcome.interrupted = True
                    return
                if max_batches is not None and outcome.batches >= max_batches:
                    outcome.batch_limit_reached = True
                    return
                batch = await repo.rewrap_batch(outcome.primary, rewrap_row, batch_size, cursor)
                if batch.scanned == 0:
                    break
                outcome.batches += 1
                cursor = batch.last_id
                moved_in_pass += batch.rewrapped
                outcome.rewrapped += batch.rewrapped
                unreadable.update(dict.fromkeys(batch.failed_names))
                outcome.unreadable = tuple(unreadable)
                progress.update(outcome.rewrapped)
                if pause > 0:
                    await asyncio.sleep(pause)
            remaining = await repo.count_not_under(outcome.primary)
            if remaining <= len(unreadable):
                return
            idle_passes = 0 if moved_in_pass else idle_passes + 1
            if idle_passes >= _IDLE_PASSES:
                return
            if progress.total < outcome.rewrapped + remaining:
                progress.total = outcome.rewrapped + remaining
            if not moved_in_pass:
                await asyncio.sleep(0.2 * idle_passes)
    finally:
        progress.close()


def cmd_keys_rewrap(args: argparse.Namespace) -> int:
    configure_logging("WARNING", "text")
    if not 1 <= args.batch_size <= MAX_REWRAP_BATCH_SIZE:
        return fail(f"--batch-size must be between 1 and {MAX_REWRAP_BATCH_SIZE}")
    if args.max_batches is not None and args.max_batches < 1:
        return fail("--max-batches must be at least 1")
    if args.pause < 0:
        return fail("--pause must not be negative")

    async def run(settings: Settings) -> RewrapOutcome:
        stop = asyncio.Event()
        with _stop_on_signals(stop):
            return await rewrap_all(
                settings,
                batch_size=args.batch_size,
                max_batches=args.max_batches,
                pause=args.pause,
                stop=stop,
            )

    try:
        settings = load_settings(args.config)
        outcome = asyncio.run(run(settings))
    except (ConfigError, StartupError, KeyringError) as exc:
        return fail(str(exc))
    except VaultError as exc:
        return fail(f"{exc.message} ({exc.reason})")
    primary = outcome.primary
    print(
        f"rewrapped {outcome.rewrapped} data key(s) under {primary!r} in {outcome.batches} "
        f"batch(es); {outcome.remaining} data key(s) are still under other keys"
    )
    if outcome.unreadable:
        print(
            "these secrets failed the integrity check and were left untouched (restore them "
            "from a backup or re-create them): " + ", ".join(outcome.unreadable),
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    if outcome.interrupted:
        print("interrupted; run `keys rewrap` again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    if outcome.remaining:
        if outcome.batch_limit_reached:
            print("stopped at --max-batches; run `keys rewrap` again to continue", file=sys.stderr)
            return EXIT_OK
        print(
            "some rows stayed locked by other transactions; run `keys rewrap` again",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    print(
        "every data key is under the primary; retired keys can now be removed from the "
        "configuration (check with `python -m vaultsvc keys status`)"
    )
    return EXIT_OK
