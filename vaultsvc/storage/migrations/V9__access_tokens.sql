-- Bearer tokens kept in the database (AccessService), beside the bootstrap tokens of the
-- configuration. Only the SHA-256 of a token is stored (lookup_hash, as for config tokens)
-- and a short fingerprint of a SEPARATE hash, to tell tokens apart in a list.
-- Every change notifies every process through the change channel of V4 (kind 't', key =
-- the token id), so a revoked token stops working on every replica at once.
CREATE TABLE access_tokens (
    id          uuid        PRIMARY KEY,
    lookup_hash bytea       NOT NULL UNIQUE CHECK (octet_length(lookup_hash) = 32),
    fingerprint text        NOT NULL,
    principal   text        NOT NULL CHECK (principal <> ''),
    role        text        NOT NULL CHECK (role IN ('admin', 'viewer', 'resolver', 'operator')),
    description text        NOT NULL DEFAULT '',
    scopes      text[]      NOT NULL DEFAULT '{}',
    create_time timestamptz NOT NULL DEFAULT now(),
    expire_time timestamptz,
    created_by  text        NOT NULL DEFAULT ''
);
-- ListTokens pages by (create_time, id).
CREATE INDEX access_tokens_created ON access_tokens (create_time, id);

CREATE FUNCTION vault_access_token_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM vault_notify_change('t', OLD.id::text);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.id IS DISTINCT FROM OLD.id) THEN
        PERFORM vault_notify_change('t', NEW.id::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER access_tokens_changed AFTER INSERT OR UPDATE OR DELETE ON access_tokens
    FOR EACH ROW EXECUTE FUNCTION vault_access_token_changed();
CREATE TRIGGER access_tokens_truncated AFTER TRUNCATE ON access_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION vault_table_truncated();
