
    SELECT count(*) FROM public.routes r
    WHERE (r.source_type = 'Namespace' AND r.source_id IN (SELECT id FROM om_org_namespaces))
       OR (r.source_type = 'Project' AND r.source_id IN (SELECT id FROM om_org_projects))
    