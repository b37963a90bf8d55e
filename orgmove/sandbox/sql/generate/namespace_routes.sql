
WITH RECURSIVE r AS (
    SELECT id, path AS full_path, name AS full_name FROM public.namespaces
    WHERE organization_id = %(org)s AND parent_id IS NULL
    UNION ALL
    SELECT n.id, r.full_path || '/' || n.path, r.full_name || ' / ' || n.name
    FROM public.namespaces n JOIN r ON n.parent_id = r.id
)
INSERT INTO public.routes (id, source_type, source_id, path, name)
SELECT %(lo)s + row_number() OVER (ORDER BY id) - 1, 'Namespace', id, full_path, full_name FROM r
