"""A smoke test of a Python client generated from the served /openapi.json with
openapi-python-client: two accounts, a deposit, a transfer, an account, its statement
and the log, all through the generated models. Run by tests/tests/suite/python_client.rs,
which generates the package `ledger_http_client` and puts it on PYTHONPATH.

With LEDGER_LEDGER=name, the ledger is created through the generated client first and
every request of the run addresses it: an httpx request hook puts `/v1/ledgers/{name}`
in front of each contract path (API.md "Ledgers"), which is how a generated client,
whose paths are the unprefixed ones, reaches a named ledger.
"""

import os
import uuid

from ledger_http_client import AuthenticatedClient
from ledger_http_client.api.accounts import account_transactions, get_account, open_account
from ledger_http_client.api.deposits import deposit
from ledger_http_client.api.ledgers import create_ledger, get_ledger
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
    LedgerRequest,
    LedgerView,
    OpenAccountRequest,
    Problem,
    TransactionsPage,
    Transfer,
    TransferRequest,
)


def key() -> str:
    return str(uuid.uuid4())


def addressing(ledger: str):
    """An httpx request hook that sends every contract route to `ledger`."""

    def hook(request) -> None:
        path = request.url.path
        deployment_wide = path.startswith("/v1/admin/ledgers") or path.startswith("/v1/admin/tokens")
        if path.startswith("/v1/") and not deployment_wide:
            request.url = request.url.copy_with(path=f"/v1/ledgers/{ledger}/" + path[len("/v1/") :])

    return hook


def main() -> None:
    base, token = os.environ["LEDGER_URL"], os.environ["LEDGER_TOKEN"]
    ledger = os.environ.get("LEDGER_LEDGER")
    if ledger:
        admin = AuthenticatedClient(base_url=base, token=token, raise_on_unexpected_status=True)
        made = create_ledger.sync(client=admin, body=LedgerRequest(name=ledger), idempotency_key=key())
        assert isinstance(made, LedgerView) and made.name == ledger, made
        shown = get_ledger.sync(ledger, client=admin)
        assert isinstance(shown, LedgerView) and shown.head == 0, shown
    hooks = {"event_hooks": {"request": [addressing(ledger)]}} if ledger else {}
    client = AuthenticatedClient(base_url=base, token=token, raise_on_unexpected_status=True, httpx_args=hooks)
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
    if ledger:
        # The ledger's own log: gapless from 1, its EUR system account, the two accounts,
        # the deposit and the transfer, and nothing of any other ledger.
        assert [e.position for e in log.events] == list(range(1, len(log.events) + 1)), log
        assert len(log.events) == 5, [e.type_ for e in log.events]
    print(f"python client smoke test ({ledger or 'default'}): ok")


if __name__ == "__main__":
    main()
