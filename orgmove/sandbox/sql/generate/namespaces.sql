
WITH RECURSIVE idx AS (
    SELECT j, CASE WHEN j < %(g)s THEN NULL
                   WHEN %(deep)s AND mod(pg_temp.om_h(j, %(s)s), 4) <> 0 THEN j - 1
                   ELSE mod(pg_temp.om_h(j, %(s)s), j) END AS parent_j
    FROM generate_series(0, %(g)s + %(sg)s - 1) j
), tree AS (
    SELECT j, parent_j, ARRAY[%(lo)s + j] AS trav FROM idx WHERE parent_j IS NULL
    UNION ALL
    SELECT c.j, c.parent_j, t.trav || (%(lo)s + c.j) FROM idx c JOIN tree t ON c.parent_j = t.j
)
INSERT INTO public.namespaces
    (id, organization_id, parent_id, type, name, path, traversal_ids, owner_id, description,
     created_at)
SELECT %(lo)s + j, %(org)s, %(lo)s + parent_j, 'Group',
       CASE WHEN parent_j IS NULL THEN 'Group ' || j ELSE 'Subgroup ' || j END
           || CASE WHEN mod(j, 5) = 2 THEN ' ' || %(uni)s::text ELSE '' END,
       CASE WHEN parent_j IS NULL THEN 'org' || %(org)s || '-group-' || j
            ELSE 'sub-' || j END,
       trav,
       1 + mod(pg_temp.om_h(j, %(s)s + 1), %(users)s),
       CASE mod(pg_temp.om_h(j, %(s)s + 2), 4)
           WHEN 0 THEN NULL
           WHEN 1 THEN %(uni)s::text || ' group ' || j
           ELSE 'Group ' || j || ' of organization ' || %(org)s END,
       pg_temp.om_ts(j, %(s)s + 3)
FROM tree
UNION ALL
SELECT %(lo)s + j, %(org)s, NULL, 'User', u.name, u.username, ARRAY[%(lo)s + j], u.id, NULL,
       u.created_at
FROM generate_series(%(g)s + %(sg)s, %(g)s + %(sg)s + %(un)s - 1) j
JOIN public.users u ON u.id = %(org)s + (j - %(g)s - %(sg)s) * %(orgs)s
