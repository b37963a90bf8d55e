-- The GitLab-shaped fixture schema (docs/architecture.md, "Development tools"), loaded identically into every Cell by
-- orgmove.seed.install_schema(). Tables live in `public`, partitions of p_ci_builds in
-- `gitlab_partitions_dynamic`, like in GitLab.
--
-- What makes real moves hard, and where it is:
--   * cluster-wide tables present in every Cell with the same rows: users, lfs_objects
--   * cell-local tables that never move: application_settings, schema_migrations
--   * self-referencing FK + bigint[] array: namespaces.parent_id, namespaces.traversal_ids
--   * polymorphic links without FK: routes, members (source_type/source_id), notes
--     (noteable_type/noteable_id), label_links (target_type/target_id)
--   * links only by a sharding rule (no FK): notes.project_id, ci_* .project_id,
--     web_hook_logs_archive.project_id, projects.forked_from_project_id
--   * GitLab's FK merge_requests.source_project_id -> projects(id): not the owner (the target
--     project is); a fork in ANOTHER organization would dangle on the target after a move, which
--     the FK check refuses (the seed forks within the organization)
--   * GitLab's trigger shapes: a BEFORE INSERT trigger assigning p_ci_builds.id from the
--     sequence (assign_p_ci_builds_id_value), an AFTER INSERT trigger on issues keeping a counter
--     (the sequence issues_created_counter); a move writes as a replica and fires neither
--   * LIST-partitioned p_ci_builds, referenced by a composite FK from ci_job_artifacts
--   * composite primary key: project_authorizations; no primary key: web_hook_logs_archive
--   * generated column: projects.path_lower; identity column: project_statistics.id
--   * jsonb, arrays, bytea, interval, double precision, date, NULLs, non-ASCII and TOAST-sized values
--
-- Every id except organizations/users/lfs_objects comes from a sequence. Each Cell allocates from
-- its own range (cell N from N * 10^12): install_schema() moves the sequences with setval(), which
-- changes no catalog row, so the catalog stays identical on every Cell.

CREATE SCHEMA IF NOT EXISTS gitlab_partitions_dynamic;

-- ---------------------------------------------------------------- cell-local, never moved
CREATE TABLE public.schema_migrations (
    version text PRIMARY KEY
);

CREATE TABLE public.application_settings (
    id bigserial PRIMARY KEY,
    settings jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- ---------------------------------------------------------------- cluster-wide, never moved
CREATE TABLE public.users (
    id bigint PRIMARY KEY,
    username text NOT NULL UNIQUE,
    name text NOT NULL,
    email text NOT NULL,
    created_at timestamptz NOT NULL,
    preferences jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE TABLE public.lfs_objects (
    id bigint PRIMARY KEY,
    oid text NOT NULL UNIQUE,
    size bigint NOT NULL
);

-- ---------------------------------------------------------------- organization-scoped
CREATE TABLE public.organizations (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    path text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL
);

CREATE TABLE public.namespaces (
    id bigserial PRIMARY KEY,
    organization_id bigint NOT NULL REFERENCES public.organizations (id),
    parent_id bigint REFERENCES public.namespaces (id),
    type text NOT NULL CHECK (type IN ('Group', 'User')),
    name text NOT NULL,
    path text NOT NULL,
    traversal_ids bigint[] NOT NULL DEFAULT '{}',
    owner_id bigint REFERENCES public.users (id),
    description text,
    created_at timestamptz NOT NULL
);
CREATE INDEX index_namespaces_on_organization_id ON public.namespaces (organization_id);
CREATE INDEX index_namespaces_on_parent_id ON public.namespaces (parent_id);
CREATE INDEX index_namespaces_on_owner_id ON public.namespaces (owner_id);
CREATE INDEX index_namespaces_on_traversal_ids ON public.namespaces (traversal_ids);

-- Polymorphic: source_type 'Namespace' or 'Project'; no foreign key.
CREATE TABLE public.routes (
    id bigserial PRIMARY KEY,
    source_type text NOT NULL CHECK (source_type IN ('Namespace', 'Project')),
    source_id bigint NOT NULL,
    path text NOT NULL UNIQUE,
    name text NOT NULL
);
CREATE UNIQUE INDEX index_routes_on_source_id_and_source_type
    ON public.routes (source_id, source_type);

CREATE TABLE public.projects (
    id bigserial PRIMARY KEY,
    namespace_id bigint NOT NULL REFERENCES public.namespaces (id),
    creator_id bigint REFERENCES public.users (id),
    name text NOT NULL,
    path text NOT NULL,
    path_lower text GENERATED ALWAYS AS (lower(path)) STORED,
    description text,
    visibility_level integer NOT NULL DEFAULT 0,
    star_count integer NOT NULL DEFAULT 0,
    settings jsonb,
    topics text[] NOT NULL DEFAULT '{}',
    archived boolean NOT NULL DEFAULT false,
    forked_from_project_id bigint,  -- no FK: a fork may point into another organization
    created_at timestamptz NOT NULL,
    last_activity_at timestamptz
);
CREATE UNIQUE INDEX index_projects_on_namespace_id_and_path_lower
    ON public.projects (namespace_id, path_lower);
CREATE INDEX index_projects_on_creator_id ON public.projects (creator_id);
CREATE INDEX index_projects_on_forked_from_project_id ON public.projects (forked_from_project_id);

CREATE TABLE public.issues (
    id bigserial PRIMARY KEY,
    project_id bigint NOT NULL REFERENCES public.projects (id),
    author_id bigint REFERENCES public.users (id),
    iid integer NOT NULL,
    title text NOT NULL,
    description text,
    state smallint NOT NULL DEFAULT 1,
    weight double precision,
    due_date date,
    time_estimate interval,
    created_at timestamptz NOT NULL
);
CREATE UNIQUE INDEX index_issues_on_project_id_and_iid ON public.issues (project_id, iid);
CREATE INDEX index_issues_on_author_id ON public.issues (author_id);

-- A counter kept by an AFTER trigger (SECURITY DEFINER: any role inserting issues bumps it).
CREATE SEQUENCE public.issues_created_counter;
CREATE FUNCTION public.bump_issues_created_counter() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    PERFORM nextval('public.issues_created_counter'::regclass);
    RETURN NULL;
END
$$;
CREATE TRIGGER bump_issues_created_counter AFTER INSERT ON public.issues
    FOR EACH ROW EXECUTE FUNCTION public.bump_issues_created_counter();

CREATE TABLE public.merge_requests (
    id bigserial PRIMARY KEY,
    target_project_id bigint NOT NULL REFERENCES public.projects (id),
    source_project_id bigint REFERENCES public.projects (id),  -- a fork, maybe elsewhere
    author_id bigint REFERENCES public.users (id),
    iid integer NOT NULL,
    title text NOT NULL,
    state text NOT NULL,
    merge_status text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE UNIQUE INDEX index_merge_requests_on_target_project_id_and_iid
    ON public.merge_requests (target_project_id, iid);
CREATE INDEX index_merge_requests_on_source_project_id ON public.merge_requests (source_project_id);
CREATE INDEX index_merge_requests_on_author_id ON public.merge_requests (author_id);

-- Polymorphic noteable; project_id is the sharding key, linked by a rule only (no FK).
CREATE TABLE public.notes (
    id bigserial PRIMARY KEY,
    noteable_type text NOT NULL CHECK (noteable_type IN ('Issue', 'MergeRequest')),
    noteable_id bigint NOT NULL,
    project_id bigint,
    author_id bigint REFERENCES public.users (id),
    note text,
    position jsonb,
    created_at timestamptz NOT NULL
);
CREATE INDEX index_notes_on_noteable_id_and_noteable_type ON public.notes (noteable_id, noteable_type);
CREATE INDEX index_notes_on_project_id ON public.notes (project_id);
CREATE INDEX index_notes_on_author_id ON public.notes (author_id);

CREATE TABLE public.labels (
    id bigserial PRIMARY KEY,
    project_id bigint REFERENCES public.projects (id),
    group_id bigint REFERENCES public.namespaces (id),
    title text NOT NULL,
    color text NOT NULL,
    CONSTRAINT check_labels_project_or_group CHECK (num_nonnulls(project_id, group_id) = 1)
);
CREATE INDEX index_labels_on_project_id ON public.labels (project_id);
CREATE INDEX index_labels_on_group_id ON public.labels (group_id);

CREATE TABLE public.label_links (
    id bigserial PRIMARY KEY,
    label_id bigint NOT NULL REFERENCES public.labels (id),
    target_type text NOT NULL CHECK (target_type IN ('Issue', 'MergeRequest')),
    target_id bigint NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX index_label_links_on_label_id ON public.label_links (label_id);
CREATE INDEX index_label_links_on_target_id_and_target_type ON public.label_links (target_id, target_type);

-- Polymorphic source: 'Namespace' or 'Project'; no FK on source_id.
CREATE TABLE public.members (
    id bigserial PRIMARY KEY,
    source_type text NOT NULL CHECK (source_type IN ('Namespace', 'Project')),
    source_id bigint NOT NULL,
    user_id bigint NOT NULL REFERENCES public.users (id),
    access_level integer NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX index_members_on_source_id_and_source_type ON public.members (source_id, source_type);
CREATE INDEX index_members_on_user_id ON public.members (user_id);

-- CI tables use loose foreign keys (no FK), like GitLab's CI database.
CREATE TABLE public.ci_pipelines (
    id bigserial PRIMARY KEY,
    project_id bigint NOT NULL,
    ref text NOT NULL,
    sha bytea NOT NULL,
    status text NOT NULL,
    duration_s double precision,
    created_at timestamptz NOT NULL
);
CREATE INDEX index_ci_pipelines_on_project_id ON public.ci_pipelines (project_id);

CREATE TABLE public.p_ci_builds (
    id bigserial NOT NULL,
    partition_id bigint NOT NULL,
    commit_id bigint,  -- the pipeline; no FK
    project_id bigint NOT NULL,
    name text NOT NULL,
    status text NOT NULL,
    stage_idx integer,
    options jsonb,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (id, partition_id)
) PARTITION BY LIST (partition_id);
CREATE TABLE gitlab_partitions_dynamic.ci_builds_100
    PARTITION OF public.p_ci_builds FOR VALUES IN (100);
CREATE TABLE gitlab_partitions_dynamic.ci_builds_101
    PARTITION OF public.p_ci_builds FOR VALUES IN (101);
CREATE INDEX index_p_ci_builds_on_project_id ON public.p_ci_builds (project_id);
CREATE INDEX index_p_ci_builds_on_commit_id ON public.p_ci_builds (commit_id);

-- GitLab's shape: every new build takes its id from the sequence, whatever the INSERT says.
CREATE FUNCTION public.assign_p_ci_builds_id_value() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.id := nextval('public.p_ci_builds_id_seq'::regclass);
    RETURN NEW;
END
$$;
CREATE TRIGGER assign_p_ci_builds_id_value BEFORE INSERT ON public.p_ci_builds
    FOR EACH ROW EXECUTE FUNCTION public.assign_p_ci_builds_id_value();

CREATE TABLE public.ci_job_artifacts (
    id bigserial PRIMARY KEY,
    project_id bigint NOT NULL,
    job_id bigint NOT NULL,
    partition_id bigint NOT NULL,
    file_type integer NOT NULL,
    file bytea,
    size bigint,
    created_at timestamptz NOT NULL,
    CONSTRAINT fk_ci_job_artifacts_job FOREIGN KEY (job_id, partition_id)
        REFERENCES public.p_ci_builds (id, partition_id)
);
CREATE INDEX index_ci_job_artifacts_on_project_id ON public.ci_job_artifacts (project_id);
CREATE INDEX index_ci_job_artifacts_on_job_id_and_partition_id
    ON public.ci_job_artifacts (job_id, partition_id);

CREATE TABLE public.lfs_objects_projects (
    id bigserial PRIMARY KEY,
    lfs_object_id bigint NOT NULL REFERENCES public.lfs_objects (id),
    project_id bigint NOT NULL REFERENCES public.projects (id)
);
CREATE INDEX index_lfs_objects_projects_on_lfs_object_id ON public.lfs_objects_projects (lfs_object_id);
CREATE INDEX index_lfs_objects_projects_on_project_id ON public.lfs_objects_projects (project_id);

-- Composite primary key.
CREATE TABLE public.project_authorizations (
    user_id bigint NOT NULL REFERENCES public.users (id),
    project_id bigint NOT NULL REFERENCES public.projects (id),
    access_level integer NOT NULL,
    PRIMARY KEY (user_id, project_id)
);
CREATE INDEX index_project_authorizations_on_project_id ON public.project_authorizations (project_id);

-- Identity column.
CREATE TABLE public.project_statistics (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id bigint NOT NULL UNIQUE REFERENCES public.projects (id),
    repository_size bigint NOT NULL DEFAULT 0,
    commit_count integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL
);

-- No primary key, no unique constraint: duplicate rows are legal.
CREATE TABLE public.web_hook_logs_archive (
    project_id bigint NOT NULL,
    url text NOT NULL,
    response_status integer,
    payload jsonb,
    created_at timestamptz NOT NULL
);
CREATE INDEX index_web_hook_logs_archive_on_project_id ON public.web_hook_logs_archive (project_id);

INSERT INTO public.schema_migrations (version) VALUES
    ('20240101000000'), ('20240115120000'), ('20240201093000'), ('20240301000000');
