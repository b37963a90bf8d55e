
INSERT INTO public.routes (id, source_type, source_id, path, name)
SELECT %(lo)s + row_number() OVER (ORDER BY p.id) - 1, 'Project', p.id,
       r.path || '/' || p.path, r.name || ' / ' || p.name
FROM public.projects p
JOIN public.routes r ON r.source_id = p.namespace_id AND r.source_type = 'Namespace'
WHERE p.id >= %(p_lo)s AND p.id < %(p_lo)s + %(pt)s
