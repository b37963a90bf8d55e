
INSERT INTO public.p_ci_builds
    (id, partition_id, commit_id, project_id, name, status, stage_idx, options, created_at)
SELECT %(lo)s + k,
       CASE WHEN mod(k, %(np)s) < %(np)s / 2 THEN 100 ELSE 101 END,
       %(pipe_lo)s + mod(k, %(np)s),
       %(p_lo)s + floor(%(p)s * power(pg_temp.om_u(mod(k, %(np)s), %(s_pipe)s), 2))::bigint,
       (ARRAY['rspec', 'rubocop', 'build', 'deploy', 'jest'])[1 + mod(k, 5)] || ' '
           || (1 + k / %(np)s),
       (ARRAY['success', 'failed', 'skipped', 'success'])[1 + mod(pg_temp.om_h(k, %(s)s), 4)],
       mod(k / %(np)s, 4),
       '{"script": ["bundle install", "bundle exec rspec"], "timeout": 3600}'::jsonb
           || jsonb_build_object('retry', mod(k, 3)),
       pg_temp.om_ts(k, %(s)s + 1)
FROM generate_series(0, %(n)s - 1) k
