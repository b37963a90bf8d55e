
CREATE FUNCTION pg_temp.om_h(k bigint, s bigint) RETURNS bigint
    LANGUAGE sql IMMUTABLE AS $$ SELECT hashint8extended(k, s) & 9007199254740991 $$;
CREATE FUNCTION pg_temp.om_u(k bigint, s bigint) RETURNS double precision
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT (hashint8extended(k, s) & 9007199254740991)::float8 / 9007199254740992 $$;
CREATE FUNCTION pg_temp.om_ts(k bigint, s bigint) RETURNS timestamptz
    LANGUAGE sql STABLE
    AS $$ SELECT timestamptz '2019-01-01 00:00:00+00'
                 + ((hashint8extended(k, s) & 9007199254740991) % 126230400000000)
                   * interval '1 microsecond' $$;
CREATE FUNCTION pg_temp.om_text(k bigint, n integer) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT string_agg(md5((k * 100000 + g)::text), '' ORDER BY g)
          FROM generate_series(1, n) g $$;
CREATE FUNCTION pg_temp.om_bytes(k bigint, n integer) RETURNS bytea
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT string_agg(sha256(int8send(k * 100000 + g)), ''::bytea ORDER BY g)
          FROM generate_series(1, n) g $$;
