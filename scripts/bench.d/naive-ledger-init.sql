-- Tables of the naive ledger (scripts/bench.d/naive-ledger.sql).
drop table if exists naive_accounts, naive_history;
create table naive_accounts (id int primary key, balance bigint not null);
create table naive_history (id bigserial primary key, from_id int not null, to_id int not null,
                            amount bigint not null, at timestamptz not null default now());
insert into naive_accounts select g, 1000000000 from generate_series(1, 1000) g;
vacuum analyze naive_accounts;
