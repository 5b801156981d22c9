-- Principals are namespaced (issue 13): issued tokens are `token:<name>`, the
-- bootstrap token (LEDGER_ADMIN_TOKEN) is `env:LEDGER_ADMIN_TOKEN`, so no issued token
-- can share the bootstrap token's idempotency scope or pass for an internal actor.
-- Idempotency records written before are moved to the new names, so a client retrying
-- a request from before the upgrade with the same key still gets the stored answer
-- instead of a second execution. The log itself is never edited: events keep the
-- actor they were recorded with.
update idempotency_keys
set principal = case when principal = 'admin' then 'env:LEDGER_ADMIN_TOKEN' else 'token:' || principal end
where principal not like 'token:%' and principal not like 'env:%';
