//! Snapshots of folded stream state every N events, so strong and temporal reads of
//! long streams stay fast. They live beside the log and are only a shortcut: each is
//! tagged with the domain's `EVOLVE_VERSION`, and one of another version (or one that
//! no longer decodes) is ignored, so a change to `evolve` rebuilds them from the log.

use crate::store::StoreError;
use ledger_domain::effective::EffectiveAccount;
use ledger_domain::{Aggregate, EVOLVE_VERSION, Event, StreamState, evolve};
use sqlx::PgPool;
use uuid::Uuid;

/// A snapshot's state, read as text: a system account's balance may pass 64 bits, which
/// `serde_json::Value` cannot hold exactly (an `i128` parses from text, not from a
/// `Value`). A snapshot that does not decode is ignored (the log is folded instead).
fn decode(state: &str) -> Option<StreamState> {
    serde_json::from_str(state).ok()
}

/// The latest trusted snapshot of each stream (version and state).
pub async fn latest(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<(Uuid, StreamState)>, sqlx::Error> {
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        // One backward probe of the primary key per stream: `= any($1)` over a
        // thousand ids would be planned as a scan comparing every row with every id.
        "select k.id, s.state::text from unnest($1::uuid[]) as k(id)
         join lateral (select state from snapshots s where s.stream_id = k.id and s.evolve_version = $2
                       order by s.version desc limit 1) s on true",
    )
    .bind(ids)
    .bind(EVOLVE_VERSION)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().filter_map(|(id, state)| decode(&state).map(|s| (id, s))).collect())
}

/// Stores a snapshot (idempotent).
pub async fn save(pool: &PgPool, stream_id: Uuid, state: &StreamState) -> Result<(), sqlx::Error> {
    save_all(pool, &[(stream_id, state)]).await
}

/// Stores snapshots (idempotent) in one statement, committed without waiting for the
/// WAL flush: a snapshot is a shortcut the log can always stand in for, and one lost in
/// a crash is only a longer fold (its events, committed before it, are not lost). One
/// fsync each cost bulks about a tenth of Postgres' time in waits on the WAL.
pub async fn save_all(pool: &PgPool, states: &[(Uuid, &StreamState)]) -> Result<(), sqlx::Error> {
    // One row per (stream, version): a statement may not update a row twice.
    let mut seen = std::collections::HashSet::with_capacity(states.len());
    let rows: Vec<(Uuid, i64, String)> = states
        .iter()
        .filter(|(id, state)| seen.insert((*id, state.version)))
        .map(|(id, state)| (*id, state.version, serde_json::to_string(state).expect("stream state serializes")))
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "with quick as (select set_config('synchronous_commit', 'off', true))
         insert into snapshots (stream_id, version, position, evolve_version, state)
         select k.id, k.version, s.position, $4, k.state::jsonb
         from quick, unnest($1::uuid[], $2::int8[], $3::text[]) as k(id, version, state)
         join stream_entries s on s.stream_id = k.id and s.version = k.version
         on conflict (stream_id, version) do update set evolve_version = excluded.evolve_version, state = excluded.state",
    )
    .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.2.as_str()).collect::<Vec<_>>())
    .bind(EVOLVE_VERSION)
    .execute(pool)
    .await?;
    Ok(())
}

/// A stream's state as it was right after position `at` (the log folded up to it),
/// starting from the latest trusted snapshot at or before `at` when `use_snapshots`.
/// Returns the state and how many events were folded.
pub async fn state_at(
    pool: &PgPool,
    stream_id: Uuid,
    at: i64,
    use_snapshots: bool,
) -> Result<(StreamState, usize), StoreError> {
    let mut state = StreamState::default();
    if use_snapshots {
        let row: Option<String> = sqlx::query_scalar(
            "select state::text from snapshots where stream_id = $1 and position <= $2 and evolve_version = $3
             order by version desc limit 1",
        )
        .bind(stream_id)
        .bind(at)
        .bind(EVOLVE_VERSION)
        .fetch_optional(pool)
        .await?;
        if let Some(s) = row.as_deref().and_then(decode) {
            state = s;
        }
    }
    let rows: Vec<(i64, String, serde_json::Value)> = sqlx::query_as(
        "select s.version, e.type, e.data from stream_entries s join events e on e.position = s.position
         where s.stream_id = $1 and s.version > $2 and s.position <= $3 order by s.version",
    )
    .bind(stream_id)
    .bind(state.version)
    .bind(at)
    .fetch_all(pool)
    .await?;
    let folded = rows.len();
    for (version, event_type, data) in rows {
        let event = Event::from_parts(&event_type, data)?;
        state = evolve(state, stream_id, version, &event);
    }
    Ok((state, folded))
}

/// A stream's state as of business time `effective` with what the log held at
/// position `at` (API.md "Effective dates"): the fold of its events at positions up to
/// `at` whose effective time (the `effective_at` they state, else when they were
/// recorded) is at or before `effective`, funds held as `EffectiveAccount` counts them,
/// and its first event (it exists regardless). Returns that state and the stream's
/// version at `at`.
///
/// An `effective_at` is never more than [`EFFECTIVE_AHEAD`] after its recording, so
/// every event recorded by `effective - EFFECTIVE_AHEAD` counts: that prefix comes from
/// [`state_at`], snapshots included, and only the events after it are looked at one by
/// one (those recorded since, at most the backdating window's worth for a recent time).
pub async fn effective_state_at(
    pool: &PgPool,
    stream_id: Uuid,
    at: i64,
    effective: chrono::DateTime<chrono::Utc>,
    use_snapshots: bool,
) -> Result<(StreamState, i64), StoreError> {
    let settled = crate::store::EventStore::new(pool.clone()).position_at(effective - EFFECTIVE_AHEAD).await?;
    let base = settled.min(at);
    let (mut state, _) = state_at(pool, stream_id, base, use_snapshots).await?;
    let mut version = state.version;
    let rows: Vec<(i64, String, serde_json::Value, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "select s.version, e.type, e.data, e.recorded_at from stream_entries s join events e on e.position = s.position
         where s.stream_id = $1 and s.position > $2 and s.position <= $3 order by s.version",
    )
    .bind(stream_id)
    .bind(base)
    .bind(at)
    .fetch_all(pool)
    .await?;
    // After the prefix, each event counts by its own effective time, and funds held by
    // when their placement and release count (`EffectiveAccount`): never the recording
    // order's state machine over a business-time subsequence of its events.
    let mut seen = match state.aggregate {
        Aggregate::Account(ref a) => Some(EffectiveAccount::new(a.clone(), effective)),
        _ => None,
    };
    for (stream_version, event_type, data, recorded_at) in rows {
        version = stream_version;
        let event = Event::from_parts(&event_type, data)?;
        match seen.as_mut() {
            Some(account) => account.apply(&event, recorded_at),
            // The stream's first event (an account's opening) always counts: business
            // time filters what happened to the account, not whether it exists.
            None if stream_version == 1 => {
                state = evolve(state, stream_id, 1, &event);
                if let Aggregate::Account(a) = &state.aggregate {
                    seen = Some(EffectiveAccount::new(a.clone(), effective));
                }
            }
            None => {}
        }
    }
    if let Some(account) = seen {
        state.aggregate = Aggregate::Account(account.account);
    }
    Ok((state, version))
}

/// How far after its recording an `effective_at` may be (API.md: 60 s).
pub const EFFECTIVE_AHEAD: chrono::Duration = chrono::Duration::seconds(60);
