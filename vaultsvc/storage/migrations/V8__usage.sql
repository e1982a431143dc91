-- Usage tracking and the delete guard (issue 10).
--
-- Every successful resolve adds to the usage of each secret and config value it used, in
-- the SAME transaction (the same statement) as its audit event: a group commit of N events
-- adds one upsert per distinct secret / config value and per distinct (item, tool). Rows
-- live in Postgres, so counts survive restarts and add up across workers and replicas.
--
-- No foreign key to `secrets`: a resolve racing a purge must not fail its audit batch (and
-- an FK check would lock the secret row against the delete guard). Rows follow their item
-- out through the triggers below instead.

CREATE TABLE secret_usage (
    secret_id         uuid        PRIMARY KEY,
    -- NULL: never resolved (the delete guard leaves such a row to lock on).
    last_resolve_time timestamptz,
    resolve_count     bigint      NOT NULL DEFAULT 0 CHECK (resolve_count >= 0)
);
CREATE INDEX secret_usage_last_resolve_time ON secret_usage (last_resolve_time);

-- The most recent tools per secret (pruned to 20 by vault_record_usage).
CREATE TABLE secret_tool_usage (
    secret_id         uuid        NOT NULL REFERENCES secret_usage (secret_id) ON DELETE CASCADE,
    tool              text        NOT NULL,
    last_resolve_time timestamptz NOT NULL,
    resolve_count     bigint      NOT NULL CHECK (resolve_count >= 1),
    PRIMARY KEY (secret_id, tool)
);
CREATE INDEX secret_tool_usage_recent ON secret_tool_usage (secret_id, last_resolve_time DESC);

CREATE TABLE config_usage (
    key_lower         text COLLATE "C" PRIMARY KEY,
    last_resolve_time timestamptz,
    resolve_count     bigint      NOT NULL DEFAULT 0 CHECK (resolve_count >= 0)
);

CREATE TABLE config_tool_usage (
    key_lower         text COLLATE "C" NOT NULL
                      REFERENCES config_usage (key_lower) ON DELETE CASCADE,
    tool              text        NOT NULL,
    last_resolve_time timestamptz NOT NULL,
    resolve_count     bigint      NOT NULL CHECK (resolve_count >= 1),
    PRIMARY KEY (key_lower, tool)
);
CREATE INDEX config_tool_usage_recent ON config_tool_usage (key_lower, last_resolve_time DESC);

-- A delete that overrode the delete guard with `force`.
ALTER TABLE audit_events ADD COLUMN forced boolean NOT NULL DEFAULT false;

-- One group commit's usage. Arrays come aggregated and sorted by the caller (secret id,
-- then tool; config key, then tool), and every upsert runs in that order, so concurrent
-- batches from several processes lock rows in one global order and cannot deadlock. The
-- item row is locked first: a second batch touching the same item waits for the first to
-- commit, so its tool upserts and pruning see the first one's rows (pruning is race-free),
-- and the delete guard, which locks the same row, sees every committed use.
-- Items that no longer exist are skipped.
CREATE FUNCTION vault_record_usage(
    s_ids uuid[], s_counts bigint[], s_times timestamptz[],
    st_ids uuid[], st_tools text[], st_counts bigint[], st_times timestamptz[],
    c_keys text[], c_counts bigint[], c_times timestamptz[],
    ct_keys text[], ct_tools text[], ct_counts bigint[], ct_times timestamptz[],
    max_tools integer
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(s_ids) > 0 THEN
        INSERT INTO secret_usage AS u (secret_id, last_resolve_time, resolve_count)
        SELECT x.id, x.t, x.n
          FROM unnest(s_ids, s_counts, s_times) WITH ORDINALITY AS x(id, n, t, o)
         WHERE EXISTS (SELECT 1 FROM secrets s WHERE s.id = x.id)
         ORDER BY x.o
        ON CONFLICT (secret_id) DO UPDATE
           SET resolve_count = u.resolve_count + EXCLUDED.resolve_count,
               last_resolve_time = GREATEST(u.last_resolve_time, EXCLUDED.last_resolve_time);
    END IF;
    IF cardinality(st_ids) > 0 THEN
        INSERT INTO secret_tool_usage AS u (secret_id, tool, last_resolve_time, resolve_count)
        SELECT x.id, x.tool, x.t, x.n
          FROM unnest(st_ids, st_tools, st_counts, st_times) WITH ORDINALITY
               AS x(id, tool, n, t, o)
         WHERE EXISTS (SELECT 1 FROM secret_usage s WHERE s.secret_id = x.id)
         ORDER BY x.o
        ON CONFLICT (secret_id, tool) DO UPDATE
           SET resolve_count = u.resolve_count + EXCLUDED.resolve_count,
               last_resolve_time = GREATEST(u.last_resolve_time, EXCLUDED.last_resolve_time);
        -- Keep the max_tools most recent tools of each secret touched.
        DELETE FROM secret_tool_usage d
         USING (SELECT secret_id, tool,
                       row_number() OVER (PARTITION BY secret_id
                                          ORDER BY last_resolve_time DESC, tool) AS rn
                  FROM secret_tool_usage
                 WHERE secret_id = ANY (st_ids)) r
         WHERE r.rn > max_tools AND d.secret_id = r.secret_id AND d.tool = r.tool;
    END IF;
    IF cardinality(c_keys) > 0 THEN
        INSERT INTO config_usage AS u (key_lower, last_resolve_time, resolve_count)
        SELECT x.k, x.t, x.n
          FROM unnest(c_keys, c_counts, c_times) WITH ORDINALITY AS x(k, n, t, o)
         WHERE EXISTS (SELECT 1 FROM config_values c WHERE c.key_lower = x.k)
         ORDER BY x.o
        ON CONFLICT (key_lower) DO UPDATE
           SET resolve_count = u.resolve_count + EXCLUDED.resolve_count,
               last_resolve_time = GREATEST(u.last_resolve_time, EXCLUDED.last_resolve_time);
    END IF;
    IF cardinality(ct_keys) > 0 THEN
        INSERT INTO config_tool_usage AS u (key_lower, tool, last_resolve_time, resolve_count)
        SELECT x.k, x.tool, x.t, x.n
          FROM unnest(ct_keys, ct_tools, ct_counts, ct_times) WITH ORDINALITY
               AS x(k, tool, n, t, o)
         WHERE EXISTS (SELECT 1 FROM config_usage c WHERE c.key_lower = x.k)
         ORDER BY x.o
        ON CONFLICT (key_lower, tool) DO UPDATE
           SET resolve_count = u.resolve_count + EXCLUDED.resolve_count,
               last_resolve_time = GREATEST(u.last_resolve_time, EXCLUDED.last_resolve_time);
        DELETE FROM config_tool_usage d
         USING (SELECT key_lower, tool,
                       row_number() OVER (PARTITION BY key_lower
                                          ORDER BY last_resolve_time DESC, tool) AS rn
                  FROM config_tool_usage
                 WHERE key_lower = ANY (ct_keys)) r
         WHERE r.rn > max_tools AND d.key_lower = r.key_lower AND d.tool = r.tool;
    END IF;
END
$$;

-- Usage goes with its item (a purge, a deleted config value); a recreated one starts afresh.
CREATE FUNCTION vault_secret_usage_gone() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM secret_usage WHERE secret_id IN (SELECT id FROM gone);
    RETURN NULL;
END
$$;

CREATE FUNCTION vault_config_usage_gone() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM config_usage WHERE key_lower IN (SELECT key_lower FROM gone);
    RETURN NULL;
END
$$;

CREATE TRIGGER secrets_usage_gone AFTER DELETE ON secrets
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION vault_secret_usage_gone();
CREATE TRIGGER config_values_usage_gone AFTER DELETE ON config_values
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION vault_config_usage_gone();

CREATE FUNCTION vault_usage_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'secrets' THEN
        TRUNCATE secret_usage, secret_tool_usage;
    ELSE
        TRUNCATE config_usage, config_tool_usage;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER secrets_usage_truncated AFTER TRUNCATE ON secrets
    FOR EACH STATEMENT EXECUTE FUNCTION vault_usage_truncated();
CREATE TRIGGER config_values_usage_truncated AFTER TRUNCATE ON config_values
    FOR EACH STATEMENT EXECUTE FUNCTION vault_usage_truncated();
