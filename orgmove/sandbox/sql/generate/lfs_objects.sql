
INSERT INTO public.lfs_objects (id, oid, size)
SELECT l, encode(sha256(int8send(%(s)s * 1000003 + l)), 'hex'),
       1024 + mod(pg_temp.om_h(l, %(s)s), 50000000)
FROM generate_series(1, %(n)s) l
