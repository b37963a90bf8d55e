-- The rebalancer's bookkeeping, next to procrastinate's tables in the Topology Service's database.
CREATE SCHEMA IF NOT EXISTS rebalance;

CREATE TABLE IF NOT EXISTS rebalance.proposals (
    id text PRIMARY KEY,
    doc jsonb NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now()
);

-- One row per queued move (one procrastinate job); the job's phase, progress and outcome.
CREATE TABLE IF NOT EXISTS rebalance.moves (
    job_id bigint PRIMARY KEY,
    proposal_id text NOT NULL,
    org text NOT NULL,
    from_cell text NOT NULL,
    to_cell text NOT NULL,
    estimated_bytes bigint NOT NULL DEFAULT 0,
    wave integer NOT NULL DEFAULT 0,
    state text NOT NULL DEFAULT 'queued',  -- queued, running, retrying, done, failed, stopped
    phase text NOT NULL DEFAULT 'queued',
    attempts integer NOT NULL DEFAULT 0,
    bytes_done bigint NOT NULL DEFAULT 0,
    rows_done bigint NOT NULL DEFAULT 0,
    reason text,
    worker text,
    plan jsonb,
    started_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- One row per attempt that held its Cells' slots: the history the concurrency limits are
-- checked against.
CREATE TABLE IF NOT EXISTS rebalance.runs (
    id bigserial PRIMARY KEY,
    job_id bigint NOT NULL,
    org text NOT NULL,
    from_cell text NOT NULL,
    to_cell text NOT NULL,
    worker text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at timestamptz,
    outcome text
);

CREATE TABLE IF NOT EXISTS rebalance.control (
    id integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    stopped boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO rebalance.control (id) VALUES (1) ON CONFLICT (id) DO NOTHING;
