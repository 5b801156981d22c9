-- Secrets at rest (issue 26): what the service must keep to use, but not in clear.
--
-- `key_material` holds a value sealed under the master key (`master-key-check`), by
-- which start-up refuses a wrong LEDGER_MASTER_KEY; in dev mode (no key configured) it
-- also holds the generated master key itself (`dev-master-key`), which then protects
-- nothing against a dump of this database: docs/PRIVACY.md says so.
create table key_material (
    name text primary key,
    value bytea not null,
    created_at timestamptz not null default now()
);
grant select, insert on key_material to ledger_app;

-- A webhook's signing secret is sealed under the master key (AES-256-GCM, its row's id
-- authenticated with it). Rows written before keep their clear secret until the first
-- process with the key starts: it seals them and clears the column (`webhooks::seal_legacy`).
alter table webhooks add column secret_sealed bytea;
alter table webhooks alter column secret drop not null;
alter table webhooks add constraint webhooks_one_secret
    check ((secret is null) <> (secret_sealed is null)) not valid;

-- The idempotency records of registrations made before kept the secret in their stored
-- answer: it goes (a replay reads it back from the webhook, opened under the key).
update idempotency_keys set body = jsonb_set(body, '{secret}', 'null')
where body ? 'secret' and body ->> 'secret' like 'whsec\_%';
