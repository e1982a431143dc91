-- Usage off the hot rows (issue 9).
--
-- Until now every group commit upserted the usage rows of the items its resolves used
-- (vault_record_usage): under load the same few rows were updated thousands of times per
-- second, each a non-HOT update, and their row locks, held until commit, serialized the
-- audit batches of different processes. Now a group commit only APPENDS its aggregated
-- usage to usage_pending, in the same statement as its audit events (a crash keeps both or
-- loses both), and vault_fold_usage moves pending rows into the usage tables: every
-- process runs it about once a second, and before every read of usage (storage/usage.py).

-- One row per distinct (item, tool) of one group commit: a secret (secret_id) or a config
-- value (key_lower), tool '' for resolves that named none. Append-only, no index: every
-- index would cost every audit batch. The fold picks rows by ctid.
CREATE TABLE usage_pending (
    secret_id uuid,
    key_lower text COLLATE "C",
    tool      text        NOT NULL,
    uses      bigint      NOT NULL CHECK (uses >= 1),
    last_time timestamptz NOT NULL,
    CHECK ((secret_id IS NULL) <> (key_lower IS NULL))
);

-- Folds pending usage into secret_usage / secret_tool_usage / config_usage /
-- config_tool_usage (vault_record_usage: sorted upserts, pruning to max_tools, items that
-- no longer exist skipped) and deletes it, in the caller's transaction. Every pending row
-- is counted exactly once: DELETE only takes committed rows, and a fold that meets a row
-- another fold is deleting waits for that one to end and then skips the row if it is gone.
-- All folds lock pending rows in ctid order (a TID scan sorts its list) and usage rows in
-- (item, tool) order, so two folds cannot deadlock.
--
-- With only_secret / only_key: every pending row of that one item (the delete guard); else
-- at most max_rows rows. Returns how many rows it picked: max_rows means more may be left.
CREATE FUNCTION vault_fold_usage(
    max_rows integer, max_tools integer, only_secret uuid DEFAULT NULL, only_key text DEFAULT NULL
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    targets tid[];
    s_ids uuid[]; s_counts bigint[]; s_times timestamptz[];
    st_ids uuid[]; st_tools text[]; st_counts bigint[]; st_times timestamptz[];
    c_keys text[]; c_counts bigint[]; c_times timestamptz[];
    ct_keys text[]; ct_tools text[]; ct_counts bigint[]; ct_times timestamptz[];
BEGIN
    IF only_secret IS NOT NULL OR only_key IS NOT NULL THEN
        targets := ARRAY(SELECT ctid FROM usage_pending
                          WHERE secret_id = only_secret OR key_lower = only_key);
    ELSE
        targets := ARRAY(SELECT ctid FROM usage_pending LIMIT max_rows);
    END IF;
    IF cardinality(targets) = 0 THEN
        RETURN 0;
    END IF;
    WITH taken AS (
        DELETE FROM usage_pending WHERE ctid = ANY (targets)
        RETURNING secret_id, key_lower, tool, uses, last_time
    ), s AS (
        SELECT secret_id AS id, sum(uses)::bigint AS n, max(last_time) AS t
          FROM taken WHERE secret_id IS NOT NULL GROUP BY secret_id
    ), st AS (
        SELECT secret_id AS id, tool, sum(uses)::bigint AS n, max(last_time) AS t
          FROM taken WHERE secret_id IS NOT NULL AND tool <> '' GROUP BY secret_id, tool
    ), c AS (
        SELECT key_lower AS k, sum(uses)::bigint AS n, max(last_time) AS t
          FROM taken WHERE key_lower IS NOT NULL GROUP BY key_lower
    ), ct AS (
        SELECT key_lower AS k, tool, sum(uses)::bigint AS n, max(last_time) AS t
          FROM taken WHERE key_lower IS NOT NULL AND tool <> '' GROUP BY key_lower, tool
    )
    SELECT (SELECT array_agg(id ORDER BY id) FROM s),
           (SELECT array_agg(n ORDER BY id) FROM s),
           (SELECT array_agg(t ORDER BY id) FROM s),
           (SELECT array_agg(id ORDER BY id, tool) FROM st),
           (SELECT array_agg(tool ORDER BY id, tool) FROM st),
           (SELECT array_agg(n ORDER BY id, tool) FROM st),
           (SELECT array_agg(t ORDER BY id, tool) FROM st),
           (SELECT array_agg(k ORDER BY k) FROM c),
           (SELECT array_agg(n ORDER BY k) FROM c),
           (SELECT array_agg(t ORDER BY k) FROM c),
           (SELECT array_agg(k ORDER BY k, tool) FROM ct),
           (SELECT array_agg(tool ORDER BY k, tool) FROM ct),
           (SELECT array_agg(n ORDER BY k, tool) FROM ct),
           (SELECT array_agg(t ORDER BY k, tool) FROM ct)
      INTO s_ids, s_counts, s_times, st_ids, st_tools, st_counts, st_times,
           c_keys, c_counts, c_times, ct_keys, ct_tools, ct_counts, ct_times;
    PERFORM vault_record_usage(
        COALESCE(s_ids, '{}'), COALESCE(s_counts, '{}'), COALESCE(s_times, '{}'),
        COALESCE(st_ids, '{}'), COALESCE(st_tools, '{}'), COALESCE(st_counts, '{}'),
        COALESCE(st_times, '{}'),
        COALESCE(c_keys, '{}'), COALESCE(c_counts, '{}'), COALESCE(c_times, '{}'),
        COALESCE(ct_keys, '{}'), COALESCE(ct_tools, '{}'), COALESCE(ct_counts, '{}'),
        COALESCE(ct_times, '{}'),
        max_tools);
    RETURN cardinality(targets);
END
$$;

-- A deleted config value takes its pending uses along: a value recreated under the same
-- key starts afresh (a secret's id never comes back: the fold skips its pending rows).
CREATE OR REPLACE FUNCTION vault_config_usage_gone() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM usage_pending WHERE key_lower IN (SELECT key_lower FROM gone);
    DELETE FROM config_usage WHERE key_lower IN (SELECT key_lower FROM gone);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION vault_usage_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'secrets' THEN
        TRUNCATE secret_usage, secret_tool_usage;
        DELETE FROM usage_pending WHERE secret_id IS NOT NULL;
    ELSE
        TRUNCATE config_usage, config_tool_usage;
        DELETE FROM usage_pending WHERE key_lower IS NOT NULL;
    END IF;
    RETURN NULL;
END
$$;
