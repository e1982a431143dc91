"""Settings: one typed object built from an optional TOML file plus ``VAULT_*`` environment.

Every setting is declared once, in ``SETTINGS``: its key in the TOML file, its environment
variable, its kind (which parser and which bounds), its default and its help text. Loading
from the file and the environment, the refusal of unknown keys, the dataclass defaults and
the README table (``python -m vaultsvc.config``) are all driven by that one table.

- Environment variables override the file; an empty variable counts as unset.
- An unknown key anywhere in the file is refused, naming the key and the nearest valid one.
- An unknown ``VAULT_*`` variable only warns: client tools (``vaultctl``, HashiCorp's
  ``vault``) share the prefix, and their names in ``CLIENT_ENVIRONMENT`` are ignored quietly.
- Relative paths in the file are relative to the file's directory (``data_dir`` excepted:
  relative to the working directory); relative paths in the environment are relative to the
  working directory.

Everything is validated here, at start, so a bad configuration stops the process with a
clear message before anything listens or touches the database. No error message ever
contains key material, a token or a database URL.
"""

from __future__ import annotations

import base64
import difflib
import logging
import math
import os
import re
import stat
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from vaultsvc.auth import RESOLVER, ROLES, TokenEntry
from vaultsvc.crypto import Keyring, KeyringError, load_key_file, parse_master_keys
from vaultsvc.names import SCOPE_PATTERN

_log = logging.getLogger(__name__)

_TOKEN_HASH = re.compile(r"^[0-9a-f]{64}$")
PRINCIPAL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")
_PRINCIPAL = PRINCIPAL_PATTERN
_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ConfigError(ValueError):
    """The configuration is unusable; the message says what to fix."""


Kind = Literal[
    "address",
    "str",
    "path",
    "int",
    "float",
    "bool",
    "choice",
    "keys",
    "tokens",
    "principals",
    "workers",
]


@dataclass(frozen=True)
class Setting:
    """One configuration setting, as both sources spell it."""

    key: str
    """Path in the TOML file: ``listen``, ``database.pool_max_size``, ``tls.cert_file``."""
    env: str
    """The environment variable that overrides it."""
    attr: str
    """Where the value lands: a ``Settings`` field, or ``database.X`` / ``tls.X``."""
    kind: Kind
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    """For an array of tables (``[[tokens]]``): the keys each entry may have."""
    secret: bool = False
    """Never echo the value in an error (a database URL may hold a password)."""
    default_doc: str | None = None
    """How the README shows a default that depends on another setting."""


#: The one declaration of every setting (and of every default).
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "listen", "VAULT_LISTEN", "listen", "address", "127.0.0.1:50051",
        "address the gRPC server listens on (port 0: any free port)",
    ),
    Setting(
        "workers", "VAULT_WORKERS", "workers", "workers", 1,
        "worker processes sharing the listen port, each with its own database pool "
        "(`auto`: one per CPU this process may use, within its affinity and cgroup CPU limit)",
        minimum=1,
    ),
    Setting(
        "data_dir", "VAULT_DATA_DIR", "data_dir", "path", Path(".vault-data"),
        "embedded Postgres data (and dev credentials), relative to the working directory",
    ),
    Setting(
        "log_level", "VAULT_LOG_LEVEL", "log_level", "choice", "INFO",
        "log threshold (case-insensitive)",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
    ),
    Setting(
        "log_format", "VAULT_LOG_FORMAT", "log_format", "choice", "json",
        "one JSON object per line, or text for people",
        choices=("json", "text"),
    ),
    Setting(
        "master_keys", "VAULT_MASTER_KEYS", "keyring", "keys", None,
        "master keys, 32 bytes each, first = primary for new writes; in the file "
        "`[[master_keys]]` tables with `id` and `key` or `key_file`",
        fields=("id", "key", "key_file"), secret=True, default_doc="required by `serve`",
    ),
    Setting(
        "tokens", "VAULT_TOKENS", "tokens", "tokens", (),
        "bearer tokens by SHA-256 (hashes only, never tokens; "
        "`python -m vaultsvc token create` prints both forms); a resolver token may end in "
        "`:scope1\\|scope2` (secret-name patterns such as `payments_*`); in the file "
        "`[[tokens]]` tables (`scopes` a list)",
        fields=("principal", "role", "sha256", "scopes"), default_doc="none",
    ),
    Setting(
        "master_keys_file", "VAULT_MASTER_KEYS_FILE", "master_keys_file", "path", None,
        "file holding `master_keys` in the environment form, one `id:base64key` per line or "
        "comma-separated, primary first (a mounted Secret); not readable or writable by "
        "others, not group-writable; excludes `master_keys`",
        default_doc="unset",
    ),
    Setting(
        "tokens_file", "VAULT_TOKENS_FILE", "tokens_file", "path", None,
        "file holding `tokens` in the environment form, one entry per line or "
        "comma-separated, `#` comments (a mounted Secret); same permission rules as "
        "`master_keys_file`; excludes `tokens`",
        default_doc="unset",
    ),
    Setting(
        "database.url", "VAULT_DATABASE_URL", "database.url", "str", None,
        "a Postgres URL; unset → embedded Postgres in `data_dir`",
        secret=True, default_doc="unset",
    ),
    Setting(
        "database.direct_url", "VAULT_DATABASE_DIRECT_URL", "database.direct_url", "str", None,
        "a Postgres URL that reaches the server itself, never through a transaction pooler: "
        "for what needs a session (the change listener's LISTEN); required when `pooler` is "
        "`transaction`",
        secret=True, default_doc="`database.url`",
    ),
    Setting(
        "database.pooler", "VAULT_DATABASE_POOLER", "database.pooler", "choice", "none",
        "what `database.url` reaches: `none` (Postgres itself) or `transaction` (a pooler "
        "such as pgbouncer in transaction mode: no prepared statements, no startup "
        "parameters, timeouts set per transaction, every unit of work in a transaction); see "
        "docs/pgbouncer.md",
        choices=("none", "transaction"),
    ),
    Setting(
        "database.pool_min_size", "VAULT_DATABASE_POOL_MIN_SIZE", "database.pool_min_size",
        "int", 1, "connections the pool keeps open", minimum=0,
    ),
    Setting(
        "database.pool_max_size", "VAULT_DATABASE_POOL_MAX_SIZE", "database.pool_max_size",
        "int", 10, "most connections the pool opens (≥ `pool_min_size`)", minimum=1,
    ),
    Setting(
        "database.connect_timeout", "VAULT_DATABASE_CONNECT_TIMEOUT", "database.connect_timeout",
        "float", 5.0, "seconds to open a connection", minimum=0.1,
    ),
    Setting(
        "database.acquire_timeout", "VAULT_DATABASE_ACQUIRE_TIMEOUT", "database.acquire_timeout",
        "float", 5.0, "seconds to wait for a pool connection", minimum=0.1,
    ),
    Setting(
        "database.command_timeout", "VAULT_DATABASE_COMMAND_TIMEOUT", "database.command_timeout",
        "float", 10.0, "client-side bound on every statement, seconds", minimum=0.1,
    ),
    Setting(
        "database.statement_timeout_ms", "VAULT_DATABASE_STATEMENT_TIMEOUT_MS",
        "database.statement_timeout_ms", "int", 10_000,
        "server-side bound on every statement, milliseconds", minimum=100,
    ),
    Setting(
        "database.statement_cache_size", "VAULT_DATABASE_STATEMENT_CACHE_SIZE",
        "database.statement_cache_size", "int", 100,
        "prepared statements cached per connection; 0 turns the cache off "
        "(`pooler = transaction` turns it off)", minimum=0,
    ),
    Setting(
        "database.operation_timeout", "VAULT_DATABASE_OPERATION_TIMEOUT",
        "database.operation_timeout", "float", 12.0,
        "end-to-end bound on one unit of database work (pool wait, statements, commit, "
        "clean-up), seconds; a call's own deadline shortens it. Keep it above "
        "`statement_timeout_ms` so a slow statement is reported as DATABASE_TIMEOUT",
        minimum=0.1,
    ),
    Setting(
        "database.breaker_failures", "VAULT_DATABASE_BREAKER_FAILURES",
        "database.breaker_failures", "int", 3,
        "database failures in a row (unreachable, or no answer within the bound) after which "
        "calls are refused at once (DATABASE_UNAVAILABLE) while a background probe waits for "
        "the database", minimum=1,
    ),
    Setting(
        "database.breaker_probe_interval", "VAULT_DATABASE_BREAKER_PROBE_INTERVAL",
        "database.breaker_probe_interval", "float", 1.0,
        "seconds between background probes while the database is known down",
        minimum=0.01, maximum=60,
    ),
    Setting(
        "tls.cert_file", "VAULT_TLS_CERT_FILE", "tls.cert_file", "path", None,
        "server certificate (PEM); with `key_file` turns TLS on", default_doc="unset (plaintext)",
    ),
    Setting(
        "tls.key_file", "VAULT_TLS_KEY_FILE", "tls.key_file", "path", None,
        "server private key (PEM)", default_doc="unset",
    ),
    Setting(
        "tls.client_ca_file", "VAULT_TLS_CLIENT_CA_FILE", "tls.client_ca_file", "path", None,
        "CA that signs client certificates (mutual TLS)", default_doc="unset",
    ),
    Setting(
        "tls.require_client_cert", "VAULT_TLS_REQUIRE_CLIENT_CERT", "tls.require_client_cert",
        "bool", False, "refuse clients without a certificate signed by `client_ca_file`",
        default_doc="`true` when `client_ca_file` is set",
    ),
    Setting(
        "tls.client_principals", "VAULT_TLS_CLIENT_PRINCIPALS", "tls.client_principals",
        "principals", (),
        "client certificate CN → principal and role; in the file `[[tls.client_principals]]` "
        "tables with `subject_cn`, `principal`, `role`",
        fields=("subject_cn", "principal", "role"), default_doc="none",
    ),
    Setting(
        "server.allow_plaintext_non_loopback", "VAULT_ALLOW_PLAINTEXT",
        "allow_plaintext_non_loopback", "bool", False,
        "allow plaintext on a non-loopback address (it warns)",
    ),
    Setting(
        "server.grace_period", "VAULT_SERVER_GRACE_PERIOD", "grace_period", "float", 10.0,
        "seconds in-flight RPCs get on SIGTERM", minimum=0,
    ),
    Setting(
        "server.shutdown_delay", "VAULT_SERVER_SHUTDOWN_DELAY", "shutdown_delay", "float", 1.0,
        "seconds between reporting NOT_SERVING and draining (within the grace period)",
        minimum=0,
    ),
    Setting(
        "server.max_concurrent_rpcs", "VAULT_SERVER_MAX_CONCURRENT_RPCS", "max_concurrent_rpcs",
        "int", 64, "authenticated calls executing at once; more wait in the admission queue "
        "(health and reflection never do)", minimum=1,
    ),
    Setting(
        "server.max_queued_rpcs", "VAULT_SERVER_MAX_QUEUED_RPCS", "max_queued_rpcs", "int", 64,
        "calls waiting for an execution slot; more are shed at once with UNAVAILABLE "
        "OVERLOADED and RetryInfo", minimum=0,
    ),
    Setting(
        "server.max_queue_wait", "VAULT_SERVER_MAX_QUEUE_WAIT", "max_queue_wait", "float", 1.0,
        "longest a call waits in the admission queue, seconds (then OVERLOADED); a call whose "
        "deadline cannot cover its expected wait is shed at once", minimum=0,
    ),
    Setting(
        "server.adaptive_concurrency", "VAULT_SERVER_ADAPTIVE_CONCURRENCY",
        "adaptive_concurrency", "bool", False, "adapt the number of calls executing at once "
        "(at most `max_concurrent_rpcs`, at least 4) to the measured service time, lowering "
        "it while calls slow down under load (gradient limit); false: `max_concurrent_rpcs`",
    ),
    Setting(
        "server.receive_timeout", "VAULT_SERVER_RECEIVE_TIMEOUT", "receive_timeout", "float",
        10.0, "seconds from a call's start to the arrival of its request message "
        "(DEADLINE_EXCEEDED after)", minimum=0.1,
    ),
    Setting(
        "server.max_streams", "VAULT_SERVER_MAX_STREAMS", "max_streams", "int", 64,
        "Health/Watch and reflection streams open at once; more are refused with "
        "RESOURCE_EXHAUSTED", minimum=1,
    ),
    Setting(
        "server.max_streams_per_connection", "VAULT_SERVER_MAX_STREAMS_PER_CONNECTION",
        "max_streams_per_connection", "int", 128,
        "concurrent HTTP/2 streams one connection may open", minimum=1,
    ),
    Setting(
        "server.max_connection_idle", "VAULT_SERVER_MAX_CONNECTION_IDLE",
        "max_connection_idle", "float", 900.0,
        "seconds a connection without calls stays open", minimum=1,
    ),
    Setting(
        "server.max_connection_age", "VAULT_SERVER_MAX_CONNECTION_AGE",
        "max_connection_age", "float", 1800.0,
        "seconds before a connection is asked to reconnect (GOAWAY; calls in flight get "
        "`rpc_timeout_cap` more)", minimum=1,
    ),
    Setting(
        "server.max_reply_bytes_in_flight", "VAULT_SERVER_MAX_REPLY_BYTES_IN_FLIGHT",
        "max_reply_bytes_in_flight", "int", 256 * 1024 * 1024,
        "bytes of resolve replies not yet taken by their clients, per process; past it "
        "resolves are shed (UNAVAILABLE OVERLOADED)", minimum=4 * 1024 * 1024 + 64 * 1024,
    ),
    Setting(
        "health_db_grace", "VAULT_HEALTH_DB_GRACE", "health_db_grace", "float", 10.0,
        "seconds the database may be unreachable before readiness (health service \"\") "
        "reports NOT_SERVING", minimum=0.1,
    ),
    Setting(
        "server.max_receive_message_bytes", "VAULT_SERVER_MAX_RECEIVE_MESSAGE_BYTES",
        "max_receive_message_bytes", "int", 4 * 1024 * 1024 + 64 * 1024,
        "largest request gRPC accepts (bigger ones never reach the vault); "
        "at least a 1 MiB template plus framing",
        minimum=1024 * 1024 + 64 * 1024, maximum=2**31 - 1,
    ),
    Setting(
        "server.rpc_timeout_cap", "VAULT_SERVER_RPC_TIMEOUT_CAP", "rpc_timeout_cap", "float",
        30.0, "longest deadline an RPC gets, seconds, whatever the client asks", minimum=0.1,
    ),
    Setting(
        "server.audit_buffer_size", "VAULT_SERVER_AUDIT_BUFFER_SIZE", "audit_buffer_size", "int",
        10_000, "audit events waiting for the group commit; when it is full, calls are refused "
        "at once (AUDIT_UNAVAILABLE)", minimum=1,
    ),
    Setting(
        "server.audit_write_timeout", "VAULT_SERVER_AUDIT_WRITE_TIMEOUT", "audit_write_timeout",
        "float", 2.0, "seconds one audit commit may take; past it, every call waiting on it "
        "fails with AUDIT_UNAVAILABLE", minimum=0.1, maximum=60,
    ),
    Setting(
        "server.audit_stall_threshold", "VAULT_SERVER_AUDIT_STALL_THRESHOLD",
        "audit_stall_threshold", "float", 1.0, "seconds an audit commit may be in flight "
        "before new calls are refused at once (AUDIT_UNAVAILABLE) instead of queueing behind it",
        minimum=0.01, maximum=60,
    ),
    Setting(
        "server.missing_names_rate", "VAULT_SERVER_MISSING_NAMES_RATE", "missing_names_rate",
        "float", 100.0, "secret names that do not exist one principal may ask for per second, "
        "sustained; past it (and the burst), resolves naming missing secrets get RATE_LIMITED; "
        "resolves whose secrets all exist are never limited; 0 = no limit", minimum=0,
    ),
    Setting(
        "server.missing_names_burst", "VAULT_SERVER_MISSING_NAMES_BURST", "missing_names_burst",
        "int", 1000, "missing secret names one principal may ask for at once before "
        "`missing_names_rate` applies", minimum=1,
    ),
    Setting(
        "cache.enabled", "VAULT_CACHE_ENABLED", "cache_enabled", "bool", True,
        "serve resolves from the in-process cache of SEALED rows and config values "
        "(kept coherent by LISTEN/NOTIFY)",
    ),
    Setting(
        "cache.max_entries", "VAULT_CACHE_MAX_ENTRIES", "cache_max_entries", "int", 100_000,
        "most secrets and config values the cache holds (least recently used out first)",
        minimum=0,
    ),
    Setting(
        "cache.max_bytes", "VAULT_CACHE_MAX_BYTES", "cache_max_bytes", "int", 64 * 1024 * 1024,
        "most bytes (estimated) the cached entries take", minimum=0,
    ),
    Setting(
        "cache.negative_max_entries", "VAULT_CACHE_NEGATIVE_MAX_ENTRIES",
        "cache_negative_max_entries", "int", 10_000,
        "names remembered as missing, in their own space (cannot evict real entries)",
        minimum=0,
    ),
    Setting(
        "cache.check_interval", "VAULT_CACHE_CHECK_INTERVAL", "cache_check_interval", "float",
        1.0, "seconds between checks of the change sequence (backs up lost notifications)",
        minimum=0.05, maximum=60,
    ),
    Setting(
        "token_cache_max_entries", "VAULT_TOKEN_CACHE_MAX_ENTRIES", "token_cache_max_entries",
        "int", 10_000,
        "most database tokens each process keeps in memory (all valid ones while they fit; "
        "beyond that, every call with a database token looks it up)",
        minimum=0,
    ),
    Setting(
        "max_versions", "VAULT_MAX_VERSIONS", "max_versions", "int", 10,
        "sealed versions kept per secret; older ones are destroyed (value gone, metadata kept)",
        minimum=1, maximum=1000,
    ),
    Setting(
        "delete_recovery_days", "VAULT_DELETE_RECOVERY_DAYS", "delete_recovery_days", "int", 7,
        "days a deleted secret stays restorable (its name stays reserved); 0 = delete at once",
        minimum=0, maximum=3650,
    ),
    Setting(
        "delete_guard_days", "VAULT_DELETE_GUARD_DAYS", "delete_guard_days", "int", 7,
        "deleting a secret or config value resolved within this many days needs `force` "
        "(FAILED_PRECONDITION SECRET_IN_USE / CONFIG_IN_USE otherwise); 0 = no guard",
        minimum=0, maximum=3650,
    ),
    Setting(
        "purge_interval", "VAULT_PURGE_INTERVAL", "purge_interval", "float", 60.0,
        "seconds between runs of the background purge of expired deleted secrets",
        minimum=0.05, maximum=86400,
    ),
    Setting(
        "audit_retention_days", "VAULT_AUDIT_RETENTION_DAYS", "audit_retention_days", "int",
        365, "days audit events are kept; older ones are deleted by a background job (one "
        "replica at a time, in batches); 0 = keep forever", minimum=0, maximum=36500,
    ),
    Setting(
        "audit_retention_interval", "VAULT_AUDIT_RETENTION_INTERVAL",
        "audit_retention_interval", "float", 3600.0,
        "seconds between runs of the audit retention job", minimum=0.05, maximum=86400,
    ),
    Setting(
        "identify_rate_per_principal", "VAULT_IDENTIFY_RATE_PER_PRINCIPAL",
        "identify_rate_per_principal", "int", 30,
        "IdentifySecretValue calls per minute per principal (counted in Postgres)",
        minimum=1,
    ),
    Setting(
        "identify_rate_vault", "VAULT_IDENTIFY_RATE_VAULT", "identify_rate_vault", "int", 30,
        "IdentifySecretValue calls per minute for the whole vault, all principals and replicas",
        minimum=1,
    ),
    Setting(
        "console.listen", "VAULT_CONSOLE_LISTEN", "console_listen", "address", None,
        "address of the admin console and JSON API (`/api/v1`); same TLS as gRPC, plaintext "
        "only on loopback unless `allow_plaintext_non_loopback` (port 0: any free port)",
        default_doc="unset (off; `dev`: `127.0.0.1:8250`)",
    ),
    Setting(
        "metrics_listen", "VAULT_METRICS_LISTEN", "metrics_listen", "address", None,
        "address of the Prometheus endpoint (`/metrics`, plain HTTP, no token: bind it to a "
        "private interface); with `workers` > 1 the supervisor serves the sum of all workers "
        "(port 0: any free port)",
        default_doc="unset (off; `dev`: `127.0.0.1:9250`)",
    ),
    Setting(
        "console.session_ttl", "VAULT_CONSOLE_SESSION_TTL", "console_session_ttl", "float",
        8 * 3600.0, "seconds a console sign-in lasts (it ends sooner when its token is revoked)",
        minimum=1, maximum=7 * 24 * 3600,
    ),
)  # fmt: skip

SETTINGS_BY_KEY: Mapping[str, Setting] = {s.key: s for s in SETTINGS}

#: ``VAULT_*`` variables that belong to clients (vaultctl, HashiCorp's vault CLI, the client
#: test suites); the server ignores them without a warning.
CLIENT_ENVIRONMENT = frozenset(
    {
        "VAULT_ADDR",
        "VAULT_TOKEN",
        "VAULT_CACERT",
        "VAULT_CAPATH",
        "VAULT_CLIENT_CERT",
        "VAULT_CLIENT_KEY",
        "VAULT_CLIENT_TIMEOUT",
        "VAULT_FORMAT",
        "VAULT_MAX_RETRIES",
        "VAULT_NAMESPACE",
        "VAULT_SKIP_VERIFY",
        "VAULT_TLS_SERVER_NAME",
        "VAULT_ADMIN_TOKEN",
        "VAULT_VIEWER_TOKEN",
        "VAULT_RESOLVER_TOKEN",
        "VAULT_SMOKE_REQUIRED",
    }
)


#: Defaults by key, for the dataclasses below (so they hold no second copy).
_D: Mapping[str, Any] = {s.key: s.default for s in SETTINGS}


@dataclass(frozen=True)
class DatabaseSettings:
    url: str | None = _D["database.url"]
    direct_url: str | None = _D["database.direct_url"]
    pooler: str = _D["database.pooler"]
    pool_min_size: int = _D["database.pool_min_size"]
    pool_max_size: int = _D["database.pool_max_size"]
    connect_timeout: float = _D["database.connect_timeout"]
    acquire_timeout: float = _D["database.acquire_timeout"]
    command_timeout: float = _D["database.command_timeout"]
    statement_timeout_ms: int = _D["database.statement_timeout_ms"]
    statement_cache_size: int = _D["database.statement_cache_size"]
    operation_timeout: float = _D["database.operation_timeout"]
    breaker_failures: int = _D["database.breaker_failures"]
    breaker_probe_interval: float = _D["database.breaker_probe_interval"]


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
    client_ca_file: Path | None = _D["tls.client_ca_file"]
    require_client_cert: bool = _D["tls.require_client_cert"]
    client_principals: tuple[ClientPrincipal, ...] = _D["tls.client_principals"]


@dataclass(frozen=True)
class Settings:
    listen: str = _D["listen"]
    workers: int | Literal["auto"] = _D["workers"]
    data_dir: Path = _D["data_dir"]
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    keyring: Keyring | None = _D["master_keys"]
    tokens: tuple[TokenEntry, ...] = _D["tokens"]
    master_keys_file: Path | None = _D["master_keys_file"]
    tokens_file: Path | None = _D["tokens_file"]
    tls: TLSSettings | None = None
    allow_plaintext_non_loopback: bool = _D["server.allow_plaintext_non_loopback"]
    log_level: str = _D["log_level"]
    log_format: str = _D["log_format"]
    grace_period: float = _D["server.grace_period"]
    shutdown_delay: float = _D["server.shutdown_delay"]
    max_concurrent_rpcs: int = _D["server.max_concurrent_rpcs"]
    max_queued_rpcs: int = _D["server.max_queued_rpcs"]
    max_queue_wait: float = _D["server.max_queue_wait"]
    adaptive_concurrency: bool = _D["server.adaptive_concurrency"]
    receive_timeout: float = _D["server.receive_timeout"]
    max_streams: int = _D["server.max_streams"]
    max_streams_per_connection: int = _D["server.max_streams_per_connection"]
    max_connection_idle: float = _D["server.max_connection_idle"]
    max_connection_age: float = _D["server.max_connection_age"]
    max_reply_bytes_in_flight: int = _D["server.max_reply_bytes_in_flight"]
    health_db_grace: float = _D["health_db_grace"]
    max_receive_message_bytes: int = _D["server.max_receive_message_bytes"]
    rpc_timeout_cap: float = _D["server.rpc_timeout_cap"]
    audit_buffer_size: int = _D["server.audit_buffer_size"]
    audit_write_timeout: float = _D["server.audit_write_timeout"]
    audit_stall_threshold: float = _D["server.audit_stall_threshold"]
    missing_names_rate: float = _D["server.missing_names_rate"]
    missing_names_burst: int = _D["server.missing_names_burst"]
    cache_enabled: bool = _D["cache.enabled"]
    cache_max_entries: int = _D["cache.max_entries"]
    cache_max_bytes: int = _D["cache.max_bytes"]
    cache_negative_max_entries: int = _D["cache.negative_max_entries"]
    cache_check_interval: float = _D["cache.check_interval"]
    token_cache_max_entries: int = _D["token_cache_max_entries"]
    max_versions: int = _D["max_versions"]
    delete_recovery_days: int = _D["delete_recovery_days"]
    delete_guard_days: int = _D["delete_guard_days"]
    purge_interval: float = _D["purge_interval"]
    audit_retention_days: int = _D["audit_retention_days"]
    audit_retention_interval: float = _D["audit_retention_interval"]
    identify_rate_per_principal: int = _D["identify_rate_per_principal"]
    identify_rate_vault: int = _D["identify_rate_vault"]
    console_listen: str | None = _D["console.listen"]
    console_session_ttl: float = _D["console.session_ttl"]
    metrics_listen: str | None = _D["metrics_listen"]

    def require_keyring(self) -> Keyring:
        if self.keyring is None:
            raise ConfigError(
                "no master keys configured: set VAULT_MASTER_KEYS=id:base64key "
                "(generate one with `python -m vaultsvc keys generate`) or [[master_keys]] "
                "in the config file"
            )
        return self.keyring


# ------------------------------------------------------------------------ loading


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
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from None
        base = config_file.resolve().parent
    check_file_keys(data)
    warn_unknown_environment(env)

    values: dict[str, Any] = {}
    given: set[str] = set()
    for setting in SETTINGS:
        text = env.get(setting.env, "")
        raw = _lookup(data, setting.key)
        if text:
            values[setting.key] = _from_env(setting, text)
            given.add(setting.key)
        elif raw is not _MISSING:
            values[setting.key] = _from_file(setting, raw, base)
            given.add(setting.key)
        else:
            values[setting.key] = setting.default
    return _assemble(values, given, tls_table="tls" in data)


def _assemble(values: Mapping[str, Any], given: set[str], *, tls_table: bool) -> Settings:
    top: dict[str, Any] = {}
    database: dict[str, Any] = {}
    tls: dict[str, Any] = {}
    for setting in SETTINGS:
        group, _, name = setting.attr.rpartition(".")
        {"": top, "database": database, "tls": tls}[group][name] = values[setting.key]

    if database["pool_min_size"] > database["pool_max_size"]:
        raise ConfigError(
            f"database.pool_min_size ({database['pool_min_size']}) must not exceed "
            f"database.pool_max_size ({database['pool_max_size']})"
        )
    if database["pooler"] == "transaction" and not (database["url"] and database["direct_url"]):
        raise ConfigError(
            "database.pooler = transaction needs database.url (the pooler) and "
            "database.direct_url (Postgres itself, for LISTEN): VAULT_DATABASE_URL, "
            "VAULT_DATABASE_DIRECT_URL"
        )
    if tls_table or any(key.startswith("tls.") for key in given):
        if tls["cert_file"] is None or tls["key_file"] is None:
            raise ConfigError(
                "TLS needs both tls.cert_file and tls.key_file "
                "(VAULT_TLS_CERT_FILE, VAULT_TLS_KEY_FILE)"
            )
        if "tls.require_client_cert" not in given:
            tls["require_client_cert"] = tls["client_ca_file"] is not None
        for path in (tls["cert_file"], tls["key_file"]):
            if not path.is_file():
                raise ConfigError(f"TLS file not found: {path}")
        if tls["client_ca_file"] is not None and not tls["client_ca_file"].is_file():
            raise ConfigError(f"TLS client CA file not found: {tls['client_ca_file']}")
        top["tls"] = TLSSettings(**tls)
    for file_key, key, attr in (
        ("master_keys_file", "master_keys", "keyring"),
        ("tokens_file", "tokens", "tokens"),
    ):
        if top[file_key] is not None:
            if key in given:
                raise ConfigError(f"set {key} or {file_key}, not both")
            top[attr] = _from_secret_file(SETTINGS_BY_KEY[key], top[file_key])
    return Settings(database=DatabaseSettings(**database), **top)


class _Missing:
    pass


_MISSING = _Missing()


def _lookup(data: Mapping[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


# ------------------------------------------------------------------ unknown names

_SECTIONS = frozenset(s.key.rpartition(".")[0] for s in SETTINGS if "." in s.key)
_ENTRY_KEYS = {s.key: s.fields for s in SETTINGS if s.fields}
_ALL_KEYS = tuple(
    [s.key for s in SETTINGS] + [f"{s.key}.{name}" for s in SETTINGS for name in s.fields]
)


def check_file_keys(data: Mapping[str, Any], prefix: str = "") -> None:
    """Refuse any key the table does not declare, naming the nearest valid one."""
    for name, value in data.items():
        path = f"{prefix}{name}"
        if path in _ENTRY_KEYS:
            if not isinstance(value, list):
                raise ConfigError(f"{path} must be an array of tables ([[{path}]])")
            for position, entry in enumerate(value, start=1):
                if not isinstance(entry, dict):
                    raise ConfigError(f"[[{path}]] entry {position} must be a table")
                for sub in entry:
                    if sub not in _ENTRY_KEYS[path]:
                        raise _unknown(f"{path}.{sub}", f" (in [[{path}]] entry {position})")
        elif path in SETTINGS_BY_KEY:
            continue
        elif path in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"[{path}] must be a table")
            check_file_keys(value, f"{path}.")
        else:
            raise _unknown(path, "")


def _unknown(path: str, where: str) -> ConfigError:
    leaf = path.rpartition(".")[2]
    same_leaf = [key for key in _ALL_KEYS if key.rpartition(".")[2] == leaf]
    nearest = same_leaf or difflib.get_close_matches(path, _ALL_KEYS, n=1)
    hint = f"; did you mean {nearest[0]}?" if nearest else ""
    return ConfigError(f"unknown setting {path}{where}{hint}")


def warn_unknown_environment(env: Mapping[str, str]) -> list[str]:
    """Warn about ``VAULT_*`` variables that no setting reads; return their names.

    Only a warning: other tools share the prefix (see ``CLIENT_ENVIRONMENT``).
    """
    known = {s.env for s in SETTINGS}
    unknown = sorted(
        name
        for name in env
        if name.startswith("VAULT_") and name not in known and name not in CLIENT_ENVIRONMENT
    )
    for name in unknown:
        nearest = difflib.get_close_matches(name, sorted(known), n=1)
        _log.warning(
            "ignoring unknown environment variable %s%s",
            name,
            f"; did you mean {nearest[0]}?" if nearest else "",
        )
    return unknown


# ------------------------------------------------------------------------ parsing


def _from_env(setting: Setting, text: str) -> Any:
    where = setting.env
    match setting.kind:
        case "keys":
            try:
                return parse_master_keys(text)
            except KeyringError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        case "tokens":
            return _parse_tokens(text, where)
        case "principals":
            return _parse_principals(text, where)
        case "workers":
            if text.strip().lower() == "auto":
                return "auto"
            try:
                return _bounded(setting, where, int(text.strip()), text)
            except ValueError:
                raise _bad(setting, where, text) from None
        case "int":
            try:
                number: float = int(text.strip())
            except ValueError:
                raise _bad(setting, where, text) from None
            return _bounded(setting, where, number, text)
        case "float":
            try:
                number = float(text.strip())
            except ValueError:
                raise _bad(setting, where, text) from None
            return _bounded(setting, where, number, text)
        case "bool":
            lowered = text.strip().lower()
            if lowered not in _TRUE | _FALSE:
                raise _bad(setting, where, text)
            return lowered in _TRUE
        case "path":
            return Path.cwd() / text if setting.key.endswith("_file") else Path(text)
        case _:
            return _text(setting, where, text)


def _from_file(setting: Setting, raw: Any, base: Path) -> Any:
    where = setting.key
    match setting.kind:
        case "keys":
            return _keyring_from_file(raw, base)
        case "tokens":
            return tuple(
                validate_token_entry(
                    str(entry.get("principal", "")),
                    str(entry.get("role", "")),
                    str(entry.get("sha256", "")),
                    f"[[tokens]] entry {position}",
                    _scopes_from_file(entry.get("scopes", []), f"[[tokens]] entry {position}"),
                )
                for position, entry in enumerate(raw, start=1)
            )
        case "principals":
            return tuple(
                _client_principal(entry, f"[[tls.client_principals]] entry {position}")
                for position, entry in enumerate(raw, start=1)
            )
        case "workers":
            if isinstance(raw, str) and raw.strip().lower() == "auto":
                return "auto"
            if not isinstance(raw, int) or isinstance(raw, bool):
                raise _bad(setting, where, raw)
            return _bounded(setting, where, raw, raw)
        case "int":
            if not isinstance(raw, int) or isinstance(raw, bool):
                raise _bad(setting, where, raw)
            return _bounded(setting, where, raw, raw)
        case "float":
            if not isinstance(raw, int | float) or isinstance(raw, bool):
                raise _bad(setting, where, raw)
            return _bounded(setting, where, raw, raw)
        case "bool":
            if not isinstance(raw, bool):
                raise _bad(setting, where, raw)
            return raw
        case "path":
            if not isinstance(raw, str) or not raw:
                raise _bad(setting, where, raw)
            return base / raw if setting.key.endswith("_file") else Path(raw)
        case _:
            if not isinstance(raw, str):
                raise _bad(setting, where, raw)
            return _text(setting, where, raw)


def _text(setting: Setting, where: str, text: str) -> Any:
    if setting.kind == "choice":
        for choice in setting.choices:
            if text.strip().lower() == choice.lower():
                return choice
        raise _bad(setting, where, text)
    if setting.kind == "address":
        match = _ADDRESS.match(text)
        if match is None or int(match.group(2)) > 65535:
            raise _bad(setting, where, text)
    return text


def _bounded(setting: Setting, where: str, number: float, shown: object) -> float:
    if (
        not math.isfinite(number)
        or (setting.minimum is not None and number < setting.minimum)
        or (setting.maximum is not None and number > setting.maximum)
    ):
        raise _bad(setting, where, shown)
    return float(number) if setting.kind == "float" else number


#: A keys or tokens file is small; anything larger is not one.
MAX_SECRET_FILE_BYTES = 64 * 1024


def read_secret_file(path: Path, what: str) -> str:
    """The text of a file that holds credentials, refused unless it is private enough.

    A regular file (symbolic links are followed: Kubernetes mounts Secrets through them)
    that others can neither read nor write and the group cannot write. Group read is
    allowed: Kubernetes gives a Secret volume's files to the pod's ``fsGroup``.
    """
    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ConfigError(f"{what} {path} is not a regular file")
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o027:
                raise ConfigError(
                    f"{what} {path} has mode {mode:04o}: it must not be readable or writable "
                    "by others nor writable by its group (chmod 0400, or 0440 for a group)"
                )
            raw = handle.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_SECRET_FILE_BYTES:
        raise ConfigError(f"{what} {path} is larger than {MAX_SECRET_FILE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from None


def _from_secret_file(setting: Setting, path: Path) -> Any:
    """``master_keys_file`` / ``tokens_file``: the environment form, one entry per line."""
    where = f"{setting.key}_file {path}"
    lines = read_secret_file(path, f"{setting.key}_file").splitlines()
    entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not entries:
        raise ConfigError(f"{where} holds no entries")
    return _from_env(replace(setting, env=where), ",".join(entries))


def parse_address(text: str, where: str) -> str:
    """``host:port`` as the ``listen`` setting accepts it (for tools such as ``health``)."""
    return str(_text(SETTINGS_BY_KEY["listen"], where, text.strip()))


def _bad(setting: Setting, where: str, value: object) -> ConfigError:
    got = "" if setting.secret else f", got {value!r:.80}"
    return ConfigError(f"{where} must be {describe(setting)}{got}")


def describe(setting: Setting) -> str:
    """What a valid value looks like, in words (errors and the README share it)."""
    bounds = [
        f"{sign} {int(limit) if float(limit).is_integer() else limit}"
        for sign, limit in ((">=", setting.minimum), ("<=", setting.maximum))
        if limit is not None
    ]
    bounded = f" {' and '.join(bounds)}" if bounds else ""
    return {
        "address": "host:port (port 0-65535)",
        "str": "a string",
        "path": "a file path",
        "int": f"an integer{bounded}",
        "workers": f"auto or an integer{bounded}",
        "float": f"a number{bounded}",
        "bool": "true or false (environment: 1/0, true/false, yes/no, on/off)",
        "choice": " or ".join(setting.choices),
        "keys": "id:base64key[,id:base64key...]",
        "tokens": "principal:role:sha256hex[:scopes][,...]",
        "principals": "subject_cn:principal:role[,...]",
    }[setting.kind]


def _split_entries(spec: str, source: str, shape: str) -> list[tuple[int, list[str]]]:
    entries: list[tuple[int, list[str]]] = []
    for position, raw in enumerate(spec.split(","), start=1):
        item = raw.strip()
        if not item:
            continue
        parts = item.rsplit(":", 2)
        if len(parts) != 3:
            raise ConfigError(f"{source}: entry {position} must be {shape}")
        entries.append((position, parts))
    return entries


def _parse_tokens(spec: str, source: str) -> tuple[TokenEntry, ...]:
    """``principal:role:sha256hex`` entries; a resolver's may add ``:scope1|scope2``
    (principal names hold no ``:``, so the fields split on it)."""
    entries: list[TokenEntry] = []
    for position, raw in enumerate(spec.split(","), start=1):
        item = raw.strip()
        if not item:
            continue
        parts = item.split(":")
        where = f"{source} entry {position}"
        if len(parts) not in (3, 4):
            raise ConfigError(
                f"{source}: entry {position} must be principal:role:sha256hex[:scope|scope]"
                " (only the SHA-256 hash of a token belongs in config)"
            )
        if len(parts) == 4 and _TOKEN_HASH.match(parts[3].strip().lower()):
            raise ConfigError(f"{where}: invalid principal name (it may not hold ':')")
        scopes = tuple(parts[3].split("|")) if len(parts) == 4 else ()
        if len(parts) == 4 and not parts[3].strip():
            raise ConfigError(f"{where}: empty scope list after the hash (omit the ':')")
        entries.append(validate_token_entry(parts[0], parts[1], parts[2], where, scopes))
    return tuple(entries)


def _scopes_from_file(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise ConfigError(f"{where}: scopes must be a list of strings")
    return tuple(raw)


def validate_scopes(
    scopes: Sequence[str], role: str, principal: str, where: str
) -> tuple[str, ...]:
    """Resolver scopes: secret names or name prefixes ending in ``*``; other roles have none."""
    cleaned = tuple(scope.strip() for scope in scopes)
    if cleaned and role != RESOLVER:
        raise ConfigError(
            f"{where}: principal {principal} has role {role}; only resolver tokens take scopes"
        )
    for scope in cleaned:
        if not scope or not SCOPE_PATTERN.fullmatch(scope):
            raise ConfigError(
                f"{where}: principal {principal}: scope {scope[:64]!r} must be a secret name or"
                " a name prefix ending in '*' (payments_*)"
            )
    return cleaned


def _parse_principals(spec: str, source: str) -> tuple[ClientPrincipal, ...]:
    return tuple(
        _client_principal(
            {"subject_cn": parts[0], "principal": parts[1], "role": parts[2]},
            f"{source} entry {position}",
        )
        for position, parts in _split_entries(spec, source, "subject_cn:principal:role")
    )


def _client_principal(entry: Mapping[str, Any], where: str) -> ClientPrincipal:
    cn, principal, role = (entry.get(k) for k in ("subject_cn", "principal", "role"))
    if not all(isinstance(v, str) and v.strip() for v in (cn, principal, role)):
        raise ConfigError(f"{where} needs subject_cn, principal and role (strings)")
    assert isinstance(cn, str) and isinstance(principal, str) and isinstance(role, str)
    if not _PRINCIPAL.match(principal.strip()):
        raise ConfigError(f"{where}: invalid principal name")
    if role.strip() not in ROLES:
        raise ConfigError(
            f"{where}: unknown role {role.strip()!r}; use one of {', '.join(sorted(ROLES))}"
        )
    return ClientPrincipal(cn.strip(), principal.strip(), role.strip())


def validate_token_entry(
    principal: str, role: str, digest: str, where: str, scopes: Sequence[str] = ()
) -> TokenEntry:
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
    return TokenEntry(
        principal=principal,
        role=role,
        sha256=bytes.fromhex(digest),
        scopes=validate_scopes(scopes, role, principal, where),
    )


def _keyring_from_file(entries: Sequence[Mapping[str, Any]], base: Path) -> Keyring:
    if not entries:
        raise ConfigError("master_keys must be a non-empty array of tables")
    specs: list[str] = []
    for position, entry in enumerate(entries, start=1):
        if "id" not in entry:
            raise ConfigError(f"master_keys entry {position} needs an id")
        key_id = str(entry["id"])
        if "key_file" in entry and "key" in entry:
            raise ConfigError(f"master key {key_id!r}: give `key` or `key_file`, not both")
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


# ------------------------------------------------------------------------- README


def _shown_default(setting: Setting) -> str:
    if setting.default_doc is not None:
        return setting.default_doc
    value = setting.default
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path) and not value.is_absolute():
        return f"`./{value}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def markdown_table(settings: Sequence[Setting] = SETTINGS) -> str:
    """The README's settings table, generated from the declaration."""
    rows = [
        "| variable | TOML key | value | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for s in settings:
        key = f"`[[{s.key}]]`" if s.fields else f"`{s.key}`"
        value = describe(s).replace("|", "\\|").replace(" or ", " / ")
        if s.kind == "choice":
            value = " / ".join(f"`{c}`" for c in s.choices)
        elif s.kind in {"keys", "tokens", "principals", "address"}:
            value = f"`{describe(s).partition(' (')[0]}`"
        elif s.kind == "bool":
            value = "`true` / `false` (env `1` / `0`)"
        elif s.kind == "workers":
            value = f"`auto` / {describe(s).partition(' or ')[2]}"
        rows.append(f"| `{s.env}` | {key} | {value} | {_shown_default(s)} | {s.help} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # `python -m vaultsvc.config` prints the README table
    sys.stdout.write(markdown_table())
