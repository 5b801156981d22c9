-- Operations (a bulk, a webhook's registration, a rebuild, a reconciliation, a webhook
-- dead letter's redrive or discard) claim their idempotency key before they run, in a
-- row every process sees (issue 26): a second request with the key while the first
-- runs is answered 409 `idempotency_key_in_flight` (or 422 `idempotency_key_reused`
-- for another body) from the claim, never run beside it.
--
-- A claim row names its holder (`claim`, a random token) and holds the key until
-- `claimed_until`. Only the holder turns it into a final record (the answer, with the
-- claim cleared); a holder that fails or dies lets the lease lapse, and then only a
-- request with the same fingerprint may take the key over (the key stays bound to the
-- body it was first claimed for). Transient answers are never stored.
alter table idempotency_keys add column claim uuid;
alter table idempotency_keys add column claimed_until timestamptz;
alter table idempotency_keys drop constraint idempotency_keys_one_form;
-- Exactly one form: a claim, a command's outcome, or an operation's (or an old
-- command's) rendered response. As in 0010, the rows written before already have one
-- of the two final forms, so the constraint is added without scanning them.
alter table idempotency_keys add constraint idempotency_keys_one_form
    check ((claim is not null and claimed_until is not null
            and outcome is null and status_code is null and body is null)
        or (claim is null and claimed_until is null
            and outcome is not null and status_code is null and body is null)
        or (claim is null and claimed_until is null
            and outcome is null and status_code is not null and body is not null)) not valid;
