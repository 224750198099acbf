//! Ingestion's figures: counters, commit durations, the rate, and the status file that
//! `apiary ingest status` (another process) reads.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use super::{Inner, now_ms};
use crate::error::{Error, Result};

#[derive(Default)]
pub(super) struct Stats {
    pub(super) received: AtomicU64,
    pub(super) duplicates: AtomicU64,
    /// messages no route takes (acked and dropped)
    pub(super) unrouted: AtomicU64,
    pub(super) committed_rows: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) commits: AtomicU64,
    pub(super) last_commit_ms: AtomicU64,
    pub(super) held_acks: AtomicU64,
    pub(super) acked: AtomicU64,
    pub(super) compactions: AtomicU64,
    pub(super) cells_compacted: AtomicU64,
    pub(super) cells_vacuumed: AtomicU64,
    /// flushes whose acks were held back (WAL cap or the colony's critical band)
    pub(super) ack_pauses: AtomicU64,
    /// durations of the latest commits (cell write + Delta commit), ms
    pub(super) commit_ms: Mutex<VecDeque<u32>>,
}

/// Commit durations kept for the percentiles in the status.
pub(super) const COMMIT_SAMPLES: usize = 1000;

/// How often at most the status file is rewritten.
const STATUS_FILE_PERIOD: Duration = Duration::from_secs(5);

/// What `apiary ingest status` shows (also written to `<state_dir>/ingest-status.json`).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct IngestStatus {
    pub broker: String,
    pub routes: Vec<String>,
    pub received: u64,
    pub committed_rows: u64,
    pub rejected: u64,
    pub duplicates: u64,
    /// messages no route takes (acked and dropped, as by a broker without subscribers)
    #[serde(default)]
    pub unrouted: u64,
    pub commits: u64,
    pub wal_records: u64,
    pub backlog_bytes: u64,
    pub held_acks: u64,
    /// messages acked to the broker (after their WAL write was durable)
    pub acked: u64,
    /// times acks were held back by backpressure
    pub ack_pauses: u64,
    pub last_commit_ms: u64,
    /// duration of a commit (cell write + Delta commit) over the latest 1000, ms
    pub commit_ms_p50: u32,
    pub commit_ms_p99: u32,
    /// compactions this node ran (holding the swarm's lease), cells they merged away, and
    /// cells vacuum deleted
    pub compactions: u64,
    pub cells_compacted: u64,
    pub cells_vacuumed: u64,
    pub messages_per_sec: f64,
    pub updated_ms: u64,
}

impl Inner {
    /// Every second the rate; every few seconds, and only when a figure moved, the file (the
    /// SD card should not be rewritten every second by a node that idles for months).
    pub(super) async fn status_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut last = (Instant::now(), 0u64);
        let mut written = (Instant::now(), self.status_without_time());
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let received = self.stats.received.load(Ordering::Relaxed);
            let rate = (received - last.1) as f64 / last.0.elapsed().as_secs_f64();
            last = (Instant::now(), received);
            self.rate_ppm
                .store((rate * 1000.0) as u64, Ordering::Relaxed);
            if written.0.elapsed() >= STATUS_FILE_PERIOD {
                let now = self.status_without_time();
                if now != written.1 {
                    self.write_status();
                    written = (Instant::now(), now);
                }
            }
        }
    }

    fn status_without_time(&self) -> IngestStatus {
        IngestStatus {
            updated_ms: 0,
            ..self.status()
        }
    }

    pub(super) fn status(&self) -> IngestStatus {
        let s = &self.stats;
        let backlog = self.state.lock().expect("ingest lock").backlog_bytes;
        IngestStatus {
            broker: self.broker_desc.clone(),
            routes: self
                .routes
                .iter()
                .map(|r| {
                    format!(
                        "{} -> {}",
                        r.filter,
                        r.frame
                            .as_ref()
                            .map(|f| f.to_string())
                            .unwrap_or_else(|| "<hive>.<box>.<frame> from the topic".into())
                    )
                })
                .collect(),
            received: s.received.load(Ordering::Relaxed),
            committed_rows: s.committed_rows.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
            duplicates: s.duplicates.load(Ordering::Relaxed),
            unrouted: s.unrouted.load(Ordering::Relaxed),
            commits: s.commits.load(Ordering::Relaxed),
            wal_records: self.wal.len() as u64,
            backlog_bytes: backlog as u64,
            held_acks: s.held_acks.load(Ordering::Relaxed),
            acked: s.acked.load(Ordering::Relaxed),
            ack_pauses: s.ack_pauses.load(Ordering::Relaxed),
            last_commit_ms: s.last_commit_ms.load(Ordering::Relaxed),
            commit_ms_p50: percentile(&s.commit_ms, 0.50),
            commit_ms_p99: percentile(&s.commit_ms, 0.99),
            compactions: s.compactions.load(Ordering::Relaxed),
            cells_compacted: s.cells_compacted.load(Ordering::Relaxed),
            cells_vacuumed: s.cells_vacuumed.load(Ordering::Relaxed),
            messages_per_sec: self.rate_ppm.load(Ordering::Relaxed) as f64 / 1000.0,
            updated_ms: now_ms() as u64,
        }
    }

    pub(super) fn write_status(&self) {
        let status = self.status();
        let tmp = self.status_path.with_extension("json.tmp");
        if let Ok(body) = serde_json::to_vec_pretty(&status)
            && std::fs::write(&tmp, body).is_ok()
        {
            let _ = std::fs::rename(&tmp, &self.status_path);
        }
    }
}

fn percentile(samples: &Mutex<VecDeque<u32>>, q: f64) -> u32 {
    let mut v: Vec<u32> = samples
        .lock()
        .expect("ingest stats")
        .iter()
        .copied()
        .collect();
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Asked for ingestion figures where ingestion does not run.
pub fn not_running() -> Error {
    Error::not_found("ingestion is not running on this node (ingest.enabled = false)")
}

/// Read the status a running node wrote to its state dir.
pub fn read_status(state_dir: &std::path::Path) -> Result<IngestStatus> {
    let path = state_dir.join("ingest-status.json");
    let body = std::fs::read(&path).map_err(|_| {
        Error::not_found(format!(
            "no ingest status at {}: is `apiary node` running with this state dir?",
            path.display()
        ))
    })?;
    Ok(serde_json::from_slice(&body)?)
}
