
INSERT INTO public.project_authorizations (user_id, project_id, access_level)
SELECT 1 + mod((k / %(per)s) * 37 + mod(k, %(per)s) + %(org)s, %(users)s),
       %(p_lo)s + k / %(per)s,
       (ARRAY[10, 20, 30, 40, 50])[1 + mod(pg_temp.om_h(k, %(s)s), 5)]
FROM generate_series(0, %(n)s - 1) k
