-- Transactions of many postings and effective dates (API.md v1.1 "Transactions",
-- "Effective dates"). Read models only: the log needs no change (a transaction is one
-- event; `effective_at` is part of the event's data when the client gave one).

-- Statements: one entry per account per transaction (the net amount); a transaction
-- with several counterparties has none to name; every entry has a business time.
alter table account_entries alter column counterparty drop not null;
alter table account_entries add column effective_at timestamptz;
update account_entries set effective_at = occurred_at;
alter table account_entries alter column effective_at set not null;

alter table transfers_view add column effective_at timestamptz;
update transfers_view set effective_at = created_at;

-- Every transaction, transfers included (a transfer is a one-posting transaction).
-- `GET /v1/transactions` pages by position, newest first; each filter has an index.
create table transactions_view (
    id uuid primary key,
    postings jsonb not null,           -- [{"from","to","amount","currency"}]
    reference text,
    metadata jsonb,
    effective_at timestamptz not null,
    recorded_at timestamptz not null,
    reverses uuid,
    reversed_by uuid,
    position bigint not null
);
create unique index transactions_view_position on transactions_view (position);
create index transactions_view_reference on transactions_view (reference, position);
create index transactions_view_metadata on transactions_view using gin (metadata jsonb_path_ops);
create index transactions_view_recorded on transactions_view (recorded_at, position);
create index transactions_view_effective on transactions_view (effective_at, position);

-- account_id filter: the transactions touching an account, by position.
create table transaction_accounts (
    account_id uuid not null,
    position bigint not null,
    transaction_id uuid not null,
    primary key (account_id, position)
);

insert into transactions_view (id, postings, reference, metadata, effective_at, recorded_at, reverses, reversed_by,
                               position)
select id, jsonb_build_array(jsonb_build_object('from', from_account, 'to', to_account, 'amount', amount,
                                                'currency', currency)),
       reference, metadata, created_at, created_at, reverses, reversed_by, position
from transfers_view;
insert into transaction_accounts (account_id, position, transaction_id)
select from_account, position, id from transfers_view
union all
select to_account, position, id from transfers_view;

alter table transactions_view owner to ledger_app;
alter table transaction_accounts owner to ledger_app;
