-- Balances in 128 bits (issue 26): a system account's balance is the negative sum of
-- every customer balance in its currency, which enough accounts push past a bigint
-- (one client did, and every deposit of the currency was refused from then on). The
-- domain keeps balances in an i128; the read models keep them in `numeric`. Customer
-- balances stay within 64 bits (the ledger refuses a command that would pass them).
-- Both tables are rewritten once (the read models only; the log has no balances).
alter table accounts_view alter column balance type numeric(39, 0);
-- Holds on a customer stay within 64 bits (the ledger refuses more), but the read model
-- keeps what the log says, whatever that is, rather than fail to apply it.
alter table accounts_view alter column pending_holds type numeric(39, 0);
alter table account_entries alter column balance_after type numeric(39, 0);
