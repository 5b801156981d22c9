-- Personal data (API.md "Version 1.2 additions", "Personal data"; docs/PRIVACY.md).
--
-- An account's `owner` and its `pii.*` metadata are sealed (AES-256-GCM) under a key of
-- their subject before they are stored anywhere; the log, and so the hash chain, holds
-- ciphertext only. A subject's key is kept here, itself sealed under the master key
-- (`LEDGER_MASTER_KEY`). Erasing a subject destroys its key in the transaction that
-- appends its `SubjectErased` event: `wrapped` is cleared, the row stays as the record
-- that the key existed and when it was destroyed. A subject erased and later given a
-- new account gets a new key (a new row); at most one live key per subject.
create table subject_keys (
    id uuid primary key,
    subject text not null,
    wrapped bytea,
    created_at timestamptz not null default now(),
    erased_at timestamptz,
    constraint subject_keys_destroyed check ((wrapped is null) = (erased_at is not null))
);
create unique index subject_keys_live on subject_keys (subject) where wrapped is not null;
-- A destroyed key's old row version stays in the table's pages until vacuumed: vacuum
-- after every change, not after a fifth of the table changed (docs/PRIVACY.md, backups).
alter table subject_keys set (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1);
grant select, insert, update on subject_keys to ledger_app;

-- The owner look-up (`GET /v1/accounts?owner=`) compares a keyed hash (HMAC-SHA-256
-- under a key sealed in `key_material`), never the value. `accounts_view.owner` holds
-- the sealed form (unique: a fresh nonce each time), and this index maps the hash of
-- each sealed owner to that sealed form; a row is written by the append that records
-- the opening, and the rows of a subject's keys go in the transaction that destroys them.
create table owner_index (
    owner_hash bytea not null,
    owner_sealed text not null,
    key_id uuid not null,
    primary key (owner_hash, owner_sealed)
);
create index owner_index_key on owner_index (key_id);
grant select, insert, delete on owner_index to ledger_app;

-- The view remembers the account's subject and whether it was erased.
alter table accounts_view add column subject text;
alter table accounts_view add column erased boolean not null default false;

-- Data written before personal data was sealed (docs/PRIVACY.md): the first start of
-- this version seals it in place and re-anchors the chain (`privacy::legacy`). This
-- index holds exactly the openings it has to seal, so every later start finds none at
-- once. Snapshots of an earlier `evolve` (with owners in clear) are never read again.
create index events_unsealed_openings on events (position)
    where type = 'AccountOpened' and data ->> 'subject' is null and not coalesce((data ->> 'system')::boolean, false);
delete from snapshots where evolve_version < 4;

-- Each re-anchoring purges the clear `AccountOpened` messages from JetStream, once.
create table jetstream_purges (
    reanchored_position bigint primary key,
    purged_at timestamptz not null default now()
);
grant select, insert on jetstream_purges to ledger_app;
