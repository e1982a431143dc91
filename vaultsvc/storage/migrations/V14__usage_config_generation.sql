-- A config value's uses inherited by the value created again under its key (issue 9
-- follow-up: the one race V13 left).
--
-- A resolve reads a config value; an unguarded or forced delete of the value runs its
-- cleanup (vault_config_usage_gone deletes the key's pending rows) and commits; then the
-- resolve's audit batch commits its usage_pending row (milliseconds later: the batch could
-- not be seen by the cleanup, and nothing makes the two wait for each other, as a guarded
-- delete does). V13's fold drops that row if the key is gone when it folds; but if the key
-- was created again by then, it counted the use for the new value, which then looked used
-- (its delete guard refused a plain delete until forced).
--
-- Config values are identified by key, so a pending row now also names the generation of
-- the value the resolve read: its create_time (an update keeps it; a value created again
-- gets a new one, from another transaction). The fold keeps a config row only if that
-- generation is the live value's. Rows written before this migration have none and are
-- folded as before. Secrets need no such column: a secret created again gets a new id.
ALTER TABLE usage_pending ADD COLUMN config_created timestamptz
    CHECK (config_created IS NULL OR key_lower IS NOT NULL);

CREATE OR REPLACE FUNCTION vault_fold_usage(
    max_rows integer, max_tools integer, only_secret uuid DEFAULT NULL, only_key text DEFAULT NULL
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    targets tid[];
    item_ids uuid[]; item_keys text[];
    live_ids uuid[]; live_keys text[];
    s_ids uuid[]; s_counts bigint[]; s_times timestamptz[];
    st_ids uuid[]; st_tools text[]; st_counts bigint[]; st_times timestamptz[];
    c_keys text[]; c_counts bigint[]; c_times timestamptz[];
    ct_keys text[]; ct_tools text[]; ct_counts bigint[]; ct_times timestamptz[];
BEGIN
    -- The rows to take and their items (pending rows are never updated, and a row seen
    -- here keeps its ctid until this transaction ends: the fold's own snapshot holds it).
    IF only_secret IS NOT NULL OR only_key IS NOT NULL THEN
        SELECT array_agg(ctid),
               array_agg(DISTINCT secret_id) FILTER (WHERE secret_id IS NOT NULL),
               array_agg(DISTINCT key_lower) FILTER (WHERE key_lower IS NOT NULL)
          INTO targets, item_ids, item_keys
          FROM usage_pending WHERE secret_id = only_secret OR key_lower = only_key;
    ELSE
        SELECT array_agg(ctid),
               array_agg(DISTINCT secret_id) FILTER (WHERE secret_id IS NOT NULL),
               array_agg(DISTINCT key_lower) FILTER (WHERE key_lower IS NOT NULL)
          INTO targets, item_ids, item_keys
          FROM (SELECT ctid, secret_id, key_lower FROM usage_pending LIMIT max_rows) p;
    END IF;
    IF targets IS NULL THEN
        RETURN 0;
    END IF;
    -- The items, locked in one order before any pending or usage row; those gone (or
    -- being deleted, then gone) are not returned.
    live_ids := ARRAY(SELECT id FROM secrets WHERE id = ANY (item_ids)
                       ORDER BY id FOR KEY SHARE);
    live_keys := ARRAY(SELECT key_lower FROM config_values WHERE key_lower = ANY (item_keys)
                        ORDER BY key_lower FOR KEY SHARE);
    WITH taken AS (
        DELETE FROM usage_pending WHERE ctid = ANY (targets)
        RETURNING secret_id, key_lower, config_created, tool, uses, last_time
    ), kept AS (
        -- Rows of items gone are dropped: a config value recreated since was not locked
        -- above, and must not inherit them; nor the uses of an earlier generation of a
        -- value locked above (config_created NULL: written before V14).
        SELECT p.secret_id, p.key_lower, p.tool, p.uses, p.last_time
          FROM taken p LEFT JOIN config_values v ON v.key_lower = p.key_lower
         WHERE p.secret_id = ANY (live_ids)
            OR (p.key_lower = ANY (live_keys)
                AND (p.config_created IS NULL OR p.config_created = v.create_time))
    ), s AS (
        SELECT secret_id AS id, sum(uses)::bigint AS n, max(last_time) AS t
          FROM kept WHERE secret_id IS NOT NULL GROUP BY secret_id
    ), st AS (
        SELECT secret_id AS id, tool, sum(uses)::bigint AS n, max(last_time) AS t
          FROM kept WHERE secret_id IS NOT NULL AND tool <> '' GROUP BY secret_id, tool
    ), c AS (
        SELECT key_lower AS k, sum(uses)::bigint AS n, max(last_time) AS t
          FROM kept WHERE key_lower IS NOT NULL GROUP BY key_lower
    ), ct AS (
        SELECT key_lower AS k, tool, sum(uses)::bigint AS n, max(last_time) AS t
          FROM kept WHERE key_lower IS NOT NULL AND tool <> '' GROUP BY key_lower, tool
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
