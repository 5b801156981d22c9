-- Webhooks (API.md "Webhooks"). A webhook's cursor is the log position in Postgres
-- (`delivered_position`): every event up to it that the webhook asked for was delivered
-- or dead-lettered. The cursor lives beside the log it points into, so it survives
-- restarts of every process and of NATS, and needs no JetStream consumer per webhook.
create table webhooks (
    id uuid primary key,
    url text not null,
    event_types text[],                      -- null: every type
    description text,
    -- The HMAC key of the signatures: kept so that the service can sign, shown only in
    -- the creation response (its idempotent replay carries null).
    secret text not null,
    status text not null default 'active',   -- active, deleted
    created_position bigint not null,        -- events after it are delivered
    delivered_position bigint not null,
    attempts integer not null default 0,     -- attempts at the next event so far
    last_error text,
    -- The per-webhook breaker, as its dispatcher last saw it (for every API instance).
    breaker text not null default 'closed',
    breaker_failures integer not null default 0,
    breaker_opened_at timestamptz,
    -- Which process delivers it: a lease renewed while it delivers.
    lease_owner uuid,
    lease_until timestamptz,
    created_at timestamptz not null default now(),
    deleted_at timestamptz
);
create index webhooks_active on webhooks (created_at) where status = 'active';

-- Events a webhook gave up on after its attempts; redrive sends one again.
create table webhook_dead_letters (
    id uuid primary key,
    webhook_id uuid not null references webhooks (id),
    event_position bigint not null,
    attempts integer not null,
    last_error text not null,
    status text not null,                    -- open, redriving, delivered, discarded
    dead_lettered_at timestamptz not null default now(),
    resolved_at timestamptz,
    unique (webhook_id, event_position)
);
create index webhook_dead_letters_open on webhook_dead_letters (dead_lettered_at) where status = 'open';
create index webhook_dead_letters_redriving on webhook_dead_letters (webhook_id) where status = 'redriving';

grant select, insert, update, delete on webhooks, webhook_dead_letters to ledger_app;
