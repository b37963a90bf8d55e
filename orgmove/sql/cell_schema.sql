-- The write fence, installed on EVERY Cell (by an administrator, once). Cooperating writers call
-- orgmove.assert_writable(org) inside each write transaction, before writing the org's rows.
-- It takes a shared transaction-level advisory lock for the org and fails if a fence row exists.
-- The fencer takes the exclusive lock (waiting for in-flight writers: the drain), inserts the
-- fence row and commits: every writer after it sees the fence; none before it is still running.
CREATE SCHEMA IF NOT EXISTS orgmove;

CREATE TABLE IF NOT EXISTS orgmove.fences (
    organization_id text PRIMARY KEY,
    move_key        text NOT NULL,
    fencing_token   bigint,
    fenced_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- A fence dies with its move's lease, so a mover killed mid-cutover leaves the org writable
    -- again once the lease expires. NULL: permanent (set just before the flip).
    expires_at      timestamptz
);
ALTER TABLE orgmove.fences ADD COLUMN IF NOT EXISTS expires_at timestamptz;

CREATE OR REPLACE FUNCTION orgmove.fence_lock_key(org text) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT hashtextextended('orgmove.fence:' || org, 0) $$;

CREATE OR REPLACE FUNCTION orgmove.assert_writable(org text) RETURNS void
    LANGUAGE plpgsql VOLATILE
    AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(orgmove.fence_lock_key(org));
    IF EXISTS (SELECT 1 FROM orgmove.fences f WHERE f.organization_id = org
               AND (f.expires_at IS NULL OR f.expires_at > clock_timestamp())) THEN
        RAISE EXCEPTION 'organization % is read-only: it is being moved to another cell', org
            USING ERRCODE = 'read_only_sql_transaction',
                  HINT = 'ask the Topology Service (classify) for the owning cell and retry there';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION orgmove.assert_writable(org bigint) RETURNS void
    LANGUAGE sql VOLATILE
    AS $$ SELECT orgmove.assert_writable(org::text) $$;

-- The gate (ADR 0008): orgmove.fence.install_gate puts a BEFORE row trigger (ENABLE ALWAYS) on
-- every planned table of a move's source; for each row of the moving org it calls gate_check.
-- Writers need not cooperate. The check:
--  * takes the org's SHARED advisory lock without waiting: held to the end of the writing
--    transaction, so the fencer's exclusive lock waits for (drains) every transaction that has
--    written the org, and fails at once while the fencer holds or waits for it;
--  * refuses while a fence row is in force (the fence after its transaction committed);
--  * outside READ COMMITTED, refuses (serialization_failure, retry) a transaction whose snapshot
--    is older than the move's last fence: it could not see the fence row. The fencer records its
--    transaction id in the move's sequence, which is not transactional, so every snapshot reads it.
-- orgmove's own deletes of a moved org (cleanup) set orgmove.gate_bypass to the move key.
CREATE OR REPLACE FUNCTION orgmove.gate_check(org text, move_key text, fence_xid_seq regclass)
    RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    fence_xid bigint;
BEGIN
    IF current_setting('orgmove.gate_bypass', true) = move_key THEN
        RETURN;
    END IF;
    IF NOT pg_try_advisory_xact_lock_shared(orgmove.fence_lock_key(org)) THEN
        RAISE EXCEPTION 'organization % is read-only: it is being moved to another cell (move %)', org, move_key
            USING ERRCODE = 'read_only_sql_transaction',
                  HINT = 'ask the Topology Service (classify) for the owning cell and retry there';
    END IF;
    IF EXISTS (SELECT 1 FROM orgmove.fences f WHERE f.organization_id = org
               AND (f.expires_at IS NULL OR f.expires_at > clock_timestamp())) THEN
        RAISE EXCEPTION 'organization % is read-only: it is being moved to another cell (move %)', org, move_key
            USING ERRCODE = 'read_only_sql_transaction',
                  HINT = 'ask the Topology Service (classify) for the owning cell and retry there';
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        EXECUTE format('SELECT last_value FROM %s', fence_xid_seq) INTO fence_xid;
        IF fence_xid > 1
           AND pg_xact_status(fence_xid::text::xid8) IS DISTINCT FROM 'aborted'
           AND NOT pg_visible_in_snapshot(fence_xid::text::xid8, pg_current_snapshot()) THEN
            RAISE EXCEPTION 'organization % was fenced after this transaction''s snapshot was taken', org
                USING ERRCODE = 'serialization_failure',
                      HINT = 'retry the transaction; it will see where the organization lives';
        END IF;
    END IF;
END
$$;
