//! The outbox relay: the events table is the outbox. The relay publishes events in
//! position order to JetStream, an event alone (`Nats-Msg-Id` = event id) or a run of
//! them in one message (`Nats-Msg-Id` = first and last position; `message_groups`), so
//! that a re-publish after a crash cut the same way is dropped by JetStream's duplicate
//! window, and advances its checkpoint only after JetStream acknowledged every event up
//! to it.
//!
//! Exactly one relay runs at a time: leadership is a Postgres session advisory lock
//! held on the relay's own connection. If the process or its connection dies, the lock
//! is released and another instance takes over. The relay is woken by `LISTEN` on the
//! append's `NOTIFY`, with a slow poll as a safety net. When NATS is unreachable it
//! backs off with jitter behind a circuit breaker; commands are unaffected.
//!
//! What this process's writer commits is handed to the relay in memory
//! (`store::handoff`) and published without being read back; anything else (another
//! process's appends, a handed batch that found no room, a restart) is read from the log.
//!
//! A lost stream is filled again from the log: the relay keeps the stream sequence of
//! its last acknowledged publish and that message's `Ledger-Position`, and a stream
//! whose sequences start again below it, or that holds another message there
//! (deleted and created anew, or a server that came back without its storage) makes
//! the relay start over from position 0. Only the relay publishes to the stream (dead
//! letters have their own). JetStream drops what its duplicate window still holds;
//! consumers ignore what is at or below their checkpoints.

use crate::breaker::{CircuitBreaker, backoff_delay};
use crate::nats::{Names, ensure_events_stream};
use crate::store::EventStore;
use crate::store::handoff::{Handoff, Inbox, Outgoing};
use async_nats::jetstream::{self, message::PublishMessage};
use sqlx::postgres::PgConnection;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the leader ensures the events stream (replicas, lost messages) again.
pub const STREAM_RECHECK: Duration = Duration::from_secs(10);

/// Limits of the relay.
#[derive(Clone, Copy, Debug)]
pub struct RelayLimits {
    pub batch_max: i64,
    pub poll_interval: Duration,
    pub election_interval: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Statement and lock-wait limits of the leader's own connection (it is not a pool
    /// connection, so it does not get the pool's; 0 disables one).
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
    /// `LEDGER_RELAY_LEASE_MS`: the leader's session ends after this long unused.
    pub lease: Duration,
    /// `LEDGER_RELAY_LINGER_MS`: the pause after publishing less than a batch.
    pub linger: Duration,
}

/// How often a leader that is waiting uses its session (well inside any lease).
const KEEP_ALIVE: Duration = Duration::from_millis(1_000);

impl RelayLimits {
    /// The relay's settings (`LEDGER_RELAY_*`, and the pool's statement and lock limits).
    pub fn from_config(c: &crate::Config) -> RelayLimits {
        RelayLimits {
            batch_max: c.relay_batch_max,
            poll_interval: c.relay_poll_interval,
            election_interval: c.relay_election_interval,
            backoff_base: c.relay_backoff_base,
            backoff_max: c.relay_backoff_max,
            statement_timeout: c.db_statement_timeout,
            lock_timeout: c.db_lock_timeout,
            lease: c.relay_lease.max(KEEP_ALIVE * 3),
            linger: c.relay_linger,
        }
    }
}

/// The relay of one ledger (one database, one NATS prefix).
pub struct Relay {
    pub database_url: String,
    /// When the events stream was last ensured (`None`: not yet, or a publish failed
    /// since). It is ensured again every [`STREAM_RECHECK`]: a cluster that has grown
    /// (or whose routes had not formed at start) gets its replicas, and a lost stream
    /// is noticed even while nothing is published.
    pub stream_ready: std::sync::Mutex<Option<std::time::Instant>>,
    pub js: jetstream::Context,
    pub names: Names,
    pub breaker: CircuitBreaker,
    pub limits: RelayLimits,
    /// True while this instance holds the relay lock.
    pub leader: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// What this process's writer hands over (taken by [`Relay::run`]).
    handed: std::sync::Mutex<Inbox>,
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("nats: {0}")]
    Nats(#[from] PublishError),
}

/// Why events did not reach JetStream.
#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error(transparent)]
    Open(#[from] crate::breaker::BreakerOpen),
    #[error("ensuring the events stream: {0}")]
    Stream(async_nats::Error),
    #[error("sending: {0}")]
    Send(async_nats::jetstream::context::PublishError),
    #[error("awaiting the ack: {0}")]
    Ack(async_nats::jetstream::context::PublishError),
    #[error("timed out waiting for a JetStream ack")]
    AckTimeout,
}

/// Where the leader is. Its checkpoint and stream sequence as it last wrote them: it
/// alone writes them while it holds the lock, so it reads them back only once a second.
/// And how far it knows the log to reach, so that it reads the log only when there
/// may be something to read.
struct Cursor {
    checkpoint: i64,
    sequence: i64,
    /// The `Ledger-Position` of the message stored at `sequence` (`None`: not known,
    /// from a version before it was kept, or none stored since the last restart).
    at_sequence: Option<i64>,
    /// The relay's message the last stream check found where it was stored (sequence,
    /// `Ledger-Position`), read again at the next check: a stream lost since then and
    /// filled by others exactly up to the relay's sequence before the relay published
    /// into it has another message there too.
    confirmed: Option<(u64, i64)>,
    /// When the checkpoint was last read from its row (`None`: not yet).
    read_back: Option<std::time::Instant>,
    /// The highest position known to be in the log; `None`: unknown (read the log).
    announced: Option<i64>,
    /// When the log was last read.
    log_read: std::time::Instant,
}

impl Cursor {
    /// An append announced (or handed) the log's head at `head`; `None`: something
    /// may have been announced that was not heard.
    fn announce(&mut self, head: Option<i64>) {
        self.announced = match (self.announced, head) {
            (Some(known), Some(head)) => Some(known.max(head)),
            _ => None,
        };
    }

    /// A notification heard on the `LISTEN` session: its payload is the head its append
    /// left. `None` (the session was lost and made again: what was announced meanwhile
    /// is unknown), or a payload that does not read, has the log read.
    fn notified(&mut self, n: Option<sqlx::postgres::PgNotification>) {
        self.announce(n.and_then(|n| n.payload().parse().ok()));
    }

    /// Whether the log may hold events past the checkpoint that the relay has not seen:
    /// one was announced past it, or what was announced is unknown, or the poll is `due`.
    fn may_read_more(&self, due: bool) -> bool {
        due || self.announced.is_none_or(|head| head > self.checkpoint)
    }
}

/// What the events stream holds at the relay's last stored sequence.
enum AtSequence {
    /// The relay's message, or nothing to compare it with.
    Ours,
    /// Another message: the stream was lost and made anew.
    Another,
    /// Not read.
    Unknown(async_nats::Error),
}

/// How long reading the stream to check the message at the relay's last sequence may
/// take (the leader's session must be used within its lease meanwhile).
const SEQUENCE_CHECK_MAX: Duration = Duration::from_secs(2);

/// How long ensuring the events stream at a stream check may take.
const STREAM_CHECK_MAX: Duration = Duration::from_secs(8);

/// What a publish of a batch achieved.
struct Published {
    /// The last position acknowledged without a gap before it.
    last: Option<i64>,
    /// The highest stream sequence of a message stored by this publish (not a duplicate).
    sequence: u64,
    /// The `Ledger-Position` of the message stored at `sequence`.
    at_sequence: Option<i64>,
    /// The lowest stream sequence of a message stored by this publish.
    first: Option<u64>,
    /// The stream's sequences started again below the relay's: it lost messages.
    restarted: bool,
    error: Option<PublishError>,
}

impl Relay {
    /// The relay of the ledger at `database_url`, publishing to `js` under `names`.
    pub fn new(
        database_url: String,
        js: jetstream::Context,
        names: Names,
        breaker: CircuitBreaker,
        limits: RelayLimits,
    ) -> Relay {
        Relay {
            database_url,
            stream_ready: Default::default(),
            js,
            names,
            breaker,
            limits,
            leader: Default::default(),
            handed: std::sync::Mutex::new(Inbox::none()),
        }
    }

    /// Has `store` (this process's writer) hand what it commits to this relay while it
    /// leads, instead of the relay reading it back.
    pub fn fed_by(self, store: &EventStore) -> Relay {
        let (handoff, inbox) = Handoff::new(self.leader.clone());
        if store.hand_committed_to(handoff) {
            *self.handed.lock().expect("not poisoned") = inbox;
        }
        self
    }

    /// Runs until `shutdown`: campaigns for leadership, relays while leader.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut inbox = std::mem::take(&mut *self.handed.lock().expect("not poisoned"));
        let mut attempt = 0u32;
        while !shutdown.is_cancelled() {
            match self.lead(&mut inbox, &shutdown).await {
                Ok(true) => attempt = 0,
                Ok(false) => {}
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "relay stopped leading; will campaign again");
                }
            }
            let wait = self.limits.election_interval
                + backoff_delay(attempt, self.limits.backoff_base, self.limits.backoff_max);
            tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(wait) => {} }
        }
    }

    /// Takes the lock if free and relays until shutdown or an error. Returns whether
    /// this instance led.
    async fn lead(&self, inbox: &mut Inbox, shutdown: &CancellationToken) -> Result<bool, RelayError> {
        let mut conn = crate::db::session(&self.database_url).await?;
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        // `idle_session_timeout` is the leadership's lease: a leader paused or gone loses
        // its session, and so the lock, once it has not used it for `lease`.
        let setup = sqlx::query(
            "select set_config('statement_timeout', $1, false), set_config('lock_timeout', $2, false),
                    set_config('idle_session_timeout', $3, false)",
        )
        .bind(ms(self.limits.statement_timeout))
        .bind(ms(self.limits.lock_timeout))
        .bind(ms(self.limits.lease));
        self.bounded(setup.execute(&mut conn)).await?;
        let lock_key = format!("ledger-relay:{}", self.names.prefix());
        let campaign =
            sqlx::query_scalar("select pg_try_advisory_lock(hashtext($1), ledger_lock_key())").bind(&lock_key);
        let leader: bool = self.bounded(campaign.fetch_one(&mut conn)).await?;
        if !leader {
            crate::db::close_within(conn).await;
            return Ok(false);
        }
        tracing::info!("relay leadership acquired");
        inbox.clear();
        self.leader.store(true, std::sync::atomic::Ordering::SeqCst);
        let result = self.relay_while_leader(&mut conn, inbox, shutdown).await;
        self.leader.store(false, std::sync::atomic::Ordering::SeqCst);
        inbox.clear();
        // Closing the connection releases the advisory lock (a session whose network went
        // silent is dropped; Postgres ends it, and the lock, within the lease).
        crate::db::close_within(conn).await;
        result.map(|()| true)
    }

    /// One round trip on the leader's session, bounded by the lease: an answer that has
    /// not come within it is not waited for, as the session (and with it the leadership)
    /// may already be gone, and the caller drops the session and campaigns again.
    async fn bounded<T>(
        &self,
        round_trip: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        crate::db::within(self.limits.lease, "a round trip on the relay leader's session", round_trip).await
    }

    async fn relay_while_leader(
        &self,
        conn: &mut PgConnection,
        inbox: &mut Inbox,
        shutdown: &CancellationToken,
    ) -> Result<(), RelayError> {
        let mut listener = crate::db::listener(&self.database_url).await?;
        crate::db::listen_to(&mut listener, &["ledger_events"]).await?;
        let start = sqlx::query("insert into relay_checkpoints (name, position) values ($1, 0) on conflict do nothing")
            .bind(self.names.prefix());
        self.bounded(start.execute(&mut *conn)).await?;
        let mut cursor = Cursor {
            checkpoint: 0,
            sequence: 0,
            at_sequence: None,
            confirmed: None,
            announced: None,
            log_read: std::time::Instant::now(),
            read_back: None,
        };
        let mut attempt = 0u32;
        while !shutdown.is_cancelled() {
            match self.relay_batch(conn, inbox, &mut cursor).await {
                Ok(0) => {
                    attempt = 0;
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = inbox.recv() => {}
                        n = listener.try_recv() => match n {
                            Ok(n) => cursor.notified(n),
                            Err(e) => {
                                cursor.announce(None);
                                tracing::warn!(error = %e, "the relay's LISTEN session failed; polling meanwhile");
                                tokio::time::sleep(self.wake_every() / 4).await;
                            }
                        },
                        _ = tokio::time::sleep(self.wake_every()) => {}
                    }
                }
                Ok(relayed) => {
                    attempt = 0;
                    // Less than a batch: the writer's next batches gather meanwhile and
                    // go out together, as one message where they fit. What is handed
                    // meanwhile is taken in, so that the hand-off's channel keeps its
                    // room, and so are the appends' notifications: under steady load the
                    // relay may never come to wait above, and notifications nobody reads
                    // fill Postgres' queue of them, which every append of the cluster
                    // needs room in.
                    if (relayed as i64) < self.limits.batch_max && !self.limits.linger.is_zero() {
                        let until = tokio::time::Instant::now() + self.limits.linger;
                        loop {
                            tokio::select! {
                                _ = shutdown.cancelled() => break,
                                _ = tokio::time::sleep_until(until) => break,
                                _ = inbox.recv() => {}
                                n = listener.try_recv() => match n {
                                    Ok(n) => cursor.notified(n),
                                    // Handled where the relay waits for work.
                                    Err(_) => {
                                        cursor.announce(None);
                                        break;
                                    }
                                },
                            }
                        }
                    }
                }
                Err(RelayError::Nats(e)) => {
                    attempt += 1;
                    metrics::counter!("ledger_relay_retries_total").increment(1);
                    let delay = backoff_delay(attempt, self.limits.backoff_base, self.limits.backoff_max);
                    tracing::warn!(error = %e, attempt, ?delay, "publishing to JetStream failed; backing off");
                    // The back-off may outlast the lease: the session is used meanwhile.
                    let until = tokio::time::Instant::now() + delay;
                    while tokio::time::Instant::now() < until && !shutdown.is_cancelled() {
                        let nap = KEEP_ALIVE.min(until - tokio::time::Instant::now());
                        tokio::select! { _ = shutdown.cancelled() => {}, _ = tokio::time::sleep(nap) => {} }
                        self.bounded(sqlx::query("select 1").execute(&mut *conn)).await?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Publishes the next batch after the checkpoint; returns how many were relayed.
    async fn relay_batch(
        &self,
        conn: &mut PgConnection,
        inbox: &mut Inbox,
        cursor: &mut Cursor,
    ) -> Result<usize, RelayError> {
        // The checkpoint is read back at least every second (and before anything is
        // published after a longer wait): a checkpoint moved by hand (an operator's
        // rewind) is followed within a second, and a leader whose session was ended
        // while it was paused finds out before it publishes, not after.
        if cursor.read_back.is_none_or(|at| at.elapsed() >= self.wake_every()) {
            let at = sqlx::query_as(
                "select position, stream_sequence,
                        case when stream_position_at = stream_sequence then stream_position end
                 from relay_checkpoints where name = $1",
            )
            .bind(self.names.prefix());
            let (checkpoint, sequence, at_sequence): (i64, i64, Option<i64>) =
                self.bounded(at.fetch_one(&mut *conn)).await?;
            if checkpoint != cursor.checkpoint {
                cursor.announced = None;
            }
            (cursor.checkpoint, cursor.sequence, cursor.at_sequence) = (checkpoint, sequence, at_sequence);
            cursor.read_back = Some(std::time::Instant::now());
        }
        let (checkpoint, sequence) = (cursor.checkpoint, cursor.sequence);
        let known = u64::try_from(sequence).unwrap_or(0);
        if self.stream_check_due() {
            let permit = self.breaker.acquire().map_err(PublishError::from)?;
            // Bounded as a whole: the leader's session must be used within its lease.
            let ensured = tokio::time::timeout(STREAM_CHECK_MAX, ensure_events_stream(&self.js, &self.names))
                .await
                .unwrap_or_else(|_| Err("ensuring the events stream timed out".into()));
            match ensured {
                Ok(stream) => {
                    permit.success();
                    let mut at = if stream.cached_info().state.last_sequence < known {
                        AtSequence::Another
                    } else {
                        self.message_at(&stream, known, cursor.at_sequence).await
                    };
                    if let (AtSequence::Ours, Some((sequence, position))) = (&at, cursor.confirmed)
                        && sequence != known
                    {
                        at = self.message_at(&stream, sequence, Some(position)).await;
                    }
                    match at {
                        AtSequence::Another => {
                            self.restart(conn, cursor).await?;
                            return Ok(1);
                        }
                        // Not known to be whole: nothing is published until it is.
                        AtSequence::Unknown(e) => return Err(RelayError::Nats(PublishError::Stream(e))),
                        AtSequence::Ours => {
                            cursor.confirmed = cursor.at_sequence.map(|position| (known, position));
                            *self.stream_ready.lock().expect("not poisoned") = Some(std::time::Instant::now());
                        }
                    }
                }
                Err(e) => {
                    permit.failure();
                    return Err(RelayError::Nats(PublishError::Stream(e)));
                }
            }
        }
        let max = usize::try_from(self.limits.batch_max).unwrap_or(1).max(1);
        let mut events = inbox.next_after_commit(checkpoint, max).await;
        if events.is_empty() {
            // The log is read only if it may hold more than the relay has: something was
            // announced past the checkpoint (or is unknown), or the poll is due (a
            // notification lost with its session; and the leader's session is used at
            // least every KEEP_ALIVE). Each batch this process hands is not followed by
            // reading the log back, empty, twice (after the batch, after its notification).
            if !cursor.may_read_more(cursor.log_read.elapsed() >= self.wake_every()) {
                return Ok(0);
            }
            let read = self
                .bounded(EventStore::read_range(&mut *conn, checkpoint, checkpoint + self.limits.batch_max))
                .await?;
            cursor.log_read = std::time::Instant::now();
            // A read short of a whole batch saw the log's head (appends commit in
            // position order); a whole one may have stopped short of it.
            cursor.announced = ((read.len() as i64) < self.limits.batch_max)
                .then(|| read.last().map_or(checkpoint, |e| e.position).max(cursor.announced.unwrap_or(0)));
            events = read.iter().map(Outgoing::of).collect();
            metrics::counter!("ledger_relay_read_back_total").increment(events.len() as u64);
        } else if let Some(last) = events.last() {
            cursor.announce(Some(last.position));
        }
        if events.is_empty() {
            return Ok(0);
        }
        // Any exit before JetStream answered drops the permit, which frees the probe
        // slot with no verdict.
        let permit = self.breaker.acquire().map_err(PublishError::from)?;
        let mut published = self.publish(&events, known).await;
        // The verdict is JetStream's answer, given before the checkpoint update can fail.
        if published.error.is_none() {
            permit.success();
        } else {
            permit.failure();
        }
        // Only the relay publishes to the stream, so its messages follow its last one.
        // Sequences that skipped past it (a publish whose ack was lost, a deposed leader
        // still publishing, or a stream lost and made anew that grew past it) are
        // checked by the message at its last sequence, before the checkpoint moves. Not
        // read (NATS slow, a leader being elected): the checkpoint moves, but the stream
        // sequence and its message stay as they were, and the stream is checked by them
        // before anything more is published.
        if !published.restarted
            && known > 0
            && cursor.at_sequence.is_some()
            && published.first.is_some_and(|first| first > known + 1)
        {
            let at = tokio::time::timeout(SEQUENCE_CHECK_MAX, async {
                let stream = self.js.get_stream(self.names.events_stream()).await?;
                Ok::<_, async_nats::Error>(self.message_at(&stream, known, cursor.at_sequence).await)
            })
            .await;
            match at {
                Ok(Ok(AtSequence::Ours)) => {}
                Ok(Ok(AtSequence::Another)) => published.restarted = true,
                _ => {
                    (published.sequence, published.at_sequence) = (0, None);
                    *self.stream_ready.lock().expect("not poisoned") = None;
                }
            }
        }
        if published.restarted {
            self.restart(conn, cursor).await?;
            return match published.error {
                None => Ok(events.len()),
                Some(e) => Err(RelayError::Nats(e)),
            };
        }
        if let Some(position) = published.last {
            let advance = sqlx::query(
                "update relay_checkpoints set position = $2, stream_sequence = greatest(stream_sequence, $3),
                 stream_position = case when $3 > stream_sequence then $4 else stream_position end,
                 stream_position_at = case when $3 > stream_sequence then $3 else stream_position_at end,
                 updated_at = now() where name = $1",
            )
            .bind(self.names.prefix())
            .bind(position)
            .bind(i64::try_from(published.sequence).unwrap_or(i64::MAX))
            .bind(published.at_sequence);
            self.bounded(advance.execute(&mut *conn)).await?;
            cursor.checkpoint = position;
            let sequence = i64::try_from(published.sequence).unwrap_or(i64::MAX);
            if sequence > cursor.sequence {
                (cursor.sequence, cursor.at_sequence) = (sequence, published.at_sequence);
            }
        }
        match published.error {
            None => {
                metrics::counter!("ledger_relay_published_total").increment(events.len() as u64);
                Ok(events.len())
            }
            Some(e) => Err(RelayError::Nats(e)),
        }
    }

    /// How often a waiting leader wakes, reads the log and reads its checkpoint back:
    /// the poll, and at least every `KEEP_ALIVE` (the session must be used within its lease).
    fn wake_every(&self) -> Duration {
        self.limits.poll_interval.min(KEEP_ALIVE)
    }

    /// Whether the events stream is to be ensured before the next publish.
    fn stream_check_due(&self) -> bool {
        self.stream_ready.lock().expect("not poisoned").is_none_or(|at| at.elapsed() >= STREAM_RECHECK)
    }

    /// The stream lost messages: relay the whole log again.
    async fn restart(&self, conn: &mut PgConnection, cursor: &mut Cursor) -> Result<(), sqlx::Error> {
        let (checkpoint, sequence) = (cursor.checkpoint, cursor.sequence);
        tracing::warn!(checkpoint, sequence, "the events stream lost messages; relaying the log again from the start");
        metrics::counter!("ledger_relay_stream_restarts_total").increment(1);
        let again = sqlx::query(
            "update relay_checkpoints set position = 0, stream_sequence = 0, stream_position = null,
             stream_position_at = null, updated_at = now() where name = $1",
        )
        .bind(self.names.prefix());
        self.bounded(again.execute(&mut *conn)).await?;
        (cursor.checkpoint, cursor.sequence, cursor.at_sequence, cursor.confirmed) = (0, 0, None, None);
        Ok(())
    }

    /// Whether the message at `sequence`, the relay's last stored one, is still the
    /// one it stored there (its `Ledger-Position` is `position`). A stream lost and made
    /// anew whose sequences have grown past the relay's again holds another message
    /// there. No position to compare, or no message there (deleted by a purge), gives
    /// no verdict: the sequence check stands alone then. A read that failed or took
    /// longer than `SEQUENCE_CHECK_MAX` is `Unknown`.
    async fn message_at(&self, stream: &jetstream::stream::Stream, sequence: u64, position: Option<i64>) -> AtSequence {
        let Some(position) = position.filter(|_| sequence > 0) else { return AtSequence::Ours };
        let error: async_nats::Error =
            match tokio::time::timeout(SEQUENCE_CHECK_MAX, stream.get_raw_message(sequence)).await {
                Ok(Ok(message)) => {
                    let held = message.headers.get("Ledger-Position").and_then(|v| v.as_str().parse::<i64>().ok());
                    if held == Some(position) {
                        return AtSequence::Ours;
                    }
                    tracing::warn!(
                        sequence,
                        position,
                        ?held,
                        "the events stream holds another message at the relay's last sequence"
                    );
                    return AtSequence::Another;
                }
                Ok(Err(e)) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                    return AtSequence::Ours;
                }
                Ok(Err(e)) => e.into(),
                Err(_) => "reading the message at the relay's sequence timed out".into(),
            };
        // Also what a NATS user without `$JS.API.STREAM.MSG.GET.<stream>` gets (as a
        // time-out): the relay then stops publishing, loudly.
        metrics::counter!("ledger_relay_stream_check_unread_total").increment(1);
        tracing::error!(sequence, %error, "cannot read the events stream's message at the relay's sequence");
        AtSequence::Unknown(error)
    }

    /// Publishes in order, awaiting the acks after sending the whole batch. `known` is
    /// the stream sequence of the relay's last stored message: a stream that stores a
    /// message of this batch at or below it has lost messages.
    async fn publish(&self, events: &[Outgoing], known: u64) -> Published {
        let js = &self.js;
        let mut published =
            Published { last: None, sequence: 0, at_sequence: None, first: None, restarted: false, error: None };
        let mut acks = Vec::with_capacity(events.len());
        let mut send_error = None;
        // A run never comes near what the server accepts in one message.
        let bytes_max = GROUP_BYTES_MAX.min(js.client().server_info().max_payload / 2);
        for group in message_groups(events, GROUP_EVENTS_MAX, bytes_max) {
            let (subject, publish) = match group {
                [e] => (
                    self.names.event_subject(&e.event_type),
                    PublishMessage::build()
                        .payload(e.payload.clone())
                        .message_id(e.event_id.to_string())
                        .header("Ledger-Position", e.position.to_string().as_str()),
                ),
                [first, .., last] => (
                    self.names.events_batch_subject(),
                    PublishMessage::build()
                        .payload(run_payload(group).into())
                        .message_id(format!("{}-{}", first.position, last.position))
                        .header("Ledger-Position", last.position.to_string().as_str()),
                ),
                [] => continue,
            };
            let position = group.last().map_or(0, |e| e.position);
            match js.send_publish(subject, publish).await {
                Ok(ack) => acks.push((position, ack)),
                Err(err) => {
                    send_error = Some(PublishError::Send(err));
                    break;
                }
            }
        }
        for (position, ack) in acks {
            let error = match tokio::time::timeout(Duration::from_secs(10), ack).await {
                Ok(Ok(ack)) => {
                    published.last = Some(position);
                    if !ack.duplicate {
                        published.restarted |= ack.sequence <= known;
                        if ack.sequence > published.sequence {
                            (published.sequence, published.at_sequence) = (ack.sequence, Some(position));
                        }
                        published.first = Some(published.first.map_or(ack.sequence, |f| f.min(ack.sequence)));
                    }
                    continue;
                }
                Ok(Err(e)) => PublishError::Ack(e),
                Err(_) => PublishError::AckTimeout,
            };
            *self.stream_ready.lock().expect("not poisoned") = None;
            published.error = Some(error);
            return published;
        }
        if send_error.is_some() {
            *self.stream_ready.lock().expect("not poisoned") = None;
        }
        published.error = send_error;
        published
    }
}

/// Runs of consecutive ledger events go out as one message each (at most
/// `GROUP_EVENTS_MAX` events and `GROUP_BYTES_MAX` bytes): JetStream's work is mostly
/// per message. Events a consumer filters by subject (payouts) or that a purge selects
/// by subject (`AccountOpened`) go out alone, under their own subject.
pub const GROUP_EVENTS_MAX: usize = 256;
pub const GROUP_BYTES_MAX: usize = 256 * 1024;

fn groupable(e: &Outgoing) -> bool {
    crate::nats::Names::category(&e.event_type) == "ledger" && e.event_type != "AccountOpened"
}

/// The payload of a run's message: the JSON array of its events' rows, each byte for
/// byte as it would be published alone.
pub fn run_payload(run: &[Outgoing]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(run.iter().map(|e| e.payload.len() + 1).sum::<usize>() + 1);
    payload.push(b'[');
    for (i, e) in run.iter().enumerate() {
        if i > 0 {
            payload.push(b',');
        }
        payload.extend_from_slice(&e.payload);
    }
    payload.push(b']');
    payload
}

/// `events` cut, in order, into the runs published one message each: a groupable event
/// joins the run before it while the run stays within `events_max` and `bytes_max`
/// (payloads and their separators); every other event is a run of its own.
fn message_groups(events: &[Outgoing], events_max: usize, bytes_max: usize) -> Vec<&[Outgoing]> {
    let mut groups = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let mut end = start + 1;
        if groupable(&events[start]) {
            let mut bytes = events[start].payload.len();
            // Each event after the first adds its payload and a separating comma.
            while end < events.len()
                && end - start < events_max
                && groupable(&events[end])
                && bytes + (events[end].payload.len() + 1) <= bytes_max
            {
                bytes += events[end].payload.len() + 1;
                end += 1;
            }
        }
        groups.push(&events[start..end]);
        start = end;
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::{Cursor, Outgoing, groupable, message_groups};

    /// Random logs (a fixed generator: the same cases every run), each cut with random
    /// limits: the runs are the log in order, none past a limit unless it is one event,
    /// a run of several holds only groupable events, and no two neighbouring runs could
    /// have been one.
    #[test]
    fn message_groups_cut_the_log_into_bounded_runs_of_groupable_events() {
        let types = ["TransferCompleted", "AccountOpened", "WithdrawalRequested", "HoldPlaced", "PayoutRedriven"];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..2_000 {
            let len = next(40) as usize;
            let events: Vec<Outgoing> = (0..len)
                .map(|i| Outgoing {
                    position: i as i64 + 1,
                    event_id: uuid::Uuid::new_v4(),
                    event_type: types[if next(4) == 0 { next(5) as usize } else { 0 }].to_owned(),
                    payload: vec![b'x'; 1 + next(300) as usize].into(),
                })
                .collect();
            let (events_max, bytes_max) = (1 + next(8) as usize, 1 + next(1_200) as usize);
            let groups = message_groups(&events, events_max, bytes_max);
            let flat: Vec<i64> = groups.iter().flat_map(|g| g.iter().map(|e| e.position)).collect();
            assert_eq!(flat, (1..=len as i64).collect::<Vec<_>>(), "every event once, in order");
            let bytes = |g: &[Outgoing]| g.iter().map(|e| e.payload.len()).sum::<usize>() + g.len() - 1;
            for g in &groups {
                assert!(!g.is_empty());
                if g.len() > 1 {
                    assert!(g.iter().all(groupable), "a run of several holds groupable events only");
                    assert!(g.len() <= events_max && bytes(g) <= bytes_max, "a run within its limits");
                }
            }
            for pair in groups.windows(2) {
                let joined: Vec<&Outgoing> = pair[0].iter().chain(pair[1].iter()).collect();
                let fits = joined.len() <= events_max
                    && joined.iter().map(|e| e.payload.len()).sum::<usize>() + joined.len() - 1 <= bytes_max;
                assert!(!(joined.iter().all(|e| groupable(e)) && fits), "two runs that could be one");
            }
        }
        // What a consumer filters or purges by subject always goes alone.
        assert!(!groupable(&Outgoing {
            position: 1,
            event_id: uuid::Uuid::nil(),
            event_type: "AccountOpened".into(),
            payload: Default::default()
        }));
        assert!(!groupable(&Outgoing {
            position: 1,
            event_id: uuid::Uuid::nil(),
            event_type: "WithdrawalRequested".into(),
            payload: Default::default()
        }));
    }

    fn cursor(checkpoint: i64, announced: Option<i64>) -> Cursor {
        Cursor {
            checkpoint,
            sequence: 0,
            at_sequence: None,
            confirmed: None,
            announced,
            log_read: std::time::Instant::now(),
            read_back: None,
        }
    }

    #[test]
    fn the_log_is_read_only_when_it_may_hold_more_than_the_checkpoint() {
        // A leader that has not read the log knows nothing of it.
        assert!(cursor(0, None).may_read_more(false));
        // Everything announced is relayed: nothing to read until the poll.
        assert!(!cursor(7, Some(7)).may_read_more(false));
        assert!(cursor(7, Some(7)).may_read_more(true));
        // Announced past the checkpoint (another process's append, or handed events
        // that did not all reach JetStream).
        assert!(cursor(7, Some(9)).may_read_more(false));
    }

    #[test]
    fn an_announcement_only_raises_what_is_known_and_an_unheard_one_forgets_it() {
        let mut c = cursor(7, Some(7));
        c.announce(Some(5));
        assert_eq!(c.announced, Some(7), "an older head never lowers it");
        c.announce(Some(12));
        assert_eq!(c.announced, Some(12));
        // A session lost and made again: what was announced meanwhile is unknown.
        c.announce(None);
        assert_eq!(c.announced, None);
        assert!(c.may_read_more(false));
        // Unknown stays unknown until the log is read.
        c.announce(Some(20));
        assert_eq!(c.announced, None);
    }
}
