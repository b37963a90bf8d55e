
INSERT INTO public.users (id, username, name, email, created_at, preferences)
SELECT u, 'user' || u,
       CASE WHEN mod(u, 7) = 0 THEN %(uni)s::text || ' ' || u ELSE 'User ' || u END,
       'user' || u || '@example.com',
       pg_temp.om_ts(u, %(s)s),
       jsonb_build_object(
           'theme', (ARRAY['light', 'dark', 'solarized'])[1 + mod(pg_temp.om_h(u, %(s)s + 1), 3)],
           'time_zone', (ARRAY['UTC', 'Europe/Berlin', 'Asia/Tokyo'])[1 + mod(u, 3)],
           'tab_width', 2 + mod(u, 3) * 2,
           'beta', mod(u, 5) = 0)
FROM generate_series(1, %(n)s) u
