-- Two-phase holds (API.md v1.1 "Holds"): a read model of HoldPlaced / HoldCaptured /
-- HoldVoided / HoldExpired, kept by the transfers projection. The expiry worker finds
-- the pending holds past their `expires_at` through the partial index.
create table holds_view (
    id uuid primary key,
    account_id uuid not null,
    to_account uuid not null,
    amount bigint not null,
    currency text not null,
    status text not null,              -- pending, captured, voided, expired
    captured_amount bigint,
    expires_at timestamptz,
    reference text,
    metadata jsonb,
    position bigint not null           -- of the hold's last event
);
create index holds_view_expiring on holds_view (expires_at) where status = 'pending' and expires_at is not null;
alter table holds_view owner to ledger_app;
