-- A fold racing a delete or a purge of the items it folds (issue 9 follow-up).
--
-- Until now the fold (V12) took pending rows, then upserted usage rows of the items that
-- EXISTed, without locking the items. Two races followed:
--
-- 1. A usage row outliving its item. The fold's upsert saw the item (its delete not yet
--    committed) and inserted a new usage row; the delete's trigger (vault_*_usage_gone),
--    running before the fold committed, could not see that uncommitted row and did not
--    wait for it: the row committed after the item was gone. E.g. a purge of a secret
--    whose usage row the fold was inserting; or an unguarded delete of a config value
--    that had run its trigger when a batch committed a use of it, folded before the delete
--    committed (or folded after it had deleted the usage row: the fold's insert waits on
--    that row, then inserts anyway). A value recreated under the key inherited the uses,
--    and its delete guard saw it "in use".
-- 2. A deadlock between a fold and a purge. The fold locks usage rows in item order; a
--    purge of several secrets deletes theirs (its trigger) in whatever order its plan
--    reads them: fold holds a's row and waits for b's, the purge holds b's and waits for
--    a's. Postgres aborted one after deadlock_timeout (the purge: UNAVAILABLE).
--
-- Now the fold locks the items it folds first, FOR KEY SHARE (the weakest lock a DELETE
-- conflicts with; updates of an item's other columns do not wait for it), in one order
-- (secrets by id, then config values by key), and folds only the items it locked. Every
-- transaction that deletes an item locks its row first too: a delete (FOR UPDATE, the
-- first statement of its transaction) waits for the fold and its trigger then sees the
-- fold's committed usage; a fold that meets an item being deleted waits for the delete
-- and then skips the item (its pending rows are dropped); the purge (FOR UPDATE SKIP
-- LOCKED) skips the secrets a fold holds until a later round. So a usage row exists only
-- while its item does, and the one lock order is: item row, then usage_pending rows, then
-- usage rows, for the fold as for the config delete's trigger; a purge never waits for a
-- fold's usage rows (they belong to items it skipped). Audit batches take no new lock.
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
        RETURNING secret_id, key_lower, tool, uses, last_time
    ), kept AS (
        -- Rows of items gone are dropped: a config value recreated since was not locked
        -- above, and must not inherit them.
        SELECT * FROM taken WHERE secret_id = ANY (live_ids) OR key_lower = ANY (live_keys)
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
