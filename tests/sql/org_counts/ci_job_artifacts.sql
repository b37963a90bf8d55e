
    SELECT count(*) FROM public.ci_job_artifacts
    WHERE project_id IN (SELECT id FROM om_org_projects)
    