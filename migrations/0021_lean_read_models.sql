-- Leaner read models (issue 27).
--
-- The transactions touching an account are found through `account_entries` (one row
-- per account per money movement, keyed by (account_id, position)), which the accounts
-- projection writes anyway: `transaction_accounts` repeated it for every transaction.
-- The projector applies both projections in one transaction, so the two agree at every
-- checkpoint.
drop table transaction_accounts;

-- Filters most transactions do not use: indexed where they have a value only.
drop index transactions_view_reference;
create index transactions_view_reference on transactions_view (reference, position) where reference is not null;
drop index transactions_view_metadata;
create index transactions_view_metadata on transactions_view using gin (metadata jsonb_path_ops)
    where metadata is not null;

-- Balances are updated in place with every movement, and no index covers the columns
-- they change: room on each page lets those updates stay on the page (HOT), with no
-- index entry written.
alter table accounts_view set (fillfactor = 80);
