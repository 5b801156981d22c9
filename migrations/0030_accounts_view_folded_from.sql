-- The version an account's row was moved on from by its last write (0 when that write
-- inserted it). The projector writes accounts with one upsert, and moves a row on only
-- from the version it folded the account's new state from (`excluded.folded_from`,
-- `projections/src/accounts.rs` `write_accounts`): a row anyone else moved is left as
-- it is, and the batch fails. Nullable, no default: added without rewriting the table.
alter table accounts_view add column folded_from bigint;
