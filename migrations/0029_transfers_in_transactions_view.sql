-- `transfers_view` repeated `transactions_view` for every transfer (a transfer is a
-- one-posting transaction, written to both in one statement): a second heap row and
-- index entry per transfer. A transfer's row of `transactions_view` is now marked
-- `transfer` and keeps what only the transfer had, its reversal's `reason`;
-- `GET /v1/transfers/{id}` reads it there (`queries::transfer`).
alter table transactions_view add column transfer boolean not null default false;
alter table transactions_view add column reason text;
update transactions_view t set transfer = true, reason = v.reason from transfers_view v where v.id = t.id;
drop table transfers_view;
