-- The naive double-entry ledger of issue 17's contention benchmark, run by pgbench
-- (scripts/bench): two `UPDATE … set balance` and one history INSERT per transfer, over
-- 1,000 accounts; :hot_pct percent of the transfers debit account 1. Deadlocks between
-- two transfers that lock the same pair in opposite orders are retried
-- (`pgbench --max-tries`). Set up by scripts/bench.d/naive-ledger-init.sql.
\set from random(1, 1000)
\set pick random(1, 100)
\if :pick <= :hot_pct
\set from 1
\endif
\set to 1 + (:from + random(0, 998)) % 1000
\set amount random(1, 100)
BEGIN;
UPDATE naive_accounts SET balance = balance - :amount WHERE id = :from;
UPDATE naive_accounts SET balance = balance + :amount WHERE id = :to;
INSERT INTO naive_history (from_id, to_id, amount) VALUES (:from, :to, :amount);
END;
