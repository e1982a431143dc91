"""The command line's surface: ``--version``, ``dev --help`` (its options and the environment
it reads, from the settings table) and the variables ``dev`` ignores."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from tests.support.cli import cli_env, run_cli, start_serve
from tests.support.vault import create_database
from vaultsvc.cli.serve import DEV_IGNORED
from vaultsvc.config import SETTINGS
from vaultsvc.storage.embedded import EmbeddedPostgres


async def test_version_names_the_server_and_the_contract() -> None:
    done = await run_cli(["--version"])
    assert done.returncode == 0
    expected = (
        f"vaultsvc {metadata.version('vaultsvc')} "
        f"(interakt-vault-api {metadata.version('interakt-vault-api')})\n"
    )
    assert done.stdout == expected


async def test_help_lists_every_command() -> None:
    done = await run_cli(["--help"])
    assert done.returncode == 0
    for command in ("serve", "dev", "migrate", "token", "keys", "health"):
        assert command in done.stdout


async def test_dev_help_documents_its_options_and_environment() -> None:
    done = await run_cli(["dev", "--help"])
    assert done.returncode == 0
    text = done.stdout
    assert "usage: python -m vaultsvc dev [-h]" in text
    assert "NOT for production" in text and "dev-credentials.json" in text
    listed = [line.strip() for line in text.splitlines() if line.startswith("  VAULT_")]
    assert listed == [s.env for s in SETTINGS if s.key not in DEV_IGNORED]
    assert "ignored: VAULT_MASTER_KEYS, VAULT_MASTER_KEYS_FILE, VAULT_TOKENS" in text
    assert "[dev default: text]" in text and "[dev default: 127.0.0.1:8250]" in text


async def test_dev_ignores_the_key_and_token_variables_of_serve(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    env = cli_env(
        await create_database(pg),
        "not-a-keyring",
        VAULT_DATA_DIR=str(tmp_path / "dev"),
        VAULT_CONSOLE_LISTEN="127.0.0.1:0",
        VAULT_MASTER_KEYS_FILE=str(tmp_path / "missing"),
        VAULT_TOKENS="not:a:token",
        VAULT_TOKENS_FILE=str(tmp_path / "missing-too"),
    )
    dev = await start_serve(env, tmp_path / "dev.log", command="dev")
    assert await dev.stop() == 0, dev.stderr()
