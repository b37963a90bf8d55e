
    SELECT count(*) FROM public.organizations WHERE id = %(org)s
    