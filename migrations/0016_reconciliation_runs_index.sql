-- GET /v1/admin/reconciliations (the console's overview asks every 3 s): the latest
-- runs without walking the log backwards past every other event.
create index events_reconciliation_started on events (position) where type = 'ReconciliationStarted';
