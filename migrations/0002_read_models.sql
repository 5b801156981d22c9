-- Read models (CQRS query side), their checkpoints, and the outbox relay's checkpoint.
-- Every table here can be rebuilt from the event log; none of them is the truth.

-- How far the outbox relay has published the log to JetStream (advanced only after
-- JetStream acknowledged every event up to `position`).
create table relay_checkpoints (
    name text primary key,
    position bigint not null check (position >= 0),
    updated_at timestamptz not null default now()
);

-- Each projection's position, written in the same transaction as its read-model rows:
-- an event at or below it has been applied exactly once.
create table projection_checkpoints (
    name text primary key,
    position bigint not null check (position >= 0),
    status text not null default 'running',
    updated_at timestamptz not null default now()
);
insert into projection_checkpoints (name, position) values ('accounts', 0), ('transfers', 0);

create table accounts_view (
    id uuid primary key,
    currency text not null,
    owner text,
    status text not null,
    balance bigint not null,
    pending_holds bigint not null check (pending_holds >= 0),
    overdraft_limit bigint not null,
    system boolean not null,
    metadata jsonb,
    version bigint not null,
    position bigint not null,          -- position of the last event applied to this row
    updated_at timestamptz not null
);
-- GET /v1/accounts?owner=X
create index accounts_view_owner on accounts_view (owner) where owner is not null;

-- One row per balance change: the account statement, newest first by position.
create table account_entries (
    account_id uuid not null,
    position bigint not null,
    kind text not null,
    movement_id uuid not null,
    amount bigint not null,            -- signed, from this account's point of view
    balance_after bigint not null,
    counterparty uuid not null,
    occurred_at timestamptz not null,
    primary key (account_id, position) -- GET /v1/accounts/{id}/transactions pages this index backwards
);

create table transfers_view (
    id uuid primary key,
    from_account uuid not null,
    to_account uuid not null,
    amount bigint not null,
    currency text not null,
    reference text,
    reverses uuid,
    reason text,
    reversed_by uuid,
    position bigint not null,
    created_at timestamptz not null
);

create table withdrawals_view (
    id uuid primary key,
    account_id uuid not null,
    amount bigint not null,
    currency text not null,
    destination text not null,
    status text not null,
    provider_ref text,
    failure_reason text,
    position bigint not null,
    updated_at timestamptz not null
);
create index withdrawals_view_account on withdrawals_view (account_id);
