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
