-- Deposits, transfers and withdrawals carry the client's metadata (API.md v1.1
-- "Metadata"; validated at the edge, part of the event and so of the hash chain).
-- The read models keep it to answer reads by id as sent.
alter table transfers_view add column metadata jsonb;
alter table withdrawals_view add column metadata jsonb;
