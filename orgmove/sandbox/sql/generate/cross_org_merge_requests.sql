
INSERT INTO public.merge_requests
    (id, target_project_id, source_project_id, author_id, iid, title, state, merge_status,
     created_at)
SELECT %(lo)s + k, %(upstream)s, %(fork)s,
       1 + mod(pg_temp.om_h(k, %(s)s), %(users)s),
       (SELECT coalesce(max(iid), 0) FROM public.merge_requests
        WHERE target_project_id = %(upstream)s) + 1 + k,
       'Contribution from organization ' || %(org)s || ' #' || k,
       (ARRAY['opened', 'merged'])[1 + mod(k, 2)], 'can_be_merged',
       pg_temp.om_ts(k, %(s)s + 1)
FROM generate_series(0, %(n)s - 1) k
