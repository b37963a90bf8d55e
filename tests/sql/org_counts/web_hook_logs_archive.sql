
    SELECT count(*) FROM public.web_hook_logs_archive
    WHERE project_id IN (SELECT id FROM om_org_projects)
    