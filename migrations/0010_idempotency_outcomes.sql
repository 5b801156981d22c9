-- A command's idempotency record keeps its typed outcome (the events it appended with
-- their positions and the state of the streams they touched, or the rule it broke),
-- not an HTTP response: the API renders first answers and replays from the same
-- outcome, and the store never knows how a response is encoded. Records written
-- before keep their rendered response (`status_code`, `body`) and replay as stored;
-- so do operations that record no event (starting a rebuild or a reconciliation).
alter table idempotency_keys add column outcome jsonb;
alter table idempotency_keys alter column status_code drop not null;
alter table idempotency_keys alter column body drop not null;
-- Exactly one of the two forms. Every row written before has the rendered form, so the
-- constraint is added without scanning them (`not valid`): it binds every new row.
-- A version of the service from before this migration cannot read the new form: do
-- not roll back, or run it beside this one, within the idempotency TTL.
alter table idempotency_keys add constraint idempotency_keys_one_form
    check ((outcome is not null and status_code is null and body is null)
        or (outcome is null and status_code is not null and body is not null)) not valid;
