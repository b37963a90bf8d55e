
    SELECT count(*) FROM public.label_links ll JOIN public.labels l ON l.id = ll.label_id
    WHERE l.project_id IN (SELECT id FROM om_org_projects)
       OR l.group_id IN (SELECT id FROM om_org_namespaces)
    