"""Settings: one typed object built from an optional TOML file plus ``VAULT_*`` environment.

Environment variables override the file. Everything is validated here, at start, so a
bad configuration stops the process with a clear message before anything listens or
touches the database. No error message ever contains key material or a token.
"""

from __future__ import annotations

import base64
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaultsvc.auth import ROLES, TokenEntry
from vaultsvc.crypto import Keyring, KeyringError, load_key_file, parse_master_keys

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATA_DIR = "./.vault-data"
_TOKEN_HASH = re.compile(r"^[0-9a-f]{64}$")
_PRINCIPAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")


class ConfigError(ValueError):
    """The configuration is unusable; the message says what to fix."""


@dataclass(frozen=True)
class DatabaseSettings:
    url: str | None = None
    pool_min_size: int = 1
    pool_max_size: int = 10
    connect_timeout: float = 5.0
    acquire_timeout: float = 5.0
    command_timeout: float = 10.0
    statement_timeout_ms: int = 10_000


@dataclass(frozen=True)
class ClientPrincipal:
    """Maps a client certificate subject (mTLS) to a principal and role."""

    subject_cn: str
    principal: str
    role: str


@dataclass(frozen=True)
class TLSSettings:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    require_client_cert: bool = False
    client_principals: tuple[ClientPrincipal, ...] = ()


@dataclass(frozen=True)
class Settings:
    listen: str = DEFAULT_LISTEN
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    keyring: Keyring | None = None
    tokens: tuple[TokenEntry, ...] = ()
    tls: TLSSettings | None = None
    allow_plaintext_non_loopback: bool = False
    log_level: str = "INFO"
    log_format: str = "json"
    grace_period: float = 10.0
    shutdown_delay: float = 1.0
    max_concurrent_rpcs: int = 256
    max_receive_message_bytes: int = 4 * 1024 * 1024 + 64 * 1024
    rpc_timeout_cap: float = 30.0
    audit_buffer_size: int = 10_000
    audit_flush_interval: float = 0.2

    def require_keyring(self) -> Keyring:
        if self.keyring is None:
            raise ConfigError(
                "no master keys configured: set VAULT_MASTER_KEYS=id:base64key "
                "(generate one with `python -m vaultsvc keys generate`) or [[master_keys]] "
                "in the config file"
            )
        return self.keyring


def _parse_tokens(spec: str, source: str) -> tuple[TokenEntry, ...]:
    entries: list[TokenEntry] = []
    for position, raw in enumerate(spec.split(","), start=1):
        item = raw.strip()
        if not item:
            continue
        parts = item.split(":")
        if len(parts) != 3:
            raise ConfigError(
                f"{source}: entry {position} must be principal:role:sha256hex "
                "(only the SHA-256 hash of a token belongs in config)"
            )
        entries.append(
            validate_token_entry(parts[0], parts[1], parts[2], f"{source} entry {position}")
        )
    return tuple(entries)


def validate_token_entry(principal: str, role: str, digest: str, where: str) -> TokenEntry:
    principal, role, digest = principal.strip(), role.strip(), digest.strip().lower()
    if not _PRINCIPAL.match(principal):
        raise ConfigError(f"{where}: invalid principal name")
    if role not in ROLES:
        raise ConfigError(
            f"{where}: unknown role {role!r} for principal {principal}; "
            f"use one of {', '.join(sorted(ROLES))}"
        )
    if not _TOKEN_HASH.match(digest):
        raise ConfigError(
            f"{where}: principal {principal} needs the token's SHA-256 as 64 hex characters "
            "(`python -m vaultsvc token create` prints it)"
        )
    return TokenEntry(principal=principal, role=role, sha256=bytes.fromhex(digest))


def _keyring_from_file(entries: Any, base: Path) -> Keyring:
    if not isinstance(entries, list) or not entries:
        raise ConfigError("master_keys must be a non-empty array of tables")
    specs: list[str] = []
    for position, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or "id" not in entry:
            raise ConfigError(f"master_keys entry {position} needs an id")
        key_id = str(entry["id"])
        if "key_file" in entry:
            try:
                material = load_key_file(base / str(entry["key_file"]))
            except KeyringError as exc:
                raise ConfigError(f"master key {key_id!r}: {exc}") from None
            specs.append(f"{key_id}:{base64.b64encode(material).decode()}")
        elif "key" in entry:
            specs.append(f"{key_id}:{entry['key']}")
        else:
            raise ConfigError(f"master key {key_id} needs `key` or `key_file`")
    try:
        return parse_master_keys(",".join(specs))
    except KeyringError as exc:
        raise ConfigError(str(exc)) from None


def _number(table: Mapping[str, Any], key: str, default: float, *, minimum: float) -> float:
    value = table.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key} must be a number >= {minimum}")
    return float(value)


def _int(table: Mapping[str, Any], key: str, default: int, *, minimum: int) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}")
    return value


def _tls(table: Any, base: Path) -> TLSSettings:
    if not isinstance(table, dict):
        raise ConfigError("[tls] must be a table")
    try:
        cert = base / str(table["cert_file"])
        key = base / str(table["key_file"])
    except KeyError:
        raise ConfigError("[tls] needs cert_file and key_file") from None
    ca = table.get("client_ca_file")
    principals: list[ClientPrincipal] = []
    for position, entry in enumerate(table.get("client_principals", []), start=1):
        try:
            cp = ClientPrincipal(
                str(entry["subject_cn"]), str(entry["principal"]), str(entry["role"])
            )
        except (KeyError, TypeError):
            raise ConfigError(
                f"[[tls.client_principals]] entry {position} needs subject_cn, principal, role"
            ) from None
        if cp.role not in ROLES:
            raise ConfigError(f"[[tls.client_principals]] entry {position}: unknown role")
        principals.append(cp)
    for path in (cert, key):
        if not path.is_file():
            raise ConfigError(f"TLS file not found: {path}")
    ca_path = base / str(ca) if ca else None
    if ca_path is not None and not ca_path.is_file():
        raise ConfigError(f"TLS client CA file not found: {ca_path}")
    return TLSSettings(
        cert_file=cert,
        key_file=key,
        client_ca_file=ca_path,
        require_client_cert=bool(table.get("require_client_cert", ca_path is not None)),
        client_principals=tuple(principals),
    )


def load_settings(
    config_file: Path | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Build Settings from the TOML file (optional) and the environment (wins)."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    base = Path.cwd()
    if config_file is not None:
        try:
            data = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {config_file}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from None
        base = config_file.resolve().parent

    db_table = data.get("database", {})
    server_table = data.get("server", {})
    if not isinstance(db_table, dict) or not isinstance(server_table, dict):
        raise ConfigError("[database] and [server] must be tables")

    keyring: Keyring | None = None
    if env.get("VAULT_MASTER_KEYS"):
        try:
            keyring = parse_master_keys(env["VAULT_MASTER_KEYS"])
        except KeyringError as exc:
            raise ConfigError(f"VAULT_MASTER_KEYS: {exc}") from None
    elif "master_keys" in data:
        keyring = _keyring_from_file(data["master_keys"], base)

    if env.get("VAULT_TOKENS"):
        tokens = _parse_tokens(env["VAULT_TOKENS"], "VAULT_TOKENS")
    else:
        tokens = tuple(
            validate_token_entry(
                str(t.get("principal", "")),
                str(t.get("role", "")),
                str(t.get("sha256", "")),
                f"[[tokens]] entry {i}",
            )
            for i, t in enumerate(data.get("tokens", []), start=1)
        )

    listen = env.get("VAULT_LISTEN") or str(data.get("listen", DEFAULT_LISTEN))
    if not re.match(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$", listen):
        raise ConfigError(f"listen address must be host:port, got {listen!r}")

    database = DatabaseSettings(
        url=env.get("VAULT_DATABASE_URL") or db_table.get("url") or data.get("database_url"),
        pool_min_size=_int(db_table, "pool_min_size", 1, minimum=0),
        pool_max_size=_int(db_table, "pool_max_size", 10, minimum=1),
        connect_timeout=_number(db_table, "connect_timeout", 5.0, minimum=0.1),
        acquire_timeout=_number(db_table, "acquire_timeout", 5.0, minimum=0.1),
        command_timeout=_number(db_table, "command_timeout", 10.0, minimum=0.1),
        statement_timeout_ms=_int(db_table, "statement_timeout_ms", 10_000, minimum=100),
    )
    log_level = (env.get("VAULT_LOG_LEVEL") or str(data.get("log_level", "INFO"))).upper()
    if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError("log_level must be DEBUG, INFO, WARNING or ERROR")
    log_format = env.get("VAULT_LOG_FORMAT") or str(data.get("log_format", "json"))
    if log_format not in {"json", "text"}:
        raise ConfigError("log_format must be json or text")

    return Settings(
        listen=listen,
        data_dir=Path(env.get("VAULT_DATA_DIR") or str(data.get("data_dir", DEFAULT_DATA_DIR))),
        database=database,
        keyring=keyring,
        tokens=tokens,
        tls=_tls(data["tls"], base) if "tls" in data else None,
        allow_plaintext_non_loopback=bool(server_table.get("allow_plaintext_non_loopback", False))
        or env.get("VAULT_ALLOW_PLAINTEXT") == "1",
        log_level=log_level,
        log_format=log_format,
        grace_period=_number(server_table, "grace_period", 10.0, minimum=0),
        shutdown_delay=_number(server_table, "shutdown_delay", 1.0, minimum=0),
        max_concurrent_rpcs=_int(server_table, "max_concurrent_rpcs", 256, minimum=1),
        rpc_timeout_cap=_number(server_table, "rpc_timeout_cap", 30.0, minimum=0.1),
        audit_buffer_size=_int(server_table, "audit_buffer_size", 10_000, minimum=1),
    )
