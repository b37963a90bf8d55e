-- orgmove's move state, kept on the TARGET Cell so that a chunk's rows and its checkpoint commit in
-- one transaction. Idempotent: applied before every command that writes state.
-- Created only when missing: CREATE SCHEMA (even IF NOT EXISTS) needs CREATE on the database,
-- which the least-privilege target role does not have (runbooks/least-privilege.sql).
DO $$
BEGIN
    IF to_regnamespace('orgmove') IS NULL THEN
        CREATE SCHEMA orgmove;
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS orgmove.moves (
    move_key            text PRIMARY KEY,
    org                 text NOT NULL,
    from_cell           text NOT NULL,
    to_cell             text NOT NULL,
    plan_checksum       text NOT NULL,
    state               text NOT NULL DEFAULT 'planned',
    snapshot_consistent boolean NOT NULL DEFAULT true,
    snapshots           integer NOT NULL DEFAULT 0,
    copy_started_at     timestamptz,
    copy_finished_at    timestamptz,
    verified_at         timestamptz,
    verify_clean        boolean,
    verify_seconds      double precision,
    topology_move_id    text,
    fencing_token       bigint,
    fenced_at           timestamptz,
    committed_at        timestamptz,
    freeze_window_s     double precision,
    last_error          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS orgmove.chunks (
    move_key    text NOT NULL REFERENCES orgmove.moves (move_key) ON DELETE CASCADE,
    table_name  text NOT NULL,
    chunk_no    integer NOT NULL,
    lo          jsonb,
    hi          jsonb,
    state       text NOT NULL DEFAULT 'pending',
    generation  integer NOT NULL DEFAULT 0,
    rows        bigint,
    bytes       bigint,
    attempts    integer NOT NULL DEFAULT 0,
    started_at  timestamptz,
    finished_at timestamptz,
    PRIMARY KEY (move_key, table_name, chunk_no)
);

-- Append-only: one row per committed chunk copy. The primary key makes a double commit of the
-- same chunk generation impossible, and tests read it to prove exactly-once.
CREATE TABLE IF NOT EXISTS orgmove.chunk_log (
    move_key     text NOT NULL,
    table_name   text NOT NULL,
    chunk_no     integer NOT NULL,
    generation   integer NOT NULL,
    rows         bigint NOT NULL,
    bytes        bigint NOT NULL,
    snapshot     text,
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (move_key, table_name, chunk_no, generation)
);

CREATE TABLE IF NOT EXISTS orgmove.verify_chunks (
    move_key   text NOT NULL,
    table_name text NOT NULL,
    chunk_no   integer NOT NULL,
    src_rows   bigint NOT NULL,
    dst_rows   bigint NOT NULL,
    src_hash   numeric NOT NULL,
    dst_hash   numeric NOT NULL,
    equal      boolean NOT NULL,
    checked_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (move_key, table_name, chunk_no)
);

CREATE TABLE IF NOT EXISTS orgmove.events (
    id       bigserial PRIMARY KEY,
    move_key text NOT NULL,
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind     text NOT NULL,
    message  text NOT NULL,
    details  jsonb
);
CREATE INDEX IF NOT EXISTS events_move_key_idx ON orgmove.events (move_key, id);

-- Change capture (online move): what the copy created on the source, and where the stream stands.
ALTER TABLE orgmove.moves ADD COLUMN IF NOT EXISTS capture_slot text;
ALTER TABLE orgmove.moves ADD COLUMN IF NOT EXISTS capture_publication text;
ALTER TABLE orgmove.moves ADD COLUMN IF NOT EXISTS capture_origin text;
ALTER TABLE orgmove.moves ADD COLUMN IF NOT EXISTS consistent_lsn pg_lsn;
ALTER TABLE orgmove.moves ADD COLUMN IF NOT EXISTS replica_identity_full text[];
ALTER TABLE orgmove.moves ADD COLUMN IF NOT EXISTS sync_at timestamptz;
ALTER TABLE orgmove.moves ADD COLUMN IF NOT EXISTS sync_lag_bytes bigint;
ALTER TABLE orgmove.moves ADD COLUMN IF NOT EXISTS sync_lag_s double precision;
ALTER TABLE orgmove.moves ADD COLUMN IF NOT EXISTS sync_changes_per_s double precision;
ALTER TABLE orgmove.moves ADD COLUMN IF NOT EXISTS sync_caught_up boolean;
-- table -> LSN: a table without a unique key re-copied by a resumed copy from a newer slot snapshot;
-- the stream skips its changes committed at or before that LSN (they are in the copy).
ALTER TABLE orgmove.moves ADD COLUMN IF NOT EXISTS stream_skip jsonb NOT NULL DEFAULT '{}';

-- Rows the stream changed on the target (key as a JSON object column -> text value; '{}' for a
-- table without a key: the whole table's org rows). The cutover's final check hashes exactly these on
-- both Cells instead of the whole organization. Written in the apply's own target transaction.
CREATE TABLE IF NOT EXISTS orgmove.stream_touched (
    move_key   text NOT NULL,
    table_name text NOT NULL,
    key        jsonb NOT NULL,
    PRIMARY KEY (move_key, table_name, key)
);
