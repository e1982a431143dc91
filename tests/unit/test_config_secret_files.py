"""``master_keys_file`` and ``tokens_file``: credentials from mounted files (a Kubernetes
Secret), in the environment variables' form, refused unless the file is private enough."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from vaultsvc.config import MAX_SECRET_FILE_BYTES, ConfigError, Settings, load_settings

KEY_A = base64.b64encode(os.urandom(32)).decode()
KEY_B = base64.b64encode(os.urandom(32)).decode()
HASH_A = "ab" * 32
HASH_B = "cd" * 32


def secret_file(path: Path, text: str, mode: int = 0o400) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def load(tmp_path: Path, toml: str | None = None, **env: str) -> Settings:
    config = None
    if toml is not None:
        config = tmp_path / "vault.toml"
        config.write_text(toml, encoding="utf-8")
    return load_settings(config, env)


def error_of(tmp_path: Path, toml: str | None = None, **env: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, toml, **env)
    message = str(info.value)
    assert KEY_A not in message and KEY_B not in message
    return message


def test_keys_and_tokens_from_files_one_entry_per_line(tmp_path: Path) -> None:
    keys = secret_file(tmp_path / "master-keys", f"# primary first\nnew:{KEY_A}\n\nold:{KEY_B}\n")
    tokens = secret_file(
        tmp_path / "tokens",
        f"ops:admin:{HASH_A}\n# the executors\nrunner:resolver:{HASH_B}:payments_*|db_password\n",
    )
    settings = load(tmp_path, VAULT_MASTER_KEYS_FILE=str(keys), VAULT_TOKENS_FILE=str(tokens))
    assert settings.keyring is not None
    assert settings.keyring.primary.key_id == "new"
    assert settings.keyring.ids == ("new", "old")
    assert settings.keyring.get("new").material == base64.b64decode(KEY_A)
    assert [(t.principal, t.role, t.sha256.hex(), t.scopes) for t in settings.tokens] == [
        ("ops", "admin", HASH_A, ()),
        ("runner", "resolver", HASH_B, ("payments_*", "db_password")),
    ]
    assert settings.master_keys_file == keys and settings.tokens_file == tokens


def test_comma_separated_form_and_paths_relative_to_the_config_file(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    folder.mkdir()
    secret_file(folder / "keys", f"new:{KEY_A},old:{KEY_B}")
    secret_file(folder / "tokens", f"ops:admin:{HASH_A},cli:viewer:{HASH_B}\n")
    settings = load(tmp_path, 'master_keys_file = "secrets/keys"\ntokens_file = "secrets/tokens"\n')
    assert settings.keyring is not None
    assert settings.keyring.ids == ("new", "old")
    assert [t.principal for t in settings.tokens] == ["ops", "cli"]


def test_a_symlinked_file_is_read_as_kubernetes_mounts_secrets(tmp_path: Path) -> None:
    data = tmp_path / "..data"
    data.mkdir()
    secret_file(data / "master-keys", f"k1:{KEY_A}\n", 0o440)
    link = tmp_path / "master-keys"
    link.symlink_to(data / "master-keys")
    settings = load(tmp_path, VAULT_MASTER_KEYS_FILE=str(link))
    assert settings.keyring is not None and settings.keyring.primary.key_id == "k1"


@pytest.mark.parametrize("mode", [0o444, 0o404, 0o402, 0o460, 0o600 | 0o020, 0o401])
def test_files_others_may_read_or_write_or_the_group_may_write_are_refused(
    tmp_path: Path, mode: int
) -> None:
    keys = secret_file(tmp_path / "master-keys", f"k1:{KEY_A}\n", mode)
    message = error_of(tmp_path, VAULT_MASTER_KEYS_FILE=str(keys))
    assert f"master_keys_file {keys} has mode {mode:04o}" in message
    tokens = secret_file(tmp_path / "tokens", f"ops:admin:{HASH_A}\n", mode)
    assert "tokens_file" in error_of(tmp_path, VAULT_TOKENS_FILE=str(tokens))


@pytest.mark.parametrize("mode", [0o400, 0o440, 0o600, 0o640])
def test_owner_and_group_read_are_allowed(tmp_path: Path, mode: int) -> None:
    keys = secret_file(tmp_path / "master-keys", f"k1:{KEY_A}\n", mode)
    assert load(tmp_path, VAULT_MASTER_KEYS_FILE=str(keys)).keyring is not None


def test_a_value_and_a_file_for_the_same_setting_are_refused(tmp_path: Path) -> None:
    keys = secret_file(tmp_path / "master-keys", f"k1:{KEY_A}\n")
    message = error_of(tmp_path, VAULT_MASTER_KEYS_FILE=str(keys), VAULT_MASTER_KEYS=f"k2:{KEY_B}")
    assert message == "set master_keys or master_keys_file, not both"
    tokens = secret_file(tmp_path / "tokens", f"ops:admin:{HASH_A}\n")
    toml = f'[[tokens]]\nprincipal = "a"\nrole = "admin"\nsha256 = "{HASH_B}"\n'
    assert error_of(tmp_path, toml, VAULT_TOKENS_FILE=str(tokens)) == (
        "set tokens or tokens_file, not both"
    )


def test_missing_empty_oversized_or_malformed_files_are_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert f"cannot read master_keys_file {missing}" in error_of(
        tmp_path, VAULT_MASTER_KEYS_FILE=str(missing)
    )
    empty = secret_file(tmp_path / "empty", "# nothing yet\n\n")
    assert error_of(tmp_path, VAULT_TOKENS_FILE=str(empty)) == (
        f"tokens_file {empty} holds no entries"
    )
    big = secret_file(tmp_path / "big", "#" * (MAX_SECRET_FILE_BYTES + 1))
    assert "larger than" in error_of(tmp_path, VAULT_MASTER_KEYS_FILE=str(big))
    short = base64.b64encode(os.urandom(16)).decode()
    bad_key = secret_file(tmp_path / "bad-key", f"k1:{short}\n")
    message = error_of(tmp_path, VAULT_MASTER_KEYS_FILE=str(bad_key))
    assert message.startswith(f"master_keys_file {bad_key}: ") and short not in message
    bad_token = secret_file(tmp_path / "bad-token", "ops:admin:not-a-hash\n")
    assert f"tokens_file {bad_token} entry 1" in error_of(
        tmp_path, VAULT_TOKENS_FILE=str(bad_token)
    )
    not_text = tmp_path / "binary"
    not_text.write_bytes(b"\xff\xfe\x00")
    not_text.chmod(0o400)
    assert "not UTF-8" in error_of(tmp_path, VAULT_MASTER_KEYS_FILE=str(not_text))
