
INSERT INTO public.labels (id, project_id, group_id, title, color)
SELECT %(lo)s + k,
       CASE WHEN k < %(nl)s THEN %(p_lo)s + mod(k, %(p)s) END,
       CASE WHEN k >= %(nl)s THEN %(ns_lo)s + mod(k - %(nl)s, %(groups)s) END,
       CASE WHEN mod(k, 10) = 3 THEN %(uni)s::text || ' ' || k
            ELSE (ARRAY['bug', 'feature', 'backend', 'frontend', 'P1', 'security'])[1 + mod(k, 6)]
                 || '-' || k END,
       '#' || lpad(to_hex(mod(pg_temp.om_h(k, %(s)s), 16777216)), 6, '0')
FROM generate_series(0, %(n)s - 1) k
