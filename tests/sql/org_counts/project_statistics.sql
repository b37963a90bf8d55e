
    SELECT count(*) FROM public.project_statistics
    WHERE project_id IN (SELECT id FROM om_org_projects)
    