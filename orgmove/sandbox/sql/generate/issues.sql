
INSERT INTO public.issues
    (id, project_id, author_id, iid, title, description, state, weight, due_date, time_estimate,
     created_at)
SELECT %(lo)s + k, %(p_lo)s + pidx,
       1 + mod(pg_temp.om_h(k, %(s)s + 1), %(users)s),
       row_number() OVER (PARTITION BY pidx ORDER BY k),
       CASE WHEN mod(k, 13) = 0 THEN %(uni)s::text || ' issue ' || k
            ELSE 'Issue ' || k || ': fix the '
                 || (ARRAY['build', 'login', 'search', 'pipeline', 'docs'])[1 + mod(k, 5)] END,
       CASE WHEN mod(k, 1999) = 7 THEN pg_temp.om_text(%(org)s * 1000000 + k, 280)
            WHEN mod(pg_temp.om_h(k, %(s)s + 2), 5) = 0 THEN NULL
            ELSE 'Steps to reproduce issue ' || k || E'.\nExpected: it works.' END,
       (1 + mod(pg_temp.om_h(k, %(s)s + 3), 2))::smallint,
       CASE WHEN mod(pg_temp.om_h(k, %(s)s + 4), 3) = 0 THEN NULL
            ELSE pg_temp.om_u(k, %(s)s + 5) * 8 END,
       CASE WHEN mod(k, 4) = 0 THEN NULL
            ELSE date '2020-01-01' + mod(pg_temp.om_h(k, %(s)s + 6), 1500)::integer END,
       CASE WHEN mod(k, 3) = 0 THEN NULL
            ELSE mod(pg_temp.om_h(k, %(s)s + 7), 144000) * interval '1 second' END,
       pg_temp.om_ts(k, %(s)s + 8)
FROM (SELECT k, floor(%(p)s * power(pg_temp.om_u(k, %(s)s), 2))::bigint AS pidx
      FROM generate_series(0, %(n)s - 1) k) x
