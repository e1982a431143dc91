-- Change notifications for the per-process resolve caches (vaultsvc/storage/notify.py).
-- Every change to a secret or a config value, by ANY writer (servers, `keys rewrap`, plain
-- SQL), bumps change_seq and sends NOTIFY vault_changes '<seq> <kind> <name_key>' in the
-- same transaction. The one-row counter serialises changes, so notifications are sent in
-- sequence order without gaps: a listener seeing a gap knows it lost one, and the committed
-- change_seq moving past the last one received tells the periodic check the same.
CREATE TABLE change_state (
    id         smallint PRIMARY KEY CHECK (id = 1),
    change_seq bigint   NOT NULL CHECK (change_seq >= 0)
);
INSERT INTO change_state (id, change_seq) VALUES (1, 0);

CREATE FUNCTION vault_notify_change(kind text, name_key text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    seq bigint;
BEGIN
    UPDATE change_state SET change_seq = change_seq + 1 WHERE id = 1 RETURNING change_seq INTO seq;
    PERFORM pg_notify('vault_changes', seq::text || ' ' || kind || ' ' || name_key);
END
$$;

CREATE FUNCTION vault_secret_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM vault_notify_change('s', OLD.name_key);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.name_key IS DISTINCT FROM OLD.name_key) THEN
        PERFORM vault_notify_change('s', NEW.name_key);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION vault_config_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM vault_notify_change('c', OLD.key_lower);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.key_lower IS DISTINCT FROM OLD.key_lower) THEN
        PERFORM vault_notify_change('c', NEW.key_lower);
    END IF;
    RETURN NULL;
END
$$;

-- TRUNCATE: every cached entry of every process goes.
CREATE FUNCTION vault_table_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM vault_notify_change('*', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER secrets_changed AFTER INSERT OR UPDATE OR DELETE ON secrets
    FOR EACH ROW EXECUTE FUNCTION vault_secret_changed();
CREATE TRIGGER config_values_changed AFTER INSERT OR UPDATE OR DELETE ON config_values
    FOR EACH ROW EXECUTE FUNCTION vault_config_changed();
CREATE TRIGGER secrets_truncated AFTER TRUNCATE ON secrets
    FOR EACH STATEMENT EXECUTE FUNCTION vault_table_truncated();
CREATE TRIGGER config_values_truncated AFTER TRUNCATE ON config_values
    FOR EACH STATEMENT EXECUTE FUNCTION vault_table_truncated();
