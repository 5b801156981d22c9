-- Payouts: the dead-letter queue (a read model of PayoutDeadLettered / PayoutRedriven /
-- WithdrawalSettled / WithdrawalFailed, kept by the transfers projection) and the
-- payout worker's attempt counters (operational state, not history).

create table dead_letters (
    id uuid primary key,
    source text not null,
    withdrawal_id uuid not null,
    event_position bigint not null,
    attempts integer not null,
    last_error text not null,
    status text not null,              -- open, redriven, settled, failed
    dead_lettered_at timestamptz not null,
    resolved_at timestamptz
);
-- GET /v1/admin/dead-letters lists the open ones.
create index dead_letters_open on dead_letters (dead_lettered_at) where status = 'open';
create index dead_letters_withdrawal on dead_letters (withdrawal_id);

create table payout_attempts (
    withdrawal_id uuid primary key,
    attempts integer not null,
    first_attempt_at timestamptz not null,
    last_error text,
    updated_at timestamptz not null
);
