
    SELECT count(*) FROM public.merge_requests
    WHERE target_project_id IN (SELECT id FROM om_org_projects)
    