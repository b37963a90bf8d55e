
INSERT INTO public.organizations (id, name, path, created_at)
VALUES (%(org)s,
        CASE WHEN %(org)s = 2 THEN 'Organisation ' || %(uni)s::text
             ELSE 'Organization ' || %(org)s END,
        'org-' || %(org)s,
        pg_temp.om_ts(%(org)s, %(s)s))
