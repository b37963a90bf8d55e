-- orgmove's least-privilege roles (issue 8; runbook: runbooks/09-least-privilege.md; every grant
-- and why: docs/privileges.md).
--
-- Run it as an administrator on EVERY Cell's database (a Cell is the source of some moves and
-- the target of others), AFTER the write fence (orgmove/sql/cell_schema.sql) is installed:
--
--   psql "$CELL_ADMIN_DSN" -v ON_ERROR_STOP=1 -f orgmove/sql/cell_schema.sql
--   psql "$CELL_ADMIN_DSN" -v ON_ERROR_STOP=1 \
--        -v reader_password="$READER_PW" -v writer_password="$WRITER_PW" \
--        -v cleanup_password="$CLEANUP_PW" \
--        -f runbooks/least-privilege.sql
--
-- Idempotent: rerun it after migrations that add org-scoped tables (with the new list).
--
-- Roles (orgmove never needs a superuser, and never needs to own or alter an application table):
--   orgmove_reader   the SOURCE side of plan, copy, verify, cutover and rollback. Reads the org's
--                    rows; writes only the fence row (orgmove.fences) during a cutover.
--   orgmove_writer   the TARGET side of every command. Writes the org's rows, keeps the move state
--                    in tables it creates (and owns) in the admin-owned `orgmove` schema.
--   orgmove_cleanup  the SOURCE side of `orgmove cleanup` ONLY: the one step that deletes the
--                    org's rows from the source, after the flip. A separate role, so the day-to-day
--                    source credentials can never delete application rows; enable it (or give
--                    it a password) for the cleanup window only.
--
-- Variables (psql -v NAME=VALUE):
--   reader_password, writer_password, cleanup_password   required; the roles log in over TCP
--                                                        (scram-sha-256).
--   org_tables      the org-scoped tables: every `steps[].table` of a plan, comma-separated,
--                   quoted where needed. e.g. -v org_tables="$(jq -r '[.steps[].table] | join(", ")' plan.json)"
--                   Default: the GitLab-shaped fixture schema's org tables.
--   cluster_tables  the cluster-wide tables the org's rows reference (`cluster_wide_refs[].ref_table`
--                   of a plan): the target checks the referenced rows exist. Default: the fixture's.
--   org_schemas     the schemas holding those tables. Default: public.
--
-- Partitioned tables are copied through their parent: the grant on the parent is enough.

\set ON_ERROR_STOP on

\if :{?org_tables}
\else
\set org_tables 'public.organizations, public.namespaces, public.routes, public.projects, public.issues, public.merge_requests, public.notes, public.labels, public.label_links, public.members, public.ci_pipelines, public.p_ci_builds, public.ci_job_artifacts, public.lfs_objects_projects, public.project_authorizations, public.project_statistics, public.web_hook_logs_archive'
\endif
\if :{?cluster_tables}
\else
\set cluster_tables 'public.users, public.lfs_objects'
\endif
\if :{?org_schemas}
\else
\set org_schemas 'public'
\endif

SELECT current_database() AS dbname \gset

-- The fence schema must be there (installed by an administrator, never by orgmove).
SELECT to_regprocedure('orgmove.assert_writable(text)') IS NOT NULL AS fence_installed \gset
\if :fence_installed
\else
\echo 'orgmove.assert_writable is missing: run orgmove/sql/cell_schema.sql as an administrator first'
SELECT 1/0 AS fence_schema_missing;
\endif

BEGIN;

-- --- the roles -----------------------------------------------------------------------------------
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'orgmove_reader') AS need_reader,
       NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'orgmove_writer') AS need_writer,
       NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'orgmove_cleanup') AS need_cleanup \gset
\if :need_reader
CREATE ROLE orgmove_reader;
\endif
\if :need_writer
CREATE ROLE orgmove_writer;
\endif
\if :need_cleanup
CREATE ROLE orgmove_cleanup;
\endif
ALTER ROLE orgmove_reader  LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'reader_password';
ALTER ROLE orgmove_writer  LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'writer_password';
ALTER ROLE orgmove_cleanup LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'cleanup_password';

-- --- orgmove_reader: the source ------------------------------------------------------------------
GRANT CONNECT ON DATABASE :"dbname" TO orgmove_reader;
GRANT USAGE ON SCHEMA :org_schemas TO orgmove_reader;
GRANT SELECT ON TABLE :org_tables TO orgmove_reader;
-- The write fence: the cutover takes the org's fence lock and writes the fence row; rollback and
-- an abort delete it.
GRANT USAGE ON SCHEMA orgmove TO orgmove_reader;
GRANT EXECUTE ON FUNCTION orgmove.fence_lock_key(text), orgmove.assert_writable(text),
    orgmove.assert_writable(bigint) TO orgmove_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE orgmove.fences TO orgmove_reader;

-- --- orgmove_writer: the target ------------------------------------------------------------------
-- TEMPORARY: cutover's sync stages re-copied chunks in a temporary table.
GRANT CONNECT, TEMPORARY ON DATABASE :"dbname" TO orgmove_writer;
GRANT USAGE ON SCHEMA :org_schemas TO orgmove_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE :org_tables TO orgmove_writer;
-- Pre-flight: the cluster-wide rows the org references must exist on the target.
GRANT SELECT ON TABLE :cluster_tables TO orgmove_writer;
-- Move state: orgmove creates its tables (moves, chunks, chunk_log, verify_chunks, events) in the
-- admin-owned `orgmove` schema and owns them. It cannot touch the fence functions.
GRANT USAGE, CREATE ON SCHEMA orgmove TO orgmove_writer;
GRANT EXECUTE ON FUNCTION orgmove.fence_lock_key(text), orgmove.assert_writable(text),
    orgmove.assert_writable(bigint) TO orgmove_writer;
-- After the flip the target lifts any fence a previous move (the move back) left on it.
GRANT SELECT, DELETE ON TABLE orgmove.fences TO orgmove_writer;
-- The copy and the cutover's resync write the org's rows as a replica
-- (session_replication_role = replica: the target's triggers and per-row FK triggers do not fire;
-- orgmove then checks the foreign keys set-based). PostgreSQL 15+ grants the parameter; on older
-- servers only a superuser may set it, and moves need --no-replica-role.
SELECT current_setting('server_version_num')::int >= 150000 AS can_grant_parameter \gset
\if :can_grant_parameter
GRANT SET ON PARAMETER session_replication_role TO orgmove_writer;
\endif

-- --- orgmove_cleanup: the source, after the flip only --------------------------------------------
GRANT CONNECT ON DATABASE :"dbname" TO orgmove_cleanup;
GRANT USAGE ON SCHEMA :org_schemas TO orgmove_cleanup;
-- Batched deletes select the org's keys first (through the same join paths as the copy).
GRANT SELECT, DELETE ON TABLE :org_tables TO orgmove_cleanup;
GRANT USAGE ON SCHEMA orgmove TO orgmove_cleanup;
GRANT SELECT ON TABLE orgmove.fences TO orgmove_cleanup;

COMMIT;

-- Optional: let the copy see the target's replica lag (pg_stat_replication's lag columns are
-- hidden from roles without it), so it pauses while replicas lag:
--   GRANT pg_read_all_stats TO orgmove_writer;
