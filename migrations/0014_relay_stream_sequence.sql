-- The JetStream sequence of the relay's last stored message: a stream whose sequences
-- start again below it has lost messages, and the relay publishes the log again.
alter table relay_checkpoints add column stream_sequence bigint not null default 0;
