-- Ledgers (API.md "Version 1.2 additions"). Each ledger's tables live in a schema of
-- their own on its shard; the ledger `default` keeps `public`, so its positions and
-- chain are unchanged. These migrations run once per schema.

-- Postgres shares notification channels and advisory locks across a database, not a
-- schema: every channel and lock key the service names goes through this function,
-- so two ledgers on one shard never wake or block each other. In `public` the names
-- are those of before ledgers existed (a rolling upgrade keeps one relay leader).
create function ledger_scoped(base text) returns text
language sql stable
as $$ select case when current_schema() = 'public' then base else base || '@' || current_schema() end $$;

-- Advisory locks are keyed by two 32-bit integers: the purpose (a hash of its name)
-- and this schema's oid, which no other schema of the database shares. A hash of the
-- ledger's name would let two names collide, and one ledger's relay never run.
create function ledger_lock_key() returns int
language sql stable
as $$ select oid::int from pg_namespace where nspname = current_schema() $$;

-- The directory: `LedgerCreated` events in the log of `default`, one per name and one
-- per schema (two ledgers never share their tables, whatever their names hash to).
create unique index events_ledger_created_name on events ((data ->> 'name')) where type = 'LedgerCreated';
create unique index events_ledger_created_schema on events ((data ->> 'schema')) where type = 'LedgerCreated';
