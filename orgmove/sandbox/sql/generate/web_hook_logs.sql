
INSERT INTO public.web_hook_logs_archive (project_id, url, response_status, payload, created_at)
SELECT %(p_lo)s + mod(pg_temp.om_h(kk, %(s)s), %(p)s),
       'https://hooks.example.com/' || mod(kk, 7) || '/push',
       (ARRAY[200, 200, 500, 404, NULL])[1 + mod(pg_temp.om_h(kk, %(s)s + 1), 5)],
       jsonb_build_object('object_kind', 'push', 'ref', 'refs/heads/main', 'n', kk,
                          'message', %(uni)s::text),
       pg_temp.om_ts(kk, %(s)s + 2)
FROM (SELECT CASE WHEN mod(k, 10) = 1 THEN k - 1 ELSE k END AS kk
      FROM generate_series(0, %(n)s - 1) k) x
ORDER BY kk
