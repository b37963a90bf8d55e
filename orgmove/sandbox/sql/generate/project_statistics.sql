
INSERT INTO public.project_statistics (project_id, repository_size, commit_count, updated_at)
SELECT p, mod(pg_temp.om_h(p - %(p_lo)s, %(s)s), 10000000000),
       mod(pg_temp.om_h(p - %(p_lo)s, %(s)s + 1), 50000),
       pg_temp.om_ts(p - %(p_lo)s, %(s)s + 2)
FROM generate_series(%(p_lo)s, %(p_lo)s + %(pt)s - 1) p
ORDER BY p
