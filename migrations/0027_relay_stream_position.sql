-- The `Ledger-Position` of the message at the relay's `stream_sequence`, and the
-- sequence it belongs to: a stream lost and made anew whose sequences have grown past
-- the relay's again holds another message there, and the relay publishes the log
-- again. The pair is used only while `stream_position_at = stream_sequence` (a relay
-- of the version before moves the sequence alone). Null until the relay next stores a
-- message, and after it starts the log again.
alter table relay_checkpoints add column stream_position bigint, add column stream_position_at bigint;
