-- Blue-green rebuilds rename and drop read-model tables, which takes ownership: the
-- read models (never the log) belong to the service role.
alter table accounts_view owner to ledger_app;
alter table account_entries owner to ledger_app;
alter table transfers_view owner to ledger_app;
alter table withdrawals_view owner to ledger_app;
alter table dead_letters owner to ledger_app;
