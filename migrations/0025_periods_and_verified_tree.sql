-- Closed periods (API.md v1.2 "Verifiable log"; docs/AUDIT.md "Periods"). A period is a
-- `PeriodClosed` event of the periods stream; the business time the books are closed
-- up to is also kept on the head row, where every append reads it under the head lock
-- and refuses an event effective at or before it (`store::append::business_times`),
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

-- The tree keeps only its perfect subtrees of 16 leaves and up (`tree::STORED_LEVEL`),
-- about one row per 8 events. The smaller ones are folded when a head or proof needs
-- them: in a complete block from its 16 events' chain hashes, checked against the
-- subtree stored over them; in the open block (the last, under 16 leaves) from `tail`,
-- its leaves as the tree recomputed them when they entered it.
alter table merkle_state add column tail bytea[] not null default '{}';
update merkle_state set tail = coalesce(
    (select array_agg(hash order by index) from merkle_nodes
     where level = 0 and index >= size - size % 16 and index < size), '{}');
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
-- answers a head over it at once, naming the position, instead of waiting for it: the
-- position after the tree's last leaf.
alter table merkle_state add column stopped_at bigint;
alter table merkle_state add constraint merkle_state_tail check (cardinality(tail) = size % 16);
alter table merkle_state add constraint merkle_state_stopped check (stopped_at is null or stopped_at = size + 1);

-- The state row says what the log says, whoever updates it: its last hash is the stored
-- hash of the event at its size, its tail the leaves of the open block's events, and the
-- block before it is in the tree. It shrinks only by its owner's hand (the sealing of
-- legacy data cuts the tree back, docs/PRIVACY.md), not by the service's role.
create function merkle_state_checked() returns trigger
language plpgsql
as $$
begin
    if new.size < old.size
       and not pg_has_role(current_user, (select relowner from pg_class where oid = tg_relid), 'MEMBER') then
        raise exception 'the Merkle tree does not shrink' using errcode = 'integrity_constraint_violation';
    end if;
    if new.size > 0 and new.last_hash is distinct from (select hash from events where position = new.size) then
        raise exception 'the Merkle tree''s last hash is not its last event''s' using errcode = 'integrity_constraint_violation';
    end if;
    if new.tail is distinct from coalesce(
           (select array_agg(sha256('\x00'::bytea || hash) order by position) from events
            where position > new.size - new.size % 16 and position <= new.size), '{}') then
        raise exception 'the Merkle tree''s tail is not its open block''s leaves'
            using errcode = 'integrity_constraint_violation';
    end if;
    if new.size >= 16 and not exists (select 1 from merkle_nodes where level = 4 and index = new.size / 16 - 1) then
        raise exception 'the Merkle tree''s last complete block is not stored' using errcode = 'integrity_constraint_violation';
    end if;
    return new;
end
$$;
create trigger merkle_state_checked before update on merkle_state
    for each row execute function merkle_state_checked();

-- Each function resolves the ledger's own tables, never a session's temporary ones
-- (`pg_temp` is searched first unless it is named, and last here).
do $$
begin
    execute format('alter function merkle_block_root(bigint) set search_path = %I, pg_catalog, pg_temp', current_schema());
    execute format('alter function merkle_nodes_verified() set search_path = %I, pg_catalog, pg_temp', current_schema());
    execute format('alter function merkle_state_checked() set search_path = %I, pg_catalog, pg_temp', current_schema());
end
$$;
