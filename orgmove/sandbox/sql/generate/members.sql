
INSERT INTO public.members (id, source_type, source_id, user_id, access_level, created_at)
SELECT %(lo)s + k,
       CASE WHEN mod(k, 2) = 0 THEN 'Namespace' ELSE 'Project' END,
       CASE WHEN mod(k, 2) = 0 THEN %(ns_lo)s + mod(k / 2, %(groups)s)
            ELSE %(p_lo)s + mod(k / 2, %(p)s) END,
       1 + mod(pg_temp.om_h(k, %(s)s), %(users)s),
       (ARRAY[10, 20, 30, 40, 50])[1 + mod(pg_temp.om_h(k, %(s)s + 1), 5)],
       pg_temp.om_ts(k, %(s)s + 2)
FROM generate_series(0, %(n)s - 1) k
