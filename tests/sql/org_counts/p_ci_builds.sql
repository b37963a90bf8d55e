
    SELECT count(*) FROM public.p_ci_builds
    WHERE project_id IN (SELECT id FROM om_org_projects)
    