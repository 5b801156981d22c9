//! Prometheus metrics: the recorder, the per-route HTTP middleware, and `GET /metrics`,
//! which also samples the gauges that live elsewhere (pool, cache, breakers, lags,
//! dead-letter depth) at scrape time.

use crate::run::state::{AppState, Core};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ledger_infrastructure::breaker::{BreakerSnapshot, BreakerState};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Instant;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let seconds = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), &sizes))
            .and_then(PrometheusBuilder::install_recorder)
            .expect("the only metrics recorder of the process is installed once")
    })
}

/// The route template a response was answered by, for the request log line of a
/// request that reached its route through a ledger's router.
#[derive(Clone, Debug)]
pub struct RouteTemplate(pub String);

/// Counts requests and times them per route, method and status.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let method = request.method().to_string();
    let started = Instant::now();
    let mut response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    response.extensions_mut().insert(RouteTemplate(route.clone()));
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("ledger_http_requests_total", &labels).increment(1);
    metrics::histogram!("ledger_http_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
    response
}

fn breaker_gauge(b: &BreakerSnapshot) {
    let value = match b.state {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen => 1.0,
        BreakerState::Open => 2.0,
    };
    metrics::gauge!("ledger_circuit_breaker_state", "name" => b.name.clone()).set(value);
    metrics::gauge!("ledger_circuit_breaker_failures", "name" => b.name.clone()).set(f64::from(b.failures));
}

/// Samples the HTTP layer's gauges (cache, Postgres breaker), then the process's.
async fn sample(state: &AppState) {
    let (hits, misses, entries) = state.cache.stats();
    metrics::gauge!("ledger_cache_hits").set(hits as f64);
    metrics::gauge!("ledger_cache_misses").set(misses as f64);
    metrics::gauge!("ledger_cache_entries").set(entries as f64);
    breaker_gauge(&state.db_breaker.snapshot());
    sample_core(&state.core).await;
}

/// Samples the gauges kept outside the metrics registry that every process has; a
/// failing database leaves the database-derived gauges as they were.
async fn sample_core(state: &Core) {
    metrics::gauge!("ledger_db_pool_connections").set(f64::from(state.pool.size()));
    metrics::gauge!("ledger_db_pool_idle_connections").set(state.pool.num_idle() as f64);
    for b in [state.relay_breaker.snapshot(), state.provider_breaker.snapshot()] {
        breaker_gauge(&b);
    }
    let lags: Result<Vec<(String, i64, f64)>, sqlx::Error> = sqlx::query_as(
        "select p.name, h.position - p.position,
                coalesce(extract(epoch from now() - (select recorded_at from events where position = p.position + 1)), 0)::float8
         from projection_checkpoints p cross join log_head h
         union all
         select 'relay', h.position - r.position,
                coalesce(extract(epoch from now() - (select recorded_at from events where position = r.position + 1)), 0)::float8
         from relay_checkpoints r cross join log_head h",
    )
    .fetch_all(&state.pool)
    .await;
    for (name, events, seconds) in lags.unwrap_or_default() {
        if name == "relay" {
            metrics::gauge!("ledger_relay_lag_events").set(events as f64);
            metrics::gauge!("ledger_relay_lag_seconds").set(seconds);
        } else {
            metrics::gauge!("ledger_projection_lag_events", "projection" => name.clone()).set(events as f64);
            metrics::gauge!("ledger_projection_lag_seconds", "projection" => name).set(seconds);
        }
    }
    if let Ok(depth) = sqlx::query_scalar::<_, i64>("select count(*) from dead_letters where status = 'open'")
        .fetch_one(&state.pool)
        .await
    {
        metrics::gauge!("ledger_dead_letters_open").set(depth as f64);
    }
}

/// `GET /metrics` in the Prometheus text format.
pub async fn render(State(state): State<AppState>) -> Response {
    sample(&state).await;
    exposition()
}

/// `GET /metrics` of a worker process (no HTTP layer, so no cache or Postgres breaker).
pub async fn render_core(State(core): State<Core>) -> Response {
    sample_core(&core).await;
    exposition()
}

fn exposition() -> Response {
    let mut response = handle().render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}
