"""A smoke test of a Python client generated from the served /openapi.json with
openapi-python-client: two accounts, a deposit, a transfer, an account, its statement
and the log, all through the generated models. Run by tests/tests/suite/python_client.rs,
which generates the package `ledger_http_client` and puts it on PYTHONPATH.
"""

import os
import uuid

from ledger_http_client import AuthenticatedClient
from ledger_http_client.api.accounts import account_transactions, get_account, open_account
from ledger_http_client.api.deposits import deposit
from ledger_http_client.api.log import log_events
from ledger_http_client.api.transfers import get_transfer, transfer
from ledger_http_client.models import (
    Account,
    AccountStatus,
    Deposit,
    DepositRequest,
    EntryKind,
    ErrorCode,
    EventsPage,
    GetAccountConsistency,
    OpenAccountRequest,
    Problem,
    TransactionsPage,
    Transfer,
    TransferRequest,
)


def key() -> str:
    return str(uuid.uuid4())


def main() -> None:
    client = AuthenticatedClient(
        base_url=os.environ["LEDGER_URL"], token=os.environ["LEDGER_TOKEN"], raise_on_unexpected_status=True
    )
    alice = open_account.sync(client=client, body=OpenAccountRequest(currency="EUR", owner="py@example.com"), idempotency_key=key())
    bob = open_account.sync(client=client, body=OpenAccountRequest(currency="EUR"), idempotency_key=key())
    assert isinstance(alice, Account) and isinstance(bob, Account), (alice, bob)
    assert alice.status == AccountStatus.OPEN and alice.balance == 0 and alice.owner == "py@example.com"

    deposit_key = key()
    body = DepositRequest(account_id=alice.id, amount=2500, currency="EUR", reference="py-top-up")
    first = deposit.sync(client=client, body=body, idempotency_key=deposit_key)
    again = deposit.sync_detailed(client=client, body=body, idempotency_key=deposit_key)
    assert isinstance(first, Deposit) and first.amount == 2500, first
    assert isinstance(again.parsed, Deposit) and again.parsed.id == first.id, "a replay is the first answer"
    assert again.headers.get("idempotent-replayed") == "true"

    sent = transfer.sync(
        client=client, body=TransferRequest(from_=alice.id, to=bob.id, amount=1000, currency="EUR"), idempotency_key=key()
    )
    assert isinstance(sent, Transfer) and sent.amount == 1000 and sent.from_ == alice.id, sent
    too_much = transfer.sync(
        client=client, body=TransferRequest(from_=alice.id, to=bob.id, amount=10**9, currency="EUR"), idempotency_key=key()
    )
    assert isinstance(too_much, Problem) and too_much.code == ErrorCode.INSUFFICIENT_FUNDS, too_much

    strong = get_account.sync(bob.id, client=client, consistency=GetAccountConsistency.STRONG)
    assert isinstance(strong, Account) and strong.balance == 1000, strong
    seen = get_transfer.sync(sent.id, client=client, min_position=sent.position)
    assert isinstance(seen, Transfer) and seen.to == bob.id, seen

    page = account_transactions.sync(alice.id, client=client, min_position=sent.position)
    assert isinstance(page, TransactionsPage), page
    assert [(e.kind, e.amount) for e in page.entries] == [(EntryKind.TRANSFER, -1000), (EntryKind.DEPOSIT, 2500)], page

    log = log_events.sync(client=client, after=0, limit=1000)
    assert isinstance(log, EventsPage), log
    kinds = {e.type_ for e in log.events}
    assert {"AccountOpened", "DepositRecorded", "TransferPosted"} <= kinds, kinds
    assert log.next_after == log.events[-1].position
    print("python client smoke test: ok")


if __name__ == "__main__":
    main()
