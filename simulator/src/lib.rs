//! A simulator of the external payment provider described in
//! `shared/spec/PROVIDER.md`, with fault injection, for the ledger's tests and dev runs.
//!
//! It owns an in-memory provider: idempotent payouts keyed by `Idempotency-Key`, the
//! provider's statement, seeded random faults (outages, timeouts, rejections,
//! permanent errors, lost responses), and `/_sim/` admin routes to steer faults,
//! alter records and inject raw statement lines for reconciliation tests, and read
//! call statistics. It depends on
//! nothing else in the workspace, so the ledger can be tested against it exactly as
//! it would be against any other server that speaks the contract.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use ledger_provider_sim::{Faults, Simulator};
//! let sim = Simulator::new(Faults { drop_response_rate: 0.5, ..Faults::default() }, 42);
//! let handle = sim.start_local().await?;
//! let provider_url = handle.url(); // e.g. "http://127.0.0.1:40123"
//! // ... run the ledger against provider_url ...
//! assert!(handle.simulator.stats().double_paid().is_empty());
//! # Ok(()) }
//! ```

mod admin;
mod error;
mod faults;
mod http;
mod model;
mod state;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use error::SimError;
pub use faults::{Faults, FaultsError};
pub use model::{Payout, PayoutOverride, PayoutStatus, Statement, StatementEntry, Stats};

use state::State;

/// The simulated provider. Cloning is cheap and every clone shares the same records,
/// faults and counters, so a test can keep one while the server runs on another.
#[derive(Debug, Clone)]
pub struct Simulator {
    state: Arc<Mutex<State>>,
}

impl Simulator {
    /// A provider with no records, the given faults, and an RNG seeded with `seed`:
    /// the same seed and the same order of calls give the same faults.
    ///
    /// # Panics
    /// If a rate in `faults` is outside `[0, 1]` (a programmer error).
    pub fn new(faults: Faults, seed: u64) -> Simulator {
        assert_valid(&faults);
        Simulator { state: Arc::new(Mutex::new(State::new(faults, seed))) }
    }

    /// The HTTP application: the contract routes and the `/_sim/` admin routes.
    pub fn router(&self) -> axum::Router {
        http::router(self.clone())
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.lock().faults()
    }

    /// Replaces the faults; calls already past their fault decision are not affected.
    ///
    /// # Panics
    /// If a rate in `faults` is outside `[0, 1]` (a programmer error).
    pub fn set_faults(&self, faults: Faults) {
        assert_valid(&faults);
        self.lock().set_faults(faults);
    }

    /// Call counters and payments per reference.
    pub fn stats(&self) -> Stats {
        self.lock().stats()
    }

    /// Every recorded payout as the record now reads (removed ones included), oldest first.
    pub fn payouts(&self) -> Vec<Payout> {
        self.lock().payouts()
    }

    /// Alters the record of every payout with this caller reference and returns them
    /// as they now read; same as `POST /_sim/payouts/{reference}/override`.
    pub fn override_payout(&self, reference: &str, change: &PayoutOverride) -> Result<Vec<Payout>, SimError> {
        self.lock().override_payout(reference, change)
    }

    /// Adds a statement entry that matches no recorded payout; same as
    /// `POST /_sim/statement/extra`.
    pub fn add_statement_entry(&self, entry: StatementEntry) {
        self.lock().add_extra_entry(entry);
    }

    /// Adds a statement line exactly as `text` says, for tests of lines the ledger
    /// cannot trust (PROVIDER.md v1.1): a duplicate, a float or out-of-range amount, a
    /// missing field, anything. It is listed in every statement, after the entries of
    /// the window, whatever its `settled_at`. Text that is not JSON makes the whole
    /// statement unreadable, as a provider sending garbage would. Same as
    /// `POST /_sim/statement/raw`.
    pub fn add_raw_statement_line(&self, text: impl Into<String>) {
        self.lock().add_raw_line(text.into());
    }

    /// Removes every raw statement line; same as `DELETE /_sim/statement/raw`.
    pub fn clear_raw_statement_lines(&self) {
        self.lock().clear_raw_lines();
    }

    /// Serves the simulator on `listener` in a background task.
    pub async fn spawn(self, listener: TcpListener) -> std::io::Result<SimHandle> {
        let addr = listener.local_addr()?;
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let app = self.router();
        let task = tokio::spawn(async move {
            // A sent signal and a dropped sender both mean "stop".
            let signal = async move {
                let _ = shutdown_rx.await;
            };
            axum::serve(listener, app).with_graceful_shutdown(signal).await
        });
        Ok(SimHandle { addr, simulator: self, shutdown: Some(shutdown), task: Some(task) })
    }

    /// Serves the simulator on a free port of 127.0.0.1 in a background task.
    pub async fn start_local(self) -> std::io::Result<SimHandle> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        self.spawn(listener).await
    }

    /// The state, even if a panicking thread poisoned the lock: every mutation is a
    /// few field writes with no panic in between, so the state is still consistent.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn assert_valid(faults: &Faults) {
    if let Err(e) = faults.validate() {
        panic!("invalid simulator faults: {e}");
    }
}

/// A simulator serving in a background task. Dropping the handle stops the server
/// (gracefully, in the background); keep it alive for as long as it is called.
#[derive(Debug)]
pub struct SimHandle {
    /// The address the server listens on.
    pub addr: SocketAddr,
    /// The served simulator, to steer faults and read stats directly.
    pub simulator: Simulator,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl SimHandle {
    /// The base URL, e.g. `http://127.0.0.1:40123`, with no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections, waits for requests in flight to finish, and
    /// reports how the server ended.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}
