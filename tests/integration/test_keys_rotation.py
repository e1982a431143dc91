"""Master key rotation: ``keys rewrap`` as a real subprocess against the same database
while an in-process vault keeps serving, resumability after interruption, damaged rows,
``keys status``, and removing the old key afterwards.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import secrets
import signal
from collections.abc import Awaitable, Callable

import asyncpg
from interakt.vault.v1 import secret_service_pb2 as spb

from tests.support.cli import cli_env, finish, run_cli, start_cli
from tests.support.keys import (
    CURRENT_SEALED,
    assert_no_key_material,
    create_secrets,
    db_fingerprint,
    expect_unreadable,
    kek_counts,
    keyring_spec,
    new_key,
    resolve_all,
    resolve_many,
    wrap_counts,
)
from tests.support.rpc import resolver, secrets_admin
from tests.support.vault import create_database, sql, vault_server
from vaultsvc.cli.keys import Progress
from vaultsvc.storage.embedded import EmbeddedPostgres


def make_values(count: int, prefix: str = "svc") -> dict[str, str]:
    return {f"{prefix}_{i:04d}": f"v{i}-{secrets.token_urlsafe(6)}" for i in range(count)}


async def status_json(url: str, master_keys: str) -> dict[str, dict[str, object]]:
    done = await run_cli(["keys", "status", "--json"], cli_env(url, master_keys))
    assert done.returncode == 0, done.stderr
    return {k["key_id"]: k for k in json.loads(done.stdout)["keys"]}


def rewrapped_count(stdout: str) -> int:
    match = re.search(r"rewrapped (\d+) data key", stdout)
    assert match, stdout
    return int(match.group(1))


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if await predicate():
                return
            await asyncio.sleep(0.02)


# ------------------------------------------------------------------ under load


async def test_rotation_under_load_then_old_key_removed(pg: EmbeddedPostgres) -> None:
    old, new = new_key("old"), new_key("new")
    url = await create_database(pg)
    expected = make_values(300)
    hot = sorted(expected)[::15]  # 20 secrets whose values change during the rotation
    cold = [n for n in expected if n not in hot]

    async with vault_server(url, old.spec) as vault:
        await create_secrets(vault, expected)
    before = {
        r["name"]: (bytes(r["wrapped_dek"]), bytes(r["ciphertext"]))
        for r in await sql(url, f"SELECT name, wrapped_dek, ciphertext FROM {CURRENT_SEALED}")
    }
    assert await kek_counts(url) == {"old": 300}

    # Every replica restarted with the new key first and the old one kept.
    async with vault_server(url, keyring_spec(new, old)) as vault:
        stop = asyncio.Event()
        allowed = {name: {value} for name, value in expected.items()}
        failures: list[str] = []
        counters = {"ok": 0, "ok_mixed": 0, "updates": 0}
        state = {"mixed": False, "saw_mixed": False}
        names = sorted(expected)

        async def resolver_loop(offset: int) -> None:
            stub = resolver(vault)
            position = offset
            while not stop.is_set():
                chunk = [names[(position + j) % len(names)] for j in range(10)]
                position += 10
                mixed_before = state["mixed"]
                try:
                    got = await resolve_many(stub, chunk)
                except Exception as exc:
                    failures.append(f"resolve failed: {exc!r}")
                    continue
                wrong = [n for n in chunk if got[n] not in allowed[n]]
                if wrong:
                    failures.append(f"wrong values for {wrong}")
                    continue
                counters["ok"] += 1
                if mixed_before and state["mixed"]:
                    counters["ok_mixed"] += 1

        async def writer_loop() -> None:
            stub = secrets_admin(vault)
            round_number = 0
            while not stop.is_set():
                for name in hot:
                    value = f"{name}-round-{round_number}"
                    allowed[name].add(value)
                    try:
                        await stub.UpdateSecret(
                            spb.UpdateSecretRequest(name=name, value=value), timeout=10
                        )
                    except Exception as exc:
                        failures.append(f"update failed: {exc!r}")
                        continue
                    expected[name] = value
                    counters["updates"] += 1
                round_number += 1
                await asyncio.sleep(0.05)

        async def sampler() -> None:
            """Mixed = some but not all untouched ("cold") rows are already rewrapped."""
            conn = await asyncpg.connect(url, timeout=10)
            try:
                while not stop.is_set():
                    moved = await conn.fetchval(
                        f"SELECT count(*) FROM {CURRENT_SEALED} WHERE kek_id = 'new' "
                        "AND NOT (name = ANY($1::text[]))",
                        hot,
                    )
                    state["mixed"] = 0 < moved < len(cold)
                    state["saw_mixed"] = state["saw_mixed"] or state["mixed"]
                    await asyncio.sleep(0.01)
            finally:
                await conn.close(timeout=5)

        background = [asyncio.create_task(resolver_loop(i * 97)) for i in range(3)]
        background += [asyncio.create_task(writer_loop()), asyncio.create_task(sampler())]
        try:
            proc = await start_cli(
                ["keys", "rewrap", "--batch-size", "5", "--pause", "0.02"],
                cli_env(url, keyring_spec(new, old)),
            )
            done = await finish(proc)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*background), timeout=30)

        assert done.returncode == 0, done.stderr
        assert failures == []
        assert state["saw_mixed"], "the rewrap was too fast to overlap with the load"
        assert counters["ok_mixed"] > 0 and counters["ok"] > counters["ok_mixed"]
        assert counters["updates"] > 0
        moved_by_cli = rewrapped_count(done.stdout)
        assert len(cold) <= moved_by_cli <= 300
        assert "rewrap: " in done.stderr and "300/300" not in done.stdout
        assert "0 data key(s) are still under other keys" in done.stdout
        assert_no_key_material(done.output, old, new)

        # Only kek_id and wrapped_dek changed; the value ciphertext is byte for byte the same.
        after = {
            r["name"]: (r["kek_id"], bytes(r["wrapped_dek"]), bytes(r["ciphertext"]))
            for r in await sql(
                url, f"SELECT name, kek_id, wrapped_dek, ciphertext FROM {CURRENT_SEALED}"
            )
        }
        assert {kek for kek, _, _ in after.values()} == {"new"}
        for name in cold:
            assert after[name][2] == before[name][1]
            assert after[name][1] != before[name][0]

        assert await wrap_counts(url) == {"old": 300, "new": moved_by_cli + counters["updates"]}
        status = await status_json(url, keyring_spec(new, old))
        assert status["old"]["data_keys"] == 0 and status["old"]["configured"] is True
        # Every retained version holds a data key: 300 secrets plus the older versions
        # the updates under load left (at most max_versions per secret).
        retained = await sql(
            url, "SELECT count(*) AS n FROM secret_versions WHERE kek_id IS NOT NULL"
        )
        assert status["new"]["data_keys"] == retained[0]["n"] > 300
        assert status["new"]["primary"] is True
        assert status["new"]["wrap_count"] == moved_by_cli + counters["updates"]
        text = await run_cli(["keys", "status"], cli_env(url, keyring_spec(new, old)))
        assert "Every data key is wrapped under the primary key 'new'" in text.stdout
        assert "may be removed from the configuration: old" in text.stdout
        await resolve_all(vault, expected)

    # The old key is removed from the configuration: the vault starts, everything resolves.
    async with vault_server(url, new.spec) as vault:
        await resolve_all(vault, expected)
    status = await status_json(url, new.spec)
    assert status["old"]["configured"] is False and status["old"]["data_keys"] == 0


# ------------------------------------------------------------------ resumable


async def _consistent_counts(url: str) -> tuple[int, int, int]:
    """(rows under new, rows under old, wrap_count of new) read in ONE snapshot."""
    rows = await sql(
        url,
        """SELECT (SELECT count(*) FROM secret_versions WHERE kek_id = 'new') AS under_new,
                  (SELECT count(*) FROM secret_versions WHERE kek_id = 'old') AS under_old,
                  (SELECT wrap_count FROM master_keys WHERE key_id = 'new') AS wraps""",
    )
    return int(rows[0]["under_new"]), int(rows[0]["under_old"]), int(rows[0]["wraps"])


async def test_rewrap_is_resumable_after_limit_kill_and_sigterm(pg: EmbeddedPostgres) -> None:
    old, new = new_key("old"), new_key("new")
    url = await create_database(pg)
    expected = make_values(120)
    async with vault_server(url, old.spec) as vault:
        await create_secrets(vault, expected)
    env = cli_env(url, keyring_spec(new, old))

    async with vault_server(url, keyring_spec(new, old)) as vault:
        # 1. A bounded run moves exactly two batches.
        done = await run_cli(["keys", "rewrap", "--batch-size", "10", "--max-batches", "2"], env)
        assert done.returncode == 0, done.stderr
        assert rewrapped_count(done.stdout) == 20
        assert "run `keys rewrap` again to continue" in done.stderr
        assert await _consistent_counts(url) == (20, 100, 20)
        status = await status_json(url, keyring_spec(new, old))
        assert status["old"]["data_keys"] == 100 and status["new"]["data_keys"] == 20

        # 2. SIGKILL in the middle: every committed batch stays, the open one rolls back.
        proc = await start_cli(["keys", "rewrap", "--batch-size", "2", "--pause", "0.05"], env)

        async def progressed_past(count: int) -> bool:
            return (await _consistent_counts(url))[0] >= count

        await wait_until(lambda: progressed_past(30))
        proc.kill()
        await finish(proc)
        under_new, under_old, wraps = await _consistent_counts(url)
        assert 30 <= under_new < 120 and under_new + under_old == 120
        assert wraps == under_new, "each data key was wrapped under 'new' exactly once"
        await resolve_all(vault, expected)  # a half-rotated vault serves everything

        # 3. SIGTERM: the current batch finishes, the run stops cleanly and says so.
        proc = await start_cli(["keys", "rewrap", "--batch-size", "2", "--pause", "0.05"], env)
        await wait_until(lambda: progressed_past(under_new + 4))
        proc.send_signal(signal.SIGTERM)
        done = await finish(proc)
        assert done.returncode == 130, (done.returncode, done.stderr)
        assert "interrupted; run `keys rewrap` again to continue" in done.stderr
        under_new, under_old, wraps = await _consistent_counts(url)
        assert under_new < 120 and wraps == under_new

        # 4. A last run finishes the job.
        done = await run_cli(["keys", "rewrap", "--batch-size", "50"], env)
        assert done.returncode == 0, done.stderr
        assert rewrapped_count(done.stdout) == under_old
        assert await _consistent_counts(url) == (120, 0, 120)
        done = await run_cli(["keys", "rewrap"], env)
        assert done.returncode == 0 and rewrapped_count(done.stdout) == 0

    async with vault_server(url, new.spec) as vault:
        await resolve_all(vault, expected)


# ------------------------------------------------------------------ edge cases


async def test_rewrap_reports_damaged_rows_and_leaves_them_untouched(
    pg: EmbeddedPostgres,
) -> None:
    old, new = new_key("old"), new_key("new")
    url = await create_database(pg)
    expected = make_values(12)
    damaged = sorted(expected)[5]
    async with vault_server(url, old.spec) as vault:
        await create_secrets(vault, expected)
    await sql(
        url,
        "UPDATE secret_versions v SET ciphertext = "
        "set_byte(ciphertext, 15, get_byte(ciphertext, 15) # 1) "
        "FROM secrets s WHERE s.id = v.secret_id AND s.name = $1",
        damaged,
    )
    row_before = await sql(url, f"SELECT * FROM {CURRENT_SEALED} WHERE name = $1", damaged)
    env = cli_env(url, keyring_spec(new, old))

    async with vault_server(url, keyring_spec(new, old)) as vault:
        for attempt in range(2):
            done = await run_cli(["keys", "rewrap", "--batch-size", "3"], env)
            assert done.returncode == 1, done.stderr
            assert rewrapped_count(done.stdout) == (11 if attempt == 0 else 0)
            assert "failed the integrity check and were left untouched" in done.stderr
            assert done.stderr.count(damaged) == 1
            assert not any(name in done.output for name in expected if name != damaged)
            assert not any(value in done.output for value in expected.values())
        assert await kek_counts(url) == {"new": 11, "old": 1}
        assert (
            await sql(url, f"SELECT * FROM {CURRENT_SEALED} WHERE name = $1", damaged) == row_before
        )
        await expect_unreadable(resolver(vault), [damaged], damaged)
        healthy = {n: v for n, v in expected.items() if n != damaged}
        await resolve_all(vault, healthy)
    status = await status_json(url, keyring_spec(new, old))
    assert status["old"]["data_keys"] == 1


async def test_rewrap_refuses_until_the_new_primary_is_registered(pg: EmbeddedPostgres) -> None:
    """Moving data keys to a key no replica knows would make them unreadable there: the
    CLI refuses (writing nothing) until a server or `migrate` registered the new key."""
    old, new = new_key("old"), new_key("new")
    url = await create_database(pg)
    expected = make_values(5)
    async with vault_server(url, old.spec) as vault:
        await create_secrets(vault, expected)
    env = cli_env(url, keyring_spec(new, old))
    before = await db_fingerprint(url)

    done = await run_cli(["keys", "rewrap"], env)

    assert done.returncode == 2
    assert "primary master key 'new' is not registered" in done.stderr
    assert "restart every vault replica" in done.stderr
    assert_no_key_material(done.output, old, new)
    assert await db_fingerprint(url) == before

    done = await run_cli(["migrate"], env)
    assert done.returncode == 0, done.stderr
    done = await run_cli(["keys", "rewrap"], env)
    assert done.returncode == 0, done.stderr
    assert await kek_counts(url) == {"new": 5}
    async with vault_server(url, new.spec) as vault:
        await resolve_all(vault, expected)


async def test_rewrap_on_an_empty_or_fresh_database(pg: EmbeddedPostgres) -> None:
    key = new_key("only")
    url = await create_database(pg)
    done = await run_cli(["keys", "status"], cli_env(url, key.spec))
    assert done.returncode == 0 and "no vault schema yet" in done.stdout
    done = await run_cli(["keys", "rewrap"], cli_env(url, key.spec))
    assert done.returncode == 0 and rewrapped_count(done.stdout) == 0
    assert (await db_fingerprint(url))["relations"] == [], "the CLI does not create the schema"


async def test_progress_bar_on_a_terminal_and_in_a_log() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    bar = Progress(40, terminal)
    for done in range(0, 41, 4):
        bar.update(done, force=True)
    bar.close()
    text = terminal.getvalue()
    assert text.count("\r") >= 10 and text.endswith("\n")
    assert "40/40 data keys 100.0%" in text and "[" + "#" * 30 + "]" in text

    log = io.StringIO()
    bar = Progress(1000, log)
    for done in range(0, 1001):
        bar.update(done)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert len(lines) == 11, lines  # 0 %, then one line per 10 %
    assert lines[-1] == "rewrap: 1000/1000 data keys (100%)"
