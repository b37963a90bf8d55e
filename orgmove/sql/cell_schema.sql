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
