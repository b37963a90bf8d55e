
    SELECT count(*) FROM public.ci_pipelines
    WHERE project_id IN (SELECT id FROM om_org_projects)
    