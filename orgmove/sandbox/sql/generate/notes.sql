
INSERT INTO public.notes
    (id, noteable_type, noteable_id, project_id, author_id, note, position, created_at)
SELECT %(lo)s + k,
       CASE WHEN is_issue THEN 'Issue' ELSE 'MergeRequest' END,
       CASE WHEN is_issue THEN %(i_lo)s + j ELSE %(m_lo)s + j END,
       %(p_lo)s + floor(%(p)s * power(pg_temp.om_u(j, CASE WHEN is_issue THEN %(s_issue)s
                                                         ELSE %(s_mr)s END), 2))::bigint,
       1 + mod(pg_temp.om_h(k, %(s)s + 2), %(users)s),
       CASE WHEN mod(k, 4999) = 11 THEN pg_temp.om_text(%(org)s * 1000000 + k, 260)
            WHEN mod(k, 17) = 0 THEN %(uni)s::text || ' note ' || k
            WHEN mod(k, 101) = 50 THEN NULL
            ELSE 'Looks good to me, see comment ' || k END,
       CASE WHEN NOT is_issue AND mod(k, 3) <> 0
            THEN jsonb_build_object('old_path', 'app/models/project_' || mod(k, 50) || '.rb',
                                    'new_line', mod(pg_temp.om_h(k, %(s)s + 3), 900),
                                    'old_line', NULL, 'position_type', 'text') END,
       pg_temp.om_ts(k, %(s)s + 4)
FROM (SELECT k, is_issue,
             mod(pg_temp.om_h(k, %(s)s + 1),
                 CASE WHEN is_issue THEN %(i)s ELSE %(m)s END) AS j
      FROM (SELECT k, mod(pg_temp.om_h(k, %(s)s), 10) < 7 AS is_issue
            FROM generate_series(0, %(n)s - 1) k) a) x
