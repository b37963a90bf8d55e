
    SELECT count(*) FROM public.lfs_objects_projects
    WHERE project_id IN (SELECT id FROM om_org_projects)
    