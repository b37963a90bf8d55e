
    SELECT count(*) FROM public.members m
    WHERE (m.source_type = 'Namespace' AND m.source_id IN (SELECT id FROM om_org_namespaces))
       OR (m.source_type = 'Project' AND m.source_id IN (SELECT id FROM om_org_projects))
    