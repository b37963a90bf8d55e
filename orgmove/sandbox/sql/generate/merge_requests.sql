
INSERT INTO public.merge_requests
    (id, target_project_id, source_project_id, author_id, iid, title, state, merge_status,
     created_at)
SELECT %(lo)s + k, %(p_lo)s + pidx, %(p_lo)s + pidx,
       1 + mod(pg_temp.om_h(k, %(s)s + 1), %(users)s),
       row_number() OVER (PARTITION BY pidx ORDER BY k),
       CASE WHEN mod(k, 11) = 0 THEN %(uni)s::text || ' MR ' || k ELSE 'Merge request ' || k END,
       (ARRAY['opened', 'merged', 'closed', 'merged'])[1 + mod(pg_temp.om_h(k, %(s)s + 2), 4)],
       (ARRAY['can_be_merged', 'cannot_be_merged', 'unchecked'])
           [1 + mod(pg_temp.om_h(k, %(s)s + 3), 3)],
       pg_temp.om_ts(k, %(s)s + 4)
FROM (SELECT k, floor(%(p)s * power(pg_temp.om_u(k, %(s)s), 2))::bigint AS pidx
      FROM generate_series(0, %(n)s - 1) k) x
