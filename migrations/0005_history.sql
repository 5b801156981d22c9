-- Snapshots of folded stream state, beside the log (never inside it; the log stays the
-- truth), and rebuild progress of projections.

create table snapshots (
    stream_id uuid not null,
    version bigint not null,
    position bigint not null,           -- position of the stream's event at `version`
    evolve_version integer not null,    -- a snapshot of another evolve version is not trusted
    state jsonb not null,
    created_at timestamptz not null default now(),
    primary key (stream_id, version)
);
create index snapshots_position on snapshots (stream_id, position);

alter table projection_checkpoints add column rebuild_position bigint;
alter table projection_checkpoints add column rebuild_target bigint;

grant select, insert, update, delete on snapshots to ledger_app;
