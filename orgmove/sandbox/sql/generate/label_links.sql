
INSERT INTO public.label_links (id, label_id, target_type, target_id, created_at)
SELECT %(lo)s + k,
       %(l_lo)s + floor(%(p)s * power(pg_temp.om_u(j, CASE WHEN is_issue THEN %(s_issue)s
                                                        ELSE %(s_mr)s END), 2))::bigint
           + %(p)s * mod(pg_temp.om_h(k, %(s)s + 2), %(nl)s / %(p)s),
       CASE WHEN is_issue THEN 'Issue' ELSE 'MergeRequest' END,
       CASE WHEN is_issue THEN %(i_lo)s + j ELSE %(m_lo)s + j END,
       pg_temp.om_ts(k, %(s)s + 3)
FROM (SELECT k, is_issue,
             mod(pg_temp.om_h(k, %(s)s + 1),
                 CASE WHEN is_issue THEN %(i)s ELSE %(m)s END) AS j
      FROM (SELECT k, mod(pg_temp.om_h(k, %(s)s), 10) < 7 AS is_issue
            FROM generate_series(0, %(n)s - 1) k) a) x
