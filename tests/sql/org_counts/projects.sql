
    SELECT count(*) FROM om_org_projects
    