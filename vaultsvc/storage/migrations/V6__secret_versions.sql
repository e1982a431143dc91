-- Secret versions, recoverable deletion and value fingerprints (issue 11).
--
-- Sealed values move from `secrets` into `secret_versions`, one row per value write.
-- An existing secret's sealed value becomes its version `value_version`: the AAD of
-- every value already binds (secret id, name, version), so existing rows open unchanged.

CREATE TABLE secret_versions (
    secret_id          uuid        NOT NULL REFERENCES secrets (id) ON DELETE CASCADE ON UPDATE CASCADE,
    version            bigint      NOT NULL CHECK (version >= 1),
    create_time        timestamptz NOT NULL,
    created_by         text        NOT NULL DEFAULT '',
    kek_id             text,
    wrapped_dek        bytea,
    ciphertext         bytea,
    -- HMAC-SHA-256 of the value under a key derived from master key `fingerprint_key_id`.
    fingerprint        bytea,
    fingerprint_key_id text,
    destroy_time       timestamptz,
    PRIMARY KEY (secret_id, version),
    -- A destroyed version keeps its metadata only.
    CONSTRAINT secret_versions_sealed CHECK (
        (destroy_time IS NULL) = (kek_id IS NOT NULL AND wrapped_dek IS NOT NULL
                                  AND ciphertext IS NOT NULL)),
    CONSTRAINT secret_versions_destroyed_no_fingerprint CHECK (
        destroy_time IS NULL OR (fingerprint IS NULL AND fingerprint_key_id IS NULL)),
    CONSTRAINT secret_versions_fingerprint_pair CHECK (
        (fingerprint IS NULL) = (fingerprint_key_id IS NULL))
);
CREATE INDEX secret_versions_fingerprint ON secret_versions (fingerprint)
    WHERE fingerprint IS NOT NULL;
CREATE INDEX secret_versions_kek_id ON secret_versions (kek_id) WHERE kek_id IS NOT NULL;
-- Versions still to fingerprint (rows carried over from before this migration).
CREATE INDEX secret_versions_unfingerprinted ON secret_versions (secret_id, version)
    WHERE fingerprint IS NULL AND destroy_time IS NULL;

INSERT INTO secret_versions (secret_id, version, create_time, created_by, kek_id, wrapped_dek,
                             ciphertext)
SELECT id, value_version, update_time, '', kek_id, wrapped_dek, ciphertext FROM secrets;

ALTER TABLE secrets RENAME COLUMN value_version TO current_version;
ALTER TABLE secrets DROP COLUMN kek_id, DROP COLUMN wrapped_dek, DROP COLUMN ciphertext;
ALTER TABLE secrets ADD COLUMN delete_time timestamptz, ADD COLUMN purge_time timestamptz,
    ADD CONSTRAINT secrets_deletion_times CHECK ((delete_time IS NULL) = (purge_time IS NULL));
CREATE INDEX secrets_purge_time ON secrets (purge_time) WHERE purge_time IS NOT NULL;

-- IdentifySecretValue budgets: one row per (bucket, minute); bucket '*' is vault-wide.
CREATE TABLE identify_rate (
    bucket       text        NOT NULL,
    window_start timestamptz NOT NULL,
    calls        integer     NOT NULL,
    PRIMARY KEY (bucket, window_start)
);

-- How many versions an IdentifySecretValue call matched (never the candidate).
ALTER TABLE audit_events ADD COLUMN match_count integer;

-- Resolve caches (V4__change_notify.sql) hold the CURRENT version's sealed value, which
-- now lives here: a change to it that does not touch its `secrets` row (a rewrap, plain
-- SQL) must notify too. Value writes, rollbacks, deletion, restore and purge change the
-- `secrets` row (current_version, delete_time, or the row itself), whose trigger notifies.
CREATE FUNCTION vault_secret_version_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    k text;
BEGIN
    -- Only the current version of a secret that still exists is ever cached.
    SELECT name_key INTO k FROM secrets
     WHERE id = OLD.secret_id AND current_version = OLD.version;
    IF FOUND THEN
        PERFORM vault_notify_change('s', k);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER secret_versions_changed
    AFTER UPDATE OF secret_id, version, kek_id, wrapped_dek, ciphertext, destroy_time
    OR DELETE ON secret_versions
    FOR EACH ROW EXECUTE FUNCTION vault_secret_version_changed();
CREATE TRIGGER secret_versions_truncated AFTER TRUNCATE ON secret_versions
    FOR EACH STATEMENT EXECUTE FUNCTION vault_table_truncated();
