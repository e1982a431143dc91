"""Start-up key checks, key registration, key files, and wrap counting with its warnings.

A refused start must name the key id and what to do, exit non-zero, never print key
material, and write NOTHING: every refusal compares a fingerprint of the whole database
(relations, every row, per-table write counters, master_keys, schema_migrations) taken
before and after.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
from interakt.vault.v1 import secret_service_pb2 as spb

from tests.support.cli import cli_env, run_cli, serve_env
from tests.support.keys import (
    Key,
    assert_no_key_material,
    create_secrets,
    db_fingerprint,
    keyring_spec,
    new_key,
    resolve_all,
    wrap_counts,
)
from tests.support.rpc import secrets_admin
from tests.support.vault import (
    LogCapture,
    VaultFactory,
    create_database,
    make_settings,
    sql,
    vault_server,
)
from vaultsvc.bootstrap import StartupError
from vaultsvc.cli.keys import rewrap_all
from vaultsvc.config import ConfigError, load_settings
from vaultsvc.crypto import NONCE_WARN_THRESHOLD, KeyringError
from vaultsvc.server import start_server, stop_server
from vaultsvc.storage.embedded import EmbeddedPostgres

SERVE_TIMEOUT = 60.0


async def populated(
    pg: EmbeddedPostgres, keyring: str, names: tuple[str, ...] = ("alpha", "beta")
) -> tuple[str, dict[str, str]]:
    """A fresh database holding a few secrets written under ``keyring``; no server left running."""
    url = await create_database(pg)
    values = {name: f"value-of-{name}" for name in names}
    async with vault_server(url, keyring) as vault:
        await create_secrets(vault, values)
    return url, values


async def refused_in_process(url: str, master_keys: str) -> str:
    settings, _, _ = make_settings(url, master_keys=master_keys)
    with pytest.raises(StartupError) as info:
        await start_server(settings)
    return str(info.value)


# --------------------------------------------------------------------- refusals


async def test_wrong_key_is_refused_in_process_with_zero_writes(
    pg: EmbeddedPostgres, log_capture: LogCapture
) -> None:
    good = new_key("k1")
    url, values = await populated(pg, good.spec)
    wrong = Key("k1", new_key("k1").b64)
    before = await db_fingerprint(url)
    logs_from = log_capture.mark()

    message = await refused_in_process(url, wrong.spec)

    assert "'k1'" in message
    assert "does not match" in message and "VAULT_MASTER_KEYS" in message
    assert_no_key_material(message + log_capture.text(logs_from), good, wrong)
    assert await db_fingerprint(url) == before
    # The right key still works afterwards: nothing was damaged.
    async with vault_server(url, good.spec) as vault:
        await resolve_all(vault, values)


async def test_wrong_key_is_refused_by_serve_subprocess_with_zero_writes(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    good = new_key("k1")
    url, _ = await populated(pg, good.spec)
    wrong = Key("k1", new_key("k1").b64)
    before = await db_fingerprint(url)

    done = await run_cli(["serve"], serve_env(url, wrong.spec, tmp_path), SERVE_TIMEOUT)

    assert done.returncode != 0
    assert "master key 'k1' does not match" in done.stderr
    assert "VAULT_MASTER_KEYS" in done.stderr
    assert "vault listening" not in done.output
    assert_no_key_material(done.output, good, wrong)
    assert await db_fingerprint(url) == before


async def test_wrong_key_for_a_retired_key_id_is_refused(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """A new primary is fine, but a wrong key under a known old id refuses, and the new
    primary is NOT registered (no write happens before every check passed)."""
    old = new_key("old")
    url, _ = await populated(pg, old.spec)
    new = new_key("new")
    wrong_old = Key("old", new_key("old").b64)
    before = await db_fingerprint(url)

    message = await refused_in_process(url, keyring_spec(new, wrong_old))
    done = await run_cli(
        ["serve"], serve_env(url, keyring_spec(new, wrong_old), tmp_path), SERVE_TIMEOUT
    )

    assert "'old'" in message and "does not match" in message
    assert done.returncode != 0 and "master key 'old' does not match" in done.stderr
    assert_no_key_material(message + done.output, old, new, wrong_old)
    after = await db_fingerprint(url)
    assert after == before
    assert [k for k, _, _ in after["master_keys"]] == ["old"]


async def test_missing_key_still_in_use_is_refused_with_zero_writes(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    old = new_key("old")
    url, _ = await populated(pg, old.spec, names=("alpha", "beta", "gamma"))
    new = new_key("new")
    before = await db_fingerprint(url)

    message = await refused_in_process(url, new.spec)
    done = await run_cli(["serve"], serve_env(url, new.spec, tmp_path), SERVE_TIMEOUT)

    for text in (message, done.stderr):
        assert "master key 'old' still wraps 3 data key(s)" in text
        assert "Add it back to VAULT_MASTER_KEYS" in text
        assert "keys rewrap" in text
    assert done.returncode != 0
    assert_no_key_material(message + done.output, old, new)
    after = await db_fingerprint(url)
    assert after == before
    assert [k for k, _, _ in after["master_keys"]] == ["old"], "'new' must not be registered"


BAD_KEYS = {
    "malformed": "not*base64!",
    "short": base64.b64encode(b"\x01" * 16).decode(),
    "long": base64.b64encode(b"\x02" * 48).decode(),
    "empty": "",
}


@pytest.mark.parametrize("kind", sorted(BAD_KEYS))
async def test_malformed_or_short_key_is_refused_with_zero_writes(
    pg: EmbeddedPostgres, tmp_path: Path, kind: str
) -> None:
    good = new_key("k1")
    url, _ = await populated(pg, good.spec)
    bad_text = BAD_KEYS[kind]
    spec = f"{good.spec},broken:{bad_text}"
    before = await db_fingerprint(url)

    with pytest.raises(ConfigError) as info:
        load_settings(None, {"VAULT_MASTER_KEYS": spec, "VAULT_DATABASE_URL": url})
    done = await run_cli(["serve"], serve_env(url, spec, tmp_path), SERVE_TIMEOUT)

    assert done.returncode != 0
    for text in (str(info.value), done.stderr):
        assert "VAULT_MASTER_KEYS" in text and "'broken'" in text
        assert "32 random bytes" in text
    assert_no_key_material(done.output + str(info.value), good)
    if bad_text:
        assert bad_text not in done.output and bad_text not in str(info.value)
    assert await db_fingerprint(url) == before


async def test_keys_commands_refuse_a_wrong_key_with_zero_writes(pg: EmbeddedPostgres) -> None:
    good = new_key("k1")
    url, _ = await populated(pg, good.spec)
    wrong = Key("k1", new_key("k1").b64)
    before = await db_fingerprint(url)

    for command in (["keys", "status"], ["keys", "rewrap"]):
        done = await run_cli(command, cli_env(url, wrong.spec))
        assert done.returncode == 2, (command, done.stderr)
        assert "master key 'k1' does not match" in done.stderr
        assert_no_key_material(done.output, good, wrong)
    assert await db_fingerprint(url) == before


async def test_fingerprint_sees_a_registration(pg: EmbeddedPostgres) -> None:
    """The zero-writes detector is not blind: an unknown key id in the config is fine,
    the server starts, and the id is registered (with its check value, never the key)."""
    k1 = new_key("k1")
    url, values = await populated(pg, k1.spec)
    extra = new_key("extra")
    before = await db_fingerprint(url)

    async with vault_server(url, keyring_spec(k1, extra)) as vault:
        await resolve_all(vault, values)
    after = await db_fingerprint(url)

    assert [k for k, _, _ in before["master_keys"]] == ["k1"]
    assert [k for k, _, _ in after["master_keys"]] == ["extra", "k1"]
    assert after["content"]["public.master_keys"] != before["content"]["public.master_keys"]
    assert after["counters"]["master_keys"] != before["counters"]["master_keys"]
    rows = await sql(url, "SELECT * FROM master_keys")
    assert_no_key_material(repr([dict(r) for r in rows]), k1, extra)


# ------------------------------------------------------------------ key files


async def test_toml_config_with_key_files(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    old, new = new_key("old"), new_key("new")
    url, values = await populated(pg, old.spec)
    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    (key_dir / "new.key").write_text(new.b64 + "\n")
    (key_dir / "old.key").write_text(f"  {old.b64}  \n")
    config = tmp_path / "vault.toml"
    config.write_text(
        f'[database]\nurl = "{url}"\n\n'
        '[[master_keys]]\nid = "new"\nkey_file = "keys/new.key"\n\n'
        '[[master_keys]]\nid = "old"\nkey_file = "keys/old.key"\n'
    )

    settings = load_settings(config, {})
    assert settings.keyring is not None and settings.keyring.ids == ("new", "old")
    assert settings.database.url == url
    base, _, _ = make_settings(url, master_keys=keyring_spec(new, old))
    runtime_settings = replace(base, keyring=settings.keyring)
    runtime = await start_server(runtime_settings)
    try:
        assert await wrap_counts(url) == {"old": 2, "new": 0}
    finally:
        await stop_server(runtime, grace=0.5)
    async with vault_server(url, keyring_spec(new, old)) as vault:
        await resolve_all(vault, values)

    # The CLI reads the same file (no VAULT_* in its environment at all).
    done = await run_cli(["keys", "status", "--config", str(config), "--json"], cli_env(None, None))
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["primary"] == "new"
    by_id = {k["key_id"]: k for k in status["keys"]}
    assert by_id["old"]["data_keys"] == 2 and by_id["old"]["configured"]
    assert by_id["new"]["primary"] and by_id["new"]["data_keys"] == 0
    assert_no_key_material(done.output, old, new)

    # A damaged key file is refused, naming the file and never echoing its content.
    # (load_key_file raises KeyringError, which config.py does not turn into ConfigError;
    # the CLI maps both to exit 2.)
    (key_dir / "new.key").write_text("c2hvcnQ=\n")
    with pytest.raises((ConfigError, KeyringError)) as info:
        load_settings(config, {})
    assert "new.key" in str(info.value) and "c2hvcnQ" not in str(info.value)
    done = await run_cli(["keys", "status", "--config", str(config)], cli_env(None, None))
    assert done.returncode == 2 and "new.key" in done.stderr and "c2hvcnQ" not in done.output


# ---------------------------------------------------------------- wrap counting


def _warnings_since(log_capture: LogCapture, start: int) -> list[dict[str, object]]:
    records = log_capture.records(start)
    return [r for r in records if r.get("level") == "WARNING" and "wrapped" in str(r.get("msg"))]


async def test_wrap_count_warns_once_when_a_write_crosses_the_threshold(
    make_vault: VaultFactory, log_capture: LogCapture
) -> None:
    vault = await make_vault()
    primary = vault.settings.keyring.primary.key_id  # type: ignore[union-attr]
    stub = secrets_admin(vault)
    await vault.sql(
        "UPDATE master_keys SET wrap_count = $2 WHERE key_id = $1",
        primary,
        NONCE_WARN_THRESHOLD - 1,
    )
    start = log_capture.mark()

    await stub.CreateSecret(spb.CreateSecretRequest(name="first", value="v1"), timeout=10)

    warned = _warnings_since(log_capture, start)
    assert len(warned) == 1, warned
    assert warned[0]["key_id"] == primary
    assert warned[0]["wrap_count"] == NONCE_WARN_THRESHOLD
    assert primary in str(warned[0]["msg"]) and str(NONCE_WARN_THRESHOLD) in str(warned[0]["msg"])

    start = log_capture.mark()
    await stub.CreateSecret(spb.CreateSecretRequest(name="second", value="v2"), timeout=10)
    await stub.UpdateSecret(spb.UpdateSecretRequest(name="first", value="v1b"), timeout=10)
    assert _warnings_since(log_capture, start) == [], "warn once, when crossing"
    assert await wrap_counts(vault.database_url) == {primary: NONCE_WARN_THRESHOLD + 2}


async def test_wrap_count_warns_at_start_up(pg: EmbeddedPostgres, log_capture: LogCapture) -> None:
    k1 = new_key("k1")
    url, _ = await populated(pg, k1.spec)
    await sql(url, "UPDATE master_keys SET wrap_count = $1", NONCE_WARN_THRESHOLD + 7)
    start = log_capture.mark()
    async with vault_server(url, k1.spec):
        pass
    warned = _warnings_since(log_capture, start)
    assert len(warned) == 1
    assert "'k1'" in str(warned[0]["msg"]) and str(NONCE_WARN_THRESHOLD + 7) in str(
        warned[0]["msg"]
    )


async def test_wrap_count_follows_every_wrap(pg: EmbeddedPostgres) -> None:
    """+1 per value sealed (create, value update), nothing for metadata-only changes or
    failures, +n under the new primary for n rewrapped data keys (old key unchanged)."""
    old, new = new_key("old"), new_key("new")
    url = await create_database(pg)
    async with vault_server(url, old.spec) as vault:
        stub = secrets_admin(vault)
        await create_secrets(vault, {f"s{i}": f"v{i}" for i in range(5)})
        assert await wrap_counts(url) == {"old": 5}
        await stub.UpdateSecret(spb.UpdateSecretRequest(name="s0", value="v0b"), timeout=10)
        await stub.UpdateSecret(
            spb.UpdateSecretRequest(name="s1", description="metadata only"), timeout=10
        )
        await stub.UpdateSecret(spb.UpdateSecretRequest(name="s2", value=""), timeout=10)
        await stub.DeleteSecret(spb.DeleteSecretRequest(name="s4"), timeout=10)
        with pytest.raises(Exception, match=r"ALREADY_EXISTS|already exists"):
            await stub.CreateSecret(spb.CreateSecretRequest(name="S3", value="x"), timeout=10)
        assert await wrap_counts(url) == {"old": 6}

    async with vault_server(url, keyring_spec(new, old)) as vault:
        await secrets_admin(vault).UpdateSecret(
            spb.UpdateSecretRequest(name="s3", value="v3b"), timeout=10
        )
        assert await wrap_counts(url) == {"old": 6, "new": 1}
        settings = load_settings(
            None, {"VAULT_MASTER_KEYS": keyring_spec(new, old), "VAULT_DATABASE_URL": url}
        )
        outcome = await rewrap_all(settings, batch_size=2, progress_stream=io.StringIO())
        # Every retained version moves: s0 v1 and v2, s1, s2, s3 v1 and the restorable
        # (scheduled for deletion) s4.
        assert (outcome.rewrapped, outcome.remaining, outcome.unreadable) == (6, 0, ())
        assert await wrap_counts(url) == {"old": 6, "new": 7}
        await resolve_all(vault, {"s0": "v0b", "s1": "v1", "s2": "v2", "s3": "v3b"})
