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

-- The tree keeps only its perfect subtrees of 16 leaves and up (`tree::STORED_LEVEL`):
-- the smaller ones are folded from the events' chain hashes when a head or proof needs
-- them (one block of 16 events), so the tree writes about one row per 8 events.
delete from merkle_nodes where level < 4;

-- The root of the 16 leaves after position `first` (the events first+1 ..= first+16),
-- null while they are not all in the log.
create function merkle_block_root(first bigint) returns bytea
language plpgsql stable
as $$
declare
    level bytea[];
    next bytea[];
begin
    select array_agg(sha256('\x00'::bytea || hash) order by position) into level
    from events where position > first and position <= first + 16;
    if coalesce(array_length(level, 1), 0) <> 16 then
        return null;
    end if;
    while array_length(level, 1) > 1 loop
        next := '{}';
        for i in 1 .. array_length(level, 1) by 2 loop
            next := next || sha256('\x01'::bytea || level[i] || level[i + 1]);
        end loop;
        level := next;
    end loop;
    return level[1];
end
$$;

-- The tree's nodes are what the log says, whoever inserts them: a node at level 4 is the
-- root of its 16 events' leaves, a node above is the hash of its two children
-- (RFC 9162: leaf = 0x00 ‖ chain hash, node = 0x01 ‖ left ‖ right); no smaller node is
-- stored. Checked once per statement over the rows it inserted, so a role that may
-- insert nodes (the service's) cannot insert made-up ones and get their roots signed.
-- Nodes are never updated or deleted by the service (it has no such grant); events are
-- append-only (0004), so a node, once checked, stays true.
create function merkle_nodes_verified() returns trigger
language plpgsql
as $$
begin
    -- Correlated look-ups, primary-key probes each: the planner knows nothing of the
    -- transition table's size and would otherwise scan the log to join it.
    if exists (
        select 1 from inserted n
        where n.hash is distinct from (
            case when n.level = 4 then merkle_block_root(n.index * 16)
                 when n.level > 4 then
                (select sha256('\x01'::bytea || l.hash || r.hash) from merkle_nodes l, merkle_nodes r
                 where l.level = n.level - 1 and l.index = 2 * n.index
                   and r.level = n.level - 1 and r.index = 2 * n.index + 1)
            end)
    ) then
        raise exception 'a Merkle tree node does not hash its events or its children'
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
