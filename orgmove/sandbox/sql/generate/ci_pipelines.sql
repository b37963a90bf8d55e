
INSERT INTO public.ci_pipelines (id, project_id, ref, sha, status, duration_s, created_at)
SELECT %(lo)s + k,
       %(p_lo)s + floor(%(p)s * power(pg_temp.om_u(k, %(s)s), 2))::bigint,
       (ARRAY['main', 'master', 'feature/login', 'release/16.0', 'ünïcödé-branch'])
           [1 + mod(k, 5)],
       substring(sha256(int8send(%(org)s * 100000000 + k)) FROM 1 FOR 20),
       st,
       CASE WHEN st IN ('running', 'created') THEN NULL
            ELSE pg_temp.om_u(k, %(s)s + 2) * 3600 END,
       pg_temp.om_ts(k, %(s)s + 3)
FROM (SELECT k, (ARRAY['success', 'failed', 'running', 'canceled', 'success', 'created'])
                    [1 + mod(pg_temp.om_h(k, %(s)s + 1), 6)] AS st
      FROM generate_series(0, %(n)s - 1) k) x
