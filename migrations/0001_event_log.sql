-- The append-only event log, its stream index and the idempotency records.

-- The head of the log: exactly one row. Every append locks it first and updates it
-- last, in the same transaction, so appends are serialized: positions are handed out
-- gapless (a rollback also rolls the head back) and in commit order (the next
-- appender can only read the head after the previous one has committed).
create table log_head (
    id boolean primary key default true check (id), -- at most one row
    position bigint not null check (position >= 0),
    hash bytea not null check (length(hash) = 32),  -- hash of the event at `position`
    recorded_at timestamptz not null                 -- keeps recorded_at non-decreasing in position order
);
insert into log_head (id, position, hash, recorded_at)
values (true, 0, decode(repeat('00', 32), 'hex'), '1970-01-01T00:00:00Z');

create table events (
    position bigint primary key check (position > 0), -- gapless, commit-ordered
    event_id uuid not null unique,
    stream_id uuid not null,                          -- the event's primary stream
    version bigint not null check (version > 0),
    type text not null,
    data jsonb not null,
    metadata jsonb not null,
    recorded_at timestamptz not null,
    hash bytea not null check (length(hash) = 32),    -- sha256(previous hash, canonical content)
    unique (stream_id, version)                       -- optimistic concurrency per stream
);

-- Every stream an event belongs to (its primary stream included). A transfer is one
-- event at one position that belongs to the transfer's stream and to both accounts'
-- streams, each at that stream's next version.
create table stream_entries (
    stream_id uuid not null,
    version bigint not null check (version > 0),
    position bigint not null references events (position),
    primary key (stream_id, version)                  -- no version is taken twice
);

-- The log is append-only: the database itself refuses to change or remove history.
create function reject_log_change() returns trigger language plpgsql as $$
begin
    raise exception 'the event log is append-only: % on % is not allowed', tg_op, tg_table_name
        using errcode = 'restrict_violation';
end
$$;
create trigger events_append_only before update or delete on events
    for each row execute function reject_log_change();
create trigger events_no_truncate before truncate on events
    for each statement execute function reject_log_change();
create trigger stream_entries_append_only before update or delete on stream_entries
    for each row execute function reject_log_change();
create trigger stream_entries_no_truncate before truncate on stream_entries
    for each statement execute function reject_log_change();

-- System accounts are found through this partial index (GET /v1/system-accounts).
create index events_system_accounts on events ((data ->> 'currency'))
    where type = 'AccountOpened' and (data ->> 'system') = 'true';

-- Idempotency: the stored response of every command, keyed by principal and key,
-- written in the same transaction as the events the command produced.
create table idempotency_keys (
    principal text not null,
    key text not null,
    fingerprint bytea not null,
    status_code smallint not null,
    body jsonb not null,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    primary key (principal, key)
);
create index idempotency_keys_expiry on idempotency_keys (expires_at);
