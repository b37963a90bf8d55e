
    SELECT count(*) FROM public.notes
    WHERE project_id IN (SELECT id FROM om_org_projects)
    