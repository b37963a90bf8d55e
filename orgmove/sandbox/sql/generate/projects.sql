
INSERT INTO public.projects
    (id, namespace_id, creator_id, name, path, description, visibility_level, star_count,
     settings, topics, archived, forked_from_project_id, created_at, last_activity_at)
SELECT %(lo)s + j,
       %(ns_lo)s + CASE WHEN j < %(p)s
                        THEN floor(%(ns)s * power(pg_temp.om_u(j, %(s)s), 2))::bigint ELSE 0 END,
       1 + mod(pg_temp.om_h(j, %(s)s + 1), %(users)s),
       CASE WHEN j = %(p)s THEN 'Fork of upstream' ELSE 'Project ' || j END,
       CASE WHEN j = %(p)s THEN 'upstream-fork'
            WHEN mod(j, 5) = 1 THEN 'Project-' || j ELSE 'project-' || j END,
       CASE WHEN mod(j, 97) = 0 THEN pg_temp.om_text(%(org)s * 1000000 + j, 300)
            WHEN mod(pg_temp.om_h(j, %(s)s + 2), 10) = 0 THEN NULL
            WHEN mod(pg_temp.om_h(j, %(s)s + 2), 10) = 1 THEN %(uni)s::text || ' project ' || j
            ELSE 'Project ' || j || ' of organization ' || %(org)s END,
       (ARRAY[0, 10, 20])[1 + mod(pg_temp.om_h(j, %(s)s + 3), 3)],
       mod(pg_temp.om_h(j, %(s)s + 4), 500),
       CASE WHEN mod(j, 9) = 4 THEN NULL
            ELSE jsonb_build_object(
                'merge_method', (ARRAY['merge', 'rebase_merge', 'ff'])[1 + mod(j, 3)],
                'ci', jsonb_build_object('timeout', 3600 + mod(j, 7) * 60,
                                         'auto_cancel', mod(j, 2) = 0),
                'description', %(uni)s::text) END,
       CASE WHEN mod(j, 3) = 0 THEN '{}'::text[]
            ELSE ARRAY['topic-' || mod(j, 5), 'ruby', %(uni)s::text] END,
       mod(j, 11) = 10,
       CASE WHEN j = %(p)s THEN coalesce(%(upstream)s, %(lo)s)
            WHEN j > 0 AND mod(j, 7) = 3 THEN %(lo)s + mod(pg_temp.om_h(j, %(s)s + 5), j) END,
       pg_temp.om_ts(j, %(s)s + 6),
       CASE WHEN mod(j, 13) = 5 THEN NULL
            ELSE pg_temp.om_ts(j, %(s)s + 7) + interval '400 days' END
FROM generate_series(0, %(n)s - 1) j
