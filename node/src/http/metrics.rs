//! `GET /metrics`: Prometheus text exposition of queries, bees, temperature and ingest.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;

/// Upper bounds (seconds) of the query latency histogram's buckets.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

/// Counters of the SQL served over HTTP.
#[derive(Default)]
pub struct Metrics {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Per bucket (the last is +Inf), not cumulative; summed when written.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    micros_total: AtomicU64,
}

impl Metrics {
    pub fn query_done(&self, ok: bool, took: Duration) {
        let counter = if ok { &self.ok } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.micros_total
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

pub async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    let mut out = String::new();
    let m = &st.metrics;
    let (ok, failed) = (
        m.ok.load(Ordering::Relaxed) as f64,
        m.failed.load(Ordering::Relaxed) as f64,
    );
    metric(
        &mut out,
        "apiary_queries_total",
        "counter",
        "SQL requests answered, by outcome.",
        &[("{outcome=\"ok\"}", ok), ("{outcome=\"error\"}", failed)],
    );
    let mut cumulative = 0u64;
    let mut lines = Vec::new();
    for (i, bound) in BUCKETS
        .iter()
        .map(|b| b.to_string())
        .chain(["+Inf".to_string()])
        .enumerate()
    {
        cumulative += m.buckets[i].load(Ordering::Relaxed);
        lines.push((format!("{{le=\"{bound}\"}}"), cumulative as f64));
    }
    let _ = writeln!(
        out,
        "# HELP apiary_query_duration_seconds Time from request to the last byte of the result.\n\
         # TYPE apiary_query_duration_seconds histogram"
    );
    for (labels, v) in &lines {
        let _ = writeln!(out, "apiary_query_duration_seconds_bucket{labels} {v}");
    }
    let _ = writeln!(
        out,
        "apiary_query_duration_seconds_sum {}\napiary_query_duration_seconds_count {}",
        m.micros_total.load(Ordering::Relaxed) as f64 / 1e6,
        cumulative
    );
    let bees = st.apiary.bee_status();
    let busy = bees
        .iter()
        .filter(|b| b.state == crate::bees::BeeState::Busy)
        .count();
    let used: u64 = bees.iter().map(|b| b.memory_used).sum();
    metric(
        &mut out,
        "apiary_bees",
        "gauge",
        "Worker slots of the node.",
        &[("", bees.len() as f64)],
    );
    metric(
        &mut out,
        "apiary_bees_busy",
        "gauge",
        "Bees running a task.",
        &[("", busy as f64)],
    );
    metric(
        &mut out,
        "apiary_chamber_memory_bytes",
        "gauge",
        "Memory reserved in the bees' chambers.",
        &[("", used as f64)],
    );
    let colony = st.apiary.colony_status();
    metric(
        &mut out,
        "apiary_temperature",
        "gauge",
        "Colony temperature in [0, 1].",
        &[("", colony.temperature)],
    );
    metric(
        &mut out,
        "apiary_tasks_abandoned_total",
        "counter",
        "Tasks given up after their trial limit.",
        &[("", colony.abandoned_tasks as f64)],
    );
    let r = st.apiary.meadow().requests();
    metric(
        &mut out,
        "apiary_meadow_requests_total",
        "counter",
        "Requests this node made to the meadow (cache hits not included), by kind.",
        &[
            ("{kind=\"get\"}", r.get as f64),
            ("{kind=\"put\"}", r.put as f64),
            ("{kind=\"list\"}", r.list as f64),
            ("{kind=\"delete\"}", r.delete as f64),
            ("{kind=\"copy\"}", r.copy as f64),
        ],
    );
    if let Some(c) = st.apiary.cache() {
        let c = c.summary();
        metric(
            &mut out,
            "apiary_cell_cache_bytes",
            "gauge",
            "Bytes of cells in the local cache.",
            &[("", c.bytes as f64)],
        );
        metric(
            &mut out,
            "apiary_cell_cache_reads_total",
            "counter",
            "Cell reads by the cache, by outcome.",
            &[
                ("{outcome=\"hit\"}", c.hits as f64),
                ("{outcome=\"miss\"}", c.misses as f64),
            ],
        );
    }
    if let Some(swarm) = st.apiary.swarm() {
        let c = swarm.counters();
        metric(
            &mut out,
            "apiary_swarm_tasks_total",
            "counter",
            "Swarm tasks: run here for others (done, failed); as coordinator, given out again              and run here after their trials (reclaimed, abandoned).",
            &[
                ("{outcome=\"done\"}", c.tasks_done as f64),
                ("{outcome=\"failed\"}", c.tasks_failed as f64),
                ("{outcome=\"reclaimed\"}", c.tasks_reclaimed as f64),
                ("{outcome=\"abandoned\"}", c.tasks_abandoned as f64),
            ],
        );
        metric(
            &mut out,
            "apiary_swarm_stages_shared_total",
            "counter",
            "Query stages this node shared with the swarm.",
            &[("", c.stages_shared as f64)],
        );
    }
    if let Some(ing) = st.ingest.as_ref().map(|i| i.status()) {
        for (name, kind, help, v) in [
            (
                "apiary_ingest_received_total",
                "counter",
                "MQTT messages received.",
                ing.received as f64,
            ),
            (
                "apiary_ingest_committed_rows_total",
                "counter",
                "Rows committed to frames.",
                ing.committed_rows as f64,
            ),
            (
                "apiary_ingest_rejected_total",
                "counter",
                "Messages sent to rejects frames.",
                ing.rejected as f64,
            ),
            (
                "apiary_ingest_duplicates_total",
                "counter",
                "Redelivered messages dropped.",
                ing.duplicates as f64,
            ),
            (
                "apiary_ingest_messages_per_second",
                "gauge",
                "Recent message rate.",
                ing.messages_per_sec,
            ),
            (
                "apiary_ingest_wal_records",
                "gauge",
                "Messages in the write-ahead log.",
                ing.wal_records as f64,
            ),
            (
                "apiary_ingest_backlog_bytes",
                "gauge",
                "Bytes waiting to be committed.",
                ing.backlog_bytes as f64,
            ),
            (
                "apiary_ingest_commit_ms_p99",
                "gauge",
                "99th percentile commit time.",
                ing.commit_ms_p99 as f64,
            ),
        ] {
            metric(&mut out, name, kind, help, &[("", v)]);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}
