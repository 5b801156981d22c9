-- `events (stream_id, version)` repeats what `stream_entries`' primary key already
-- guarantees: an event's primary stream and version are its first stream entry,
-- written by the same statement (`store/append.rs`), so no version is taken twice
-- either way. The second index cost every event a b-tree entry and about 90 bytes of
-- WAL per transfer (docs/PERFORMANCE.md, issue 27, twelfth stop). Reads by stream go
-- through `stream_entries`.
alter table events drop constraint events_stream_id_version_key;
