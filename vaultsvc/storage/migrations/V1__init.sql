-- vaultsvc schema v1. Values are stored only as envelope ciphertext (see vaultsvc/crypto).
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE secrets (
    id            uuid        PRIMARY KEY,
    name          text        NOT NULL CHECK (name ~ '^[A-Za-z][A-Za-z0-9_-]{0,127}$'),
    name_key      text COLLATE "C" GENERATED ALWAYS AS (lower(name)) STORED,
    description   text        NOT NULL DEFAULT '' CHECK (char_length(description) <= 1024),
    value_version bigint      NOT NULL CHECK (value_version >= 1),
    kek_id        text        NOT NULL,
    wrapped_dek   bytea       NOT NULL,
    ciphertext    bytea       NOT NULL,
    etag          text        NOT NULL,
    create_time   timestamptz NOT NULL,
    update_time   timestamptz NOT NULL
);
-- Names are unique ignoring case; this index also serves ordering and keyset pagination.
CREATE UNIQUE INDEX secrets_name_key ON secrets (name_key);
-- Substring search (name_contains) stays fast at millions of rows.
CREATE INDEX secrets_name_trgm ON secrets USING gin (name_key gin_trgm_ops);
CREATE INDEX secrets_kek_id ON secrets (kek_id);

CREATE TABLE config_values (
    key         text        NOT NULL CHECK (key ~ '^[A-Za-z][A-Za-z0-9_-]{0,127}$'),
    key_lower   text COLLATE "C" GENERATED ALWAYS AS (lower(key)) STORED,
    value       text        NOT NULL,
    description text        NOT NULL DEFAULT '' CHECK (char_length(description) <= 1024),
    create_time timestamptz NOT NULL,
    update_time timestamptz NOT NULL
);
CREATE UNIQUE INDEX config_values_key_lower ON config_values (key_lower);
CREATE INDEX config_values_key_trgm ON config_values USING gin (key_lower gin_trgm_ops);

-- One row of vault-wide counters, kept in the same transaction as every change.
CREATE TABLE vault_state (
    id               smallint    PRIMARY KEY CHECK (id = 1),
    total_secrets    bigint      NOT NULL CHECK (total_secrets >= 0),
    last_update_time timestamptz
);
INSERT INTO vault_state (id, total_secrets, last_update_time) VALUES (1, 0, NULL);

-- Master keys the database has seen: a key check value (never the key) and wrap counts.
CREATE TABLE master_keys (
    key_id       text        PRIMARY KEY,
    check_value  bytea       NOT NULL,
    wrap_count   bigint      NOT NULL DEFAULT 0,
    created_time timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit_events (
    id           bigserial   PRIMARY KEY,
    time         timestamptz NOT NULL DEFAULT clock_timestamp(),
    principal    text        NOT NULL,
    method       text        NOT NULL,
    outcome      text        NOT NULL,
    secret_names text[]      NOT NULL DEFAULT '{}',
    tool         text        NOT NULL DEFAULT '',
    request_id   text        NOT NULL,
    peer         text        NOT NULL DEFAULT ''
);
-- Listing is newest first by (time, id); buffered resolve events arrive late.
CREATE INDEX audit_events_time ON audit_events (time DESC, id DESC);
CREATE INDEX audit_events_principal ON audit_events (principal, time DESC, id DESC);
CREATE INDEX audit_events_secret_names ON audit_events USING gin (secret_names);
