-- Closed periods (API.md v1.2 "Verifiable log"; docs/AUDIT.md "Periods"). A period is a
-- `PeriodClosed` event of the periods stream; the business time the books are closed
-- up to is also kept on the head row, where every append reads it under the head lock
-- and refuses an event effective at or before it (`store::append::closed_periods`),
-- whichever process decided it.
alter table log_head add column closed_through timestamptz;
update log_head set closed_through = (
    select max((data ->> 'closes_at')::timestamptz) from events where type = 'PeriodClosed');

-- Each period's closing balances: every account opened by its `PeriodClosed` event,
-- with its balance effective at `closes_at`. Written by the accounts projection when it
-- applies the event (so a rebuild computes them again, the same), and never changed
-- after: no event effective at or before `closes_at` is recorded after the close.
create table period_balances (
    period_id uuid not null,
    account_id uuid not null,
    currency text not null,
    balance numeric(39, 0) not null,
    primary key (period_id, account_id)
);
alter table period_balances owner to ledger_app;

-- The tree's nodes are what the log says, whoever inserts them: a node at level 0 is the
-- leaf hash of its event's chain hash, a node above is the hash of its two children
-- (RFC 9162: 0x00 ‖ leaf, 0x01 ‖ left ‖ right). Checked once per statement over the
-- rows it inserted, so the worker's one insert per step pays one join; a role that may
-- insert nodes (the service's) cannot insert made-up ones and get their roots signed.
-- Nodes are never updated or deleted by the service (it has no such grant); events are
-- append-only (0004), so a node, once checked, stays true.
create function merkle_nodes_verified() returns trigger
language plpgsql
as $$
begin
    if exists (
        select 1 from inserted n
        left join events e on n.level = 0 and e.position = n.index + 1
        left join merkle_nodes l on n.level > 0 and l.level = n.level - 1 and l.index = 2 * n.index
        left join merkle_nodes r on n.level > 0 and r.level = n.level - 1 and r.index = 2 * n.index + 1
        where n.hash is distinct from case when n.level = 0 then sha256('\x00'::bytea || e.hash)
                                           else sha256('\x01'::bytea || l.hash || r.hash) end
    ) then
        raise exception 'a Merkle tree node does not hash its event or its children'
            using errcode = 'integrity_constraint_violation';
    end if;
    return null;
end
$$;
create trigger merkle_nodes_verified after insert on merkle_nodes
    referencing new table as inserted for each statement execute function merkle_nodes_verified();

-- Where the tree worker stopped (an event that does not recompute), so every process
-- answers a head over it at once, naming the position, instead of waiting for it.
alter table merkle_state add column stopped_at bigint;
