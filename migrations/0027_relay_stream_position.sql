-- The `Ledger-Position` of the message at the relay's `stream_sequence`, and the
-- sequence it belongs to: a stream lost and made anew whose sequences have grown past
-- the relay's again holds another message there, and the relay publishes the log
-- again. The pair is used only while `stream_position_at = stream_sequence` (a relay
-- of the version before moves the sequence alone). Null until the relay next stores a
-- message, and after it starts the log again.
alter table relay_checkpoints add column stream_position bigint, add column stream_position_at bigint;

-- A relay of the version before moves `stream_sequence` alone (and sets it to 0 when it
-- starts the log again): the pair beside it is then dropped, so that it can never be
-- taken for the message at a sequence it was not read at.
create function relay_checkpoints_pair_follows_sequence() returns trigger language plpgsql as $$
begin
    if new.stream_sequence is distinct from old.stream_sequence
       and new.stream_position_at is not distinct from old.stream_position_at then
        new.stream_position := null;
        new.stream_position_at := null;
    end if;
    return new;
end $$;
create trigger relay_checkpoints_pair_follows_sequence before update on relay_checkpoints
    for each row execute function relay_checkpoints_pair_follows_sequence();
