//! NATS JetStream: the connection, and the names of every stream, subject and
//! consumer this instance creates, all under `LEDGER_NATS_PREFIX`.

use async_nats::jetstream::{self, stream};
use std::time::Duration;

/// How long JetStream remembers a `Nats-Msg-Id` to drop a re-published event.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Names derived from the prefix, and the replication of what is created under it.
#[derive(Clone, Debug)]
pub struct Names {
    prefix: String,
    /// Stream replicas (`LEDGER_NATS_REPLICAS`); `None`: from the cluster (see [`replicas_for`]).
    pub replicas: Option<usize>,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        // Stream and consumer names allow letters, digits, '-' and '_' only.
        let prefix = prefix.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        Names { prefix, replicas: None }
    }

    /// A fixed replica count (`LEDGER_NATS_REPLICAS`), or `None` to take it from the cluster.
    pub fn with_replicas(mut self, replicas: Option<usize>) -> Names {
        self.replicas = replicas.map(|r| r.max(1));
        self
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The JetStream stream that carries the log.
    pub fn events_stream(&self) -> String {
        format!("{}_events", self.prefix)
    }

    /// The subject of an event of the given type: `{prefix}.events.{category}.{type}`,
    /// where the category lets a side-effect worker filter what it needs (NATS 2.9 has
    /// one filter subject per consumer).
    pub fn event_subject(&self, event_type: &str) -> String {
        format!("{}.events.{}.{event_type}", self.prefix, Names::category(event_type))
    }

    /// The category of an event type's subject.
    pub fn category(event_type: &str) -> &'static str {
        match event_type {
            "WithdrawalRequested" | "PayoutRedriven" => "payouts",
            _ => "ledger",
        }
    }

    /// The subject of a message that carries a run of events (a JSON array).
    pub fn events_batch_subject(&self) -> String {
        format!("{}.events.ledger.batch", self.prefix)
    }

    /// The events the payout worker acts on.
    pub fn payout_subjects(&self) -> String {
        format!("{}.events.payouts.>", self.prefix)
    }

    pub fn events_subjects(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// The JetStream stream of dead-lettered work, kept for inspection.
    pub fn dead_letter_stream(&self) -> String {
        format!("{}_dead_letters", self.prefix)
    }

    pub fn dead_letter_subjects(&self) -> String {
        format!("{}.dead_letters.>", self.prefix)
    }

    /// The subject of a payout dead-lettered by the payout worker.
    pub fn payout_dead_letter_subject(&self) -> String {
        format!("{}.dead_letters.payouts", self.prefix)
    }

    /// The durable consumer of a projection.
    pub fn projection_consumer(&self, projection: &str) -> String {
        format!("{}_projection_{projection}", self.prefix)
    }

    /// Core NATS subject on which applied projections announce touched accounts, so
    /// every API instance can drop its cached views of them.
    pub fn cache_invalidation_subject(&self) -> String {
        format!("{}.cache.accounts", self.prefix)
    }
}

/// Connects to NATS; the connection is made in the background if the server is down,
/// so the service starts (and takes commands) without it.
/// `url` may list several servers of a cluster, comma-separated.
pub async fn connect(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    let servers: Vec<&str> = url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(5)))
        .connect(servers)
        .await
}

/// The replicas a stream gets when none are configured: 3 on a cluster of three or more
/// servers (the servers the connected one advertises, itself included), else 1.
pub fn replicas_for(server: &async_nats::ServerInfo) -> usize {
    let mut urls = server.connect_urls.clone();
    urls.sort();
    urls.dedup();
    if server.cluster.is_some() && urls.len() >= 3 { 3 } else { 1 }
}

/// Creates (or finds) the events stream: file storage, deduplication window, and the
/// configured replicas or those of the cluster. Only the relay publishes to it, so a
/// stream whose sequences restart below the relay's last stored message has lost
/// messages (`relay.rs`). A stream made by a version that kept dead letters in it too
/// is updated to the events' subjects alone (its old dead letters stay in it); if the
/// update is refused, the stream is used as it is (the dead letters then still go
/// into it) and the update is tried again at the next call.
pub async fn ensure_events_stream(js: &jetstream::Context, names: &Names) -> Result<stream::Stream, async_nats::Error> {
    let stream = ensure_stream(js, names, names.events_stream(), names.events_subjects()).await?;
    if stream.cached_info().config.subjects == [names.events_subjects()] {
        return Ok(stream);
    }
    match update_stream(js, &names.events_stream(), |c| c.subjects = vec![names.events_subjects()]).await {
        Ok(updated) => {
            tracing::info!(stream = %names.events_stream(), "dead letters moved out of the events stream");
            Ok(updated)
        }
        Err(e) => {
            tracing::warn!(stream = %names.events_stream(), error = %e,
                "cannot give the dead letters' subjects up now; using the stream as it is");
            Ok(stream)
        }
    }
}

/// Creates (or finds) the stream of dead-lettered work, kept for inspection: a stream
/// of its own, so that nothing but the relay publishes to the events stream. The
/// events stream is ensured first: one made by an older version still claims the
/// dead letters' subjects, and two streams cannot share a subject.
pub async fn ensure_dead_letter_stream(
    js: &jetstream::Context,
    names: &Names,
) -> Result<stream::Stream, async_nats::Error> {
    ensure_events_stream(js, names).await?;
    ensure_stream(js, names, names.dead_letter_stream(), names.dead_letter_subjects()).await
}

/// Creates (or finds) a stream of this instance: file storage, deduplication window,
/// and the configured replicas or those of the cluster. An existing stream with
/// another configured replica count, or with fewer than the cluster's, is updated to
/// it (its consumers, created without a count of their own, follow the stream); if
/// the cluster cannot place the replicas now, the stream is used as it is and the
/// update is tried again at the next call.
async fn ensure_stream(
    js: &jetstream::Context,
    names: &Names,
    name: String,
    subjects: String,
) -> Result<stream::Stream, async_nats::Error> {
    let replicas = names.replicas.unwrap_or_else(|| replicas_for(&js.client().server_info()));
    let config = stream::Config {
        name: name.clone(),
        subjects: vec![subjects],
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: replicas,
        ..Default::default()
    };
    let stream = js.get_or_create_stream(config).await?;
    let current = stream.cached_info().config.num_replicas;
    // Replicas taken from the cluster only ever go up: a client that connected while
    // a node was down sees fewer servers, and must not shrink the stream. A configured
    // count is applied either way.
    if current == replicas || (names.replicas.is_none() && replicas < current) {
        return Ok(stream);
    }
    match update_stream(js, &name, |c| c.num_replicas = replicas).await {
        Ok(updated) => {
            tracing::info!(stream = %name, from = current, to = replicas, "stream replicas updated");
            Ok(updated)
        }
        Err(e) => {
            tracing::warn!(stream = %name, from = current, to = replicas, error = %e,
                "cannot change the stream's replicas now; using it as it is");
            Ok(stream)
        }
    }
}

/// Changes a stream's configuration as it is now, not as it was read earlier (another
/// process may have changed it since), and returns the stream as updated.
async fn update_stream(
    js: &jetstream::Context,
    name: &str,
    change: impl FnOnce(&mut stream::Config),
) -> Result<stream::Stream, async_nats::Error> {
    let mut config = js.get_stream(name).await?.cached_info().config.clone();
    change(&mut config);
    js.update_stream(config).await?;
    Ok(js.get_stream(name).await?)
}
