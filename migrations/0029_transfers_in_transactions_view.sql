-- `transfers_view` repeated `transactions_view` for every transfer (a transfer is a
-- one-posting transaction, written to both in one statement): a second heap row and
-- index entry per transfer. From here on a transfer is projected into
-- `transactions_view` alone, its row marked `transfer` and keeping what only the
-- transfer had, its reversal's `reason`; `GET /v1/transfers/{id}` reads it there
-- (`queries::transfer`). Both columns are added without rewriting the table (a
-- constant default), so this migration is instant whatever the ledger's size: rows
-- projected before it keep `transfer = false`, and `transfers_view`, no longer written,
-- still says which of them are transfers and their reasons (an older process, during
-- a rolling upgrade, still writes it). A rebuild of the transfers projection marks
-- every transfer.
alter table transactions_view add column transfer boolean not null default false;
alter table transactions_view add column reason text;
