-- A checkpoint row's stamp: a fresh random value at every write of the row, whoever
-- writes it (a projector, a rebuild's switch, a reset, a process of an older build).
-- A projector remembers the accounts its own last batch wrote with the position and
-- stamp that batch left (`accounts::AccountsMemo`), and uses them only while the row
-- still has both: a rebuild that ends exactly where the view was, or a history
-- replayed to the same position after a failover, still leaves another stamp.
alter table projection_checkpoints add column stamp uuid not null default gen_random_uuid();

create function projection_checkpoint_stamped() returns trigger
language plpgsql
as $$
begin
    new.stamp := gen_random_uuid();
    return new;
end
$$;
create trigger projection_checkpoint_stamped before update on projection_checkpoints
    for each row execute function projection_checkpoint_stamped();

do $$
begin
    execute format('alter function projection_checkpoint_stamped() set search_path = %I, pg_catalog, pg_temp',
                   current_schema());
end
$$;
