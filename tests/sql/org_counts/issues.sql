
    SELECT count(*) FROM public.issues
    WHERE project_id IN (SELECT id FROM om_org_projects)
    