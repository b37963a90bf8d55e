
    SELECT count(*) FROM public.labels
    WHERE project_id IN (SELECT id FROM om_org_projects)
       OR group_id IN (SELECT id FROM om_org_namespaces)
    