-- The log as a Merkle tree (API.md v1.2 "Verifiable log"; infrastructure/src/merkle.rs,
-- tree.rs). The tree is append-only, so its perfect subtrees never change once
-- complete: node (level, index) covers leaves [index * 2^level, (index + 1) * 2^level),
-- leaf i being the event at position i + 1. A worker that follows the log grows it
-- (`tree::grow`), recomputing each event's chain hash as it enters.
create table merkle_nodes (
    level smallint not null,
    index bigint not null,
    hash bytea not null,
    primary key (level, index)
);
-- How far the tree has grown (leaves = positions 1..=size), and the chain hash of its
-- last leaf (the next one is recomputed from it). One row; its lock makes one builder.
create table merkle_state (
    id boolean primary key default true check (id),
    size bigint not null default 0,
    last_hash bytea
);
insert into merkle_state (id, size) values (true, 0);
grant select, insert on merkle_nodes to ledger_app;
grant select, update on merkle_state to ledger_app;
