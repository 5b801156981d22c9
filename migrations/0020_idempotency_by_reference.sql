-- A command's idempotency record refers to what it recorded (issue 27) instead of
-- keeping a copy: `outcome_position` is the log position of its last event and
-- `outcome_events` how many it appended (they are contiguous). A replay reads them back
-- from the log, and the states of the streams they touched at that position. The copy
-- (1.3 KB of jsonb per transfer, parsed by Postgres and written twice to the WAL) is
-- kept only for rejections (`outcome`: the rule the command broke, a few bytes), and
-- in records written before, which replay as they are.
alter table idempotency_keys add column outcome_position bigint;
alter table idempotency_keys add column outcome_events integer;
alter table idempotency_keys drop constraint idempotency_keys_one_form;
-- Exactly one form: a claim, a reference, a kept outcome, or a rendered response. As in
-- 0010 and 0017, rows written before have one of the older forms already.
alter table idempotency_keys add constraint idempotency_keys_one_form
    check ((claim is not null and claimed_until is not null and outcome_position is null
            and outcome is null and status_code is null and body is null)
        or (claim is null and claimed_until is null and outcome_position is not null and outcome_events > 0
            and outcome is null and status_code is null and body is null)
        or (claim is null and claimed_until is null and outcome_position is null
            and outcome is not null and status_code is null and body is null)
        or (claim is null and claimed_until is null and outcome_position is null
            and outcome is null and status_code is not null and body is not null)) not valid;
