
CREATE TEMPORARY TABLE om_org_namespaces ON COMMIT DROP AS
    SELECT id FROM public.namespaces WHERE organization_id = %(org)s;
CREATE TEMPORARY TABLE om_org_projects ON COMMIT DROP AS
    SELECT p.id FROM public.projects p JOIN om_org_namespaces n ON n.id = p.namespace_id;
