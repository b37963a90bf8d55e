
INSERT INTO public.lfs_objects_projects (id, lfs_object_id, project_id)
SELECT %(lo)s + k, 1 + mod(pg_temp.om_h(k, %(s)s), %(lfs)s),
       %(p_lo)s + mod(pg_temp.om_h(k, %(s)s + 1), %(p)s)
FROM generate_series(0, %(n)s - 1) k
