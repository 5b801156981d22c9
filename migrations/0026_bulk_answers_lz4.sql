-- The stored answer of a bulk is up to 1,000 items' bodies (~320 KB of JSON): Postgres
-- compressed it with pglz, about 5 ms of its CPU per bulk (5 us per transfer), where lz4
-- takes under 1 ms for about the same size (docs/PERFORMANCE.md). Only values written
-- from now on; a server built without lz4 keeps pglz.
do $$
begin
    alter table idempotency_keys alter column body set compression lz4;
exception when feature_not_supported then
    raise notice 'lz4 is not available on this server: idempotency answers stay compressed with pglz';
end
$$;
