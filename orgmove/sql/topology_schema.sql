-- The Topology Service's own database. Applied on every start; every statement is idempotent.
-- Vocabulary follows GitLab's Topology Service: cells, claims (records), leases; orgmove adds
-- organizations (state + last fencing token) and moves (the move lease with a fencing token).
-- Organizations are keyed by opaque text (an integer id 42 is '42', a uuid its text): a Cell's
-- schema may key its organizations by uuid.

CREATE SCHEMA IF NOT EXISTS topology;

CREATE TABLE IF NOT EXISTS topology.cells (
    name            text PRIMARY KEY,
    address         text NOT NULL,
    state           text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'draining', 'offline')),
    sequence_start  bigint,
    sequence_end    bigint,
    version         bigint NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((sequence_start IS NULL) = (sequence_end IS NULL)),
    CHECK (sequence_start IS NULL OR sequence_start <= sequence_end)
);

-- A lease ("lease first, commit later"). GitLab stores only created_at; orgmove keeps the row
-- after commit/rollback (status) so CommitUpdate and RollbackUpdate are idempotent and a commit
-- after a rollback is refused instead of silently succeeding.
CREATE TABLE IF NOT EXISTS topology.leases (
    uuid        uuid PRIMARY KEY,
    cell_id     text NOT NULL REFERENCES topology.cells (name),
    status      text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'committed', 'rolled_back')),
    request_id  text UNIQUE,
    seq         bigserial UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
);

CREATE TABLE IF NOT EXISTS topology.claims (
    uuid                    uuid PRIMARY KEY,
    seq                     bigserial UNIQUE,
    bucket_type             text NOT NULL,
    bucket_value            text NOT NULL,
    subject_type            text NOT NULL,
    subject_id              bigint NOT NULL,
    source_type             text NOT NULL,
    source_rails_primary_key bigint NOT NULL,
    cell_id                 text NOT NULL REFERENCES topology.cells (name),
    organization_id         text,
    status                  text NOT NULL CHECK (status IN ('ACTIVE', 'LEASE_CREATING', 'LEASE_DESTROYING')),
    lease_uuid              uuid REFERENCES topology.leases (uuid),
    version                 bigint NOT NULL DEFAULT 1,
    created_at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((status = 'ACTIVE') = (lease_uuid IS NULL))
);
CREATE UNIQUE INDEX IF NOT EXISTS claims_bucket_key ON topology.claims (bucket_type, bucket_value);
CREATE INDEX IF NOT EXISTS claims_organization_idx ON topology.claims (organization_id);
CREATE INDEX IF NOT EXISTS claims_lease_idx ON topology.claims (lease_uuid) WHERE lease_uuid IS NOT NULL;
CREATE INDEX IF NOT EXISTS claims_cell_idx ON topology.claims (cell_id, seq);

CREATE TABLE IF NOT EXISTS topology.organizations (
    id              text PRIMARY KEY,
    state           text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'read_only')),
    fencing_token   bigint NOT NULL DEFAULT 0,
    version         bigint NOT NULL DEFAULT 1,
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE IF NOT EXISTS topology.moves (
    id                uuid PRIMARY KEY,
    org_id            text NOT NULL REFERENCES topology.organizations (id),
    from_cell         text NOT NULL REFERENCES topology.cells (name),
    to_cell           text NOT NULL REFERENCES topology.cells (name),
    status            text NOT NULL CHECK (status IN ('begun', 'fenced', 'committed', 'aborted')),
    fencing_token     bigint NOT NULL,
    request_id        text UNIQUE,
    lease_expires_at  timestamptz NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    fenced_at         timestamptz,
    committed_at      timestamptz,
    aborted_at        timestamptz,
    abort_reason      text,
    claims_moved      integer,
    version           bigint NOT NULL DEFAULT 1,
    updated_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK (from_cell <> to_cell),
    UNIQUE (org_id, fencing_token)
);
-- At most one live move per organization, whatever the callers race.
CREATE UNIQUE INDEX IF NOT EXISTS moves_one_live_per_org ON topology.moves (org_id)
    WHERE status IN ('begun', 'fenced');
CREATE INDEX IF NOT EXISTS moves_org_idx ON topology.moves (org_id, created_at);

-- Databases created before organization keys were text: turn the three bigint columns into text
-- in place (42 becomes '42', so every claim, move and fencing token stays). The moves -> organizations
-- foreign key is dropped and re-added around it because both ends must change type together.
DO $$
DECLARE
    fk text;
BEGIN
    IF (SELECT data_type FROM information_schema.columns
        WHERE table_schema = 'topology' AND table_name = 'organizations' AND column_name = 'id')
       = 'bigint' THEN
        FOR fk IN
            SELECT conname FROM pg_constraint
            WHERE conrelid = 'topology.moves'::regclass AND contype = 'f'
              AND confrelid = 'topology.organizations'::regclass
        LOOP
            EXECUTE format('ALTER TABLE topology.moves DROP CONSTRAINT %I', fk);
        END LOOP;
        ALTER TABLE topology.organizations ALTER COLUMN id TYPE text USING id::text;
        ALTER TABLE topology.moves ALTER COLUMN org_id TYPE text USING org_id::text;
        ALTER TABLE topology.moves ADD CONSTRAINT moves_org_id_fkey
            FOREIGN KEY (org_id) REFERENCES topology.organizations (id);
    END IF;
    IF (SELECT data_type FROM information_schema.columns
        WHERE table_schema = 'topology' AND table_name = 'claims' AND column_name = 'organization_id')
       = 'bigint' THEN
        ALTER TABLE topology.claims ALTER COLUMN organization_id TYPE text USING organization_id::text;
    END IF;
END
$$;
