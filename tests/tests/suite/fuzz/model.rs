//! The reference model: the accounts, transfers and withdrawals the ledger should hold after
//! the accepted commands, and the look-ups the planners decide with. It sends nothing; the
//! fuzzer folds accepted commands into it (`apply`) and compares the server with it (`checks`).

use crate::fuzz::{CURRENCIES, UNUSED_CURRENCIES};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

#[derive(Clone, Debug)]
pub(crate) struct Account {
    pub(crate) id: Uuid,
    pub(crate) currency: &'static str,
    pub(crate) system: bool,
    pub(crate) overdraft: i128,
    pub(crate) open: bool,
    pub(crate) balance: i128,
    pub(crate) holds: i128,
    /// `None`: not known to the model (adopted from a response it could not predict).
    pub(crate) owner: Option<Option<String>>,
    pub(crate) metadata: Option<Option<Value>>,
    /// (position, balance, holds) after each accepted command that touched it.
    pub(crate) history: Vec<(i64, i128, i128)>,
    /// Resynchronised from the server after a failure: its history is not the model's.
    pub(crate) tainted: bool,
}

impl Account {
    pub(crate) fn available(&self) -> i128 {
        self.balance - self.holds
    }
}

#[derive(Clone, Debug)]
pub(crate) struct TransferRec {
    pub(crate) id: Uuid,
    pub(crate) from: Uuid,
    pub(crate) to: Uuid,
    pub(crate) amount: i128,
    pub(crate) reversed: bool,
    pub(crate) is_reversal: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct WithdrawalRec {
    pub(crate) id: Uuid,
    pub(crate) account: Uuid,
    pub(crate) amount: i128,
}

#[derive(Default)]
pub(crate) struct Model {
    pub(crate) accounts: BTreeMap<Uuid, Account>,
    pub(crate) customers: Vec<Uuid>,
    pub(crate) systems: BTreeMap<&'static str, Uuid>,
    pub(crate) transfers: Vec<TransferRec>,
    pub(crate) withdrawals: Vec<WithdrawalRec>,
    /// The highest position a write answered.
    pub(crate) head: i64,
}

pub(crate) enum Class {
    Customer(Account),
    Reserved,
    Unknown,
}

impl Model {
    /// The ids of this ledger's streams the model knows (customer accounts, transfers,
    /// withdrawals; system accounts are left out: their ids are the same in every ledger).
    pub(crate) fn ids(&self) -> BTreeSet<Uuid> {
        self.customers
            .iter()
            .copied()
            .chain(self.transfers.iter().map(|t| t.id))
            .chain(self.withdrawals.iter().map(|w| w.id))
            .collect()
    }

    /// Ids the service uses internally: the system accounts, and the ids it would derive
    /// for the system accounts of currencies not used yet.
    pub(crate) fn reserved(&self) -> BTreeSet<Uuid> {
        let mut ids: BTreeSet<Uuid> = self.systems.values().copied().collect();
        for c in CURRENCIES.iter().chain(UNUSED_CURRENCIES.iter()) {
            let currency = ledger_domain::Currency::parse(c).expect("a valid code");
            ids.insert(ledger_domain::decide::system_account_id(currency));
        }
        ids
    }

    pub(crate) fn classify(&self, id: Uuid) -> Class {
        match self.accounts.get(&id) {
            Some(a) if !a.system => Class::Customer(a.clone()),
            Some(_) => Class::Reserved,
            None if self.reserved().contains(&id) => Class::Reserved,
            None => Class::Unknown,
        }
    }

    pub(crate) fn stream_exists(&self, id: Uuid) -> bool {
        self.accounts.contains_key(&id)
            || self.transfers.iter().any(|t| t.id == id)
            || self.withdrawals.iter().any(|w| w.id == id)
    }

    pub(crate) fn open_customers(&self) -> Vec<Account> {
        self.customers.iter().filter_map(|id| self.accounts.get(id)).filter(|a| a.open).cloned().collect()
    }

    /// The model conserves money by construction; this guards the model itself.
    pub(crate) fn assert_conserved(&self) {
        let mut sums: BTreeMap<&str, i128> = BTreeMap::new();
        for a in self.accounts.values() {
            *sums.entry(a.currency).or_default() += a.balance;
        }
        assert!(sums.values().all(|s| *s == 0), "the model itself lost money: {sums:?}");
    }
}
