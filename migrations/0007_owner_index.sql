-- GET /v1/accounts?owner=X pages by id: with (owner, id) the index returns rows in
-- order and the look-up stops at the limit, however many accounts an owner has.
drop index accounts_view_owner;
create index accounts_view_owner on accounts_view (owner, id) where owner is not null;
