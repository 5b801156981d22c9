-- Audit look-ups and least-privilege grants.

-- GET /v1/audit filters: actor, correlation id, time window (stream id uses the
-- stream_entries primary key). Each ends in position for stable cursor paging.
create index events_actor on events ((metadata ->> 'actor'), position);
create index events_correlation on events ((metadata ->> 'correlation_id'), position);
create index events_recorded_at on events (recorded_at, position);
-- Bearer tokens are looked up by the hash of the secret.
create index events_token_hash on events ((data ->> 'token_sha256')) where type = 'TokenIssued';

-- The role the service runs as: it may append to the log but never change or remove
-- it, on top of the append-only triggers. Roles are cluster-wide, so creating it is
-- tolerant of another database's migration having done so (also concurrently).
do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'ledger_app') then
        create role ledger_app nologin;
    end if;
exception when duplicate_object or unique_violation then
    null;
end
$$;
grant usage, create on schema public to ledger_app;
grant select, insert on events, stream_entries to ledger_app;
revoke update, delete, truncate on events, stream_entries from ledger_app;
grant select, update on log_head to ledger_app;
grant select, insert, update, delete on idempotency_keys, relay_checkpoints, projection_checkpoints,
    accounts_view, account_entries, transfers_view, withdrawals_view, dead_letters, payout_attempts to ledger_app;
grant select on _sqlx_migrations to ledger_app;
