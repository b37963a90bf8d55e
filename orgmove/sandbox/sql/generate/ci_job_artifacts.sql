
INSERT INTO public.ci_job_artifacts
    (id, project_id, job_id, partition_id, file_type, file, size, created_at)
SELECT %(lo)s + k,
       %(p_lo)s + floor(%(p)s * power(pg_temp.om_u(mod(b, %(np)s), %(s_pipe)s), 2))::bigint,
       %(b_lo)s + b,
       CASE WHEN mod(b, %(np)s) < %(np)s / 2 THEN 100 ELSE 101 END,
       1 + mod(k, 3), file, coalesce(length(file), 0), pg_temp.om_ts(k, %(s)s + 1)
FROM (SELECT k, b,
             CASE WHEN mod(k, 200) = 0 THEN pg_temp.om_bytes(%(org)s * 10000000 + k, 300)
                  WHEN mod(k, 7) = 3 THEN NULL
                  ELSE substring(sha512(int8send(%(org)s * 10000000 + k))
                                 || sha512(int8send(-%(org)s * 10000000 - k))
                                 FROM 1 FOR 8 + mod(pg_temp.om_h(k, %(s)s), 120)::integer) END
                 AS file
      FROM (SELECT k, (k * %(nb)s) / %(n)s AS b FROM generate_series(0, %(n)s - 1) k) a) x
