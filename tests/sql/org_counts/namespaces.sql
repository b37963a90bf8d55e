
    SELECT count(*) FROM om_org_namespaces
    