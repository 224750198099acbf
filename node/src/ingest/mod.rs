//! MQTT to frames, durably and exactly once.
//!
//! message → write-ahead log (group commit) → PUBACK (in receive order) → per-frame buffer →
//! Parquet cell, committed with a Delta `txn` (app id = node + route, version = the last WAL
//! sequence in the cell) → WAL trimmed. After a crash the WAL is replayed and what the
//! frame's `txn` version says is committed is skipped. A message the broker redelivers
//! because our ack was lost (DUP flag) is recognised by its bytes and the connection it came
//! on, and acked without being stored twice. Bad payloads go to `<frame>_rejects` with the
//! reason.
//!
//! By job: `client` (the broker connection, WAL group commit, acks), `buffer` (the
//! exactly-once bookkeeping, pure), `commit` (buffers to frames), `upkeep` (compaction and
//! vacuum), `status` (figures); this module starts and stops them.

mod broker;
mod buffer;
mod client;
mod commit;
pub(crate) mod payload;
pub(crate) mod route;
mod status;
mod upkeep;
pub(crate) mod wal;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::buffer::{Key, State};
use self::client::{parse_mqtt_url, tls_transport};
use self::commit::unroutable;
use self::route::Route;
use self::status::Stats;
pub use self::status::{IngestStatus, not_running, read_status};
use self::wal::{Record, Wal};
use crate::bees::BeePool;
use crate::config::{IngestConfig, MqttConfig};
use crate::error::{Error, Result};
use crate::frames::Frames;

struct Inner {
    frames: Frames,
    pool: BeePool,
    config: IngestConfig,
    routes: Vec<Route>,
    wal: Wal,
    app_prefix: String,
    node_id: String,
    cell_target: usize,
    broker_desc: String,
    status_path: PathBuf,
    state: Mutex<State>,
    stats: Stats,
    /// messages per second × 1000, measured by the status loop
    rate_ppm: AtomicU64,
}

/// Running ingestion. Dropping it without [`Ingest::shutdown`] just stops the tasks.
pub struct Ingest {
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Reads a running ingestion's figures. Cheap to clone.
#[derive(Clone)]
pub struct IngestMonitor(Arc<Inner>);

impl IngestMonitor {
    pub fn status(&self) -> IngestStatus {
        self.0.status()
    }
}

/// What ingestion needs from the node.
pub struct IngestParts {
    pub frames: Frames,
    pub pool: BeePool,
    pub node_id: String,
    pub state_dir: PathBuf,
    pub ingest: IngestConfig,
    pub mqtt: MqttConfig,
}

impl Ingest {
    /// Replay the WAL, start the embedded broker when no external one is configured,
    /// connect and subscribe.
    pub async fn start(parts: IngestParts) -> Result<Ingest> {
        let IngestParts {
            frames,
            pool,
            node_id,
            state_dir,
            ingest: config,
            mqtt,
        } = parts;
        let mut routes: Vec<Route> = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| Route::from_config(i, r))
            .collect::<Result<_>>()?;
        if config.default_route {
            routes.push(Route::default_route());
        }
        if routes.is_empty() {
            return Err(Error::invalid(
                "ingest is enabled but has no routes (ingest.default_route = false and no [[ingest.routes]])",
            ));
        }
        let (host, port, external, tls) = match &mqtt.url {
            Some(url) => {
                let (h, p, tls) = parse_mqtt_url(url)?;
                (h, p, true, tls)
            }
            None => {
                let addr = broker::start(&mqtt, config.max_payload.0 as usize)?;
                let host = if addr.ip().is_unspecified() {
                    "127.0.0.1".to_string()
                } else {
                    addr.ip().to_string()
                };
                (host, addr.port(), false, false)
            }
        };
        let transport = if tls {
            Some(tls_transport(&mqtt)?)
        } else {
            None
        };
        let broker_desc = if external {
            format!("{}://{host}:{port}", if tls { "mqtts" } else { "mqtt" })
        } else {
            format!("embedded at {host}:{port}")
        };
        let wal = Wal::open(&state_dir.join("wal"))?;
        let inner = Arc::new(Inner {
            cell_target: frames.cell_target_bytes() as usize,
            frames,
            pool,
            app_prefix: format!("apiary-ingest:{node_id}"),
            node_id: node_id.clone(),
            routes,
            wal,
            broker_desc,
            status_path: state_dir.join("ingest-status.json"),
            state: Mutex::new(State::default()),
            stats: Stats::default(),
            rate_ppm: AtomicU64::new(0),
            config,
        });
        inner.replay().await?;

        let client_id = mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("apiary-{node_id}"));
        let mut options = MqttOptions::new(client_id, host, port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_inflight(mqtt.inflight.max(1))
            .set_max_packet_size(inner.config.max_payload.0 as usize + (64 << 10), 64 << 10);
        if let (Some(u), Some(p)) = (&mqtt.username, &mqtt.password) {
            options.set_credentials(u, p);
        }
        if let Some(t) = transport {
            options.set_transport(t);
        }
        let (client, eventloop) = AsyncClient::new(options, 10_000);
        let filters: Vec<String> = inner
            .routes
            .iter()
            .map(|r| {
                if external && !inner.config.shared_group.is_empty() {
                    format!("$share/{}/{}", inner.config.shared_group, r.filter)
                } else {
                    r.filter.clone()
                }
            })
            .collect();
        let (stop, stop_rx) = watch::channel(false);
        let (subscribed, mut subscribed_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(inner.clone().receive(
                client,
                eventloop,
                filters,
                stop_rx.clone(),
                subscribed,
            )),
            tokio::spawn(inner.clone().commit_loop(stop_rx.clone())),
            tokio::spawn(inner.clone().upkeep_loop(stop_rx.clone())),
            tokio::spawn(inner.clone().status_loop(stop_rx)),
        ];
        // Ready means subscribed: messages published from now on are ours. A broker that is
        // not up yet is not fatal; the connection keeps retrying.
        let wait =
            tokio::time::timeout(Duration::from_secs(10), subscribed_rx.wait_for(|s| *s)).await;
        if wait.is_err() {
            tracing::warn!(broker = %inner.broker_desc, "not subscribed yet: the MQTT broker does not answer; retrying in the background");
        }
        // The status file is there from the start (not only after the first second).
        inner.write_status();
        tracing::info!(broker = %inner.broker_desc, routes = inner.routes.len(), "ingest started");
        Ok(Ingest { inner, stop, tasks })
    }

    pub fn status(&self) -> IngestStatus {
        self.inner.status()
    }

    /// A handle that reads the figures while ingestion runs (for the HTTP API).
    pub fn monitor(&self) -> IngestMonitor {
        IngestMonitor(self.inner.clone())
    }

    /// Stop taking messages, commit everything buffered, write the status file; all by
    /// `deadline`. What is not committed by then stays in the WAL for the next start.
    pub async fn shutdown(self, deadline: tokio::time::Instant) {
        let _ = self.stop.send(true);
        let reserve = deadline.saturating_duration_since(tokio::time::Instant::now()) / 2;
        for mut t in self.tasks {
            if tokio::time::timeout_at(deadline - reserve, &mut t)
                .await
                .is_err()
            {
                tracing::warn!("an ingest loop did not stop in time; aborting it");
                t.abort();
            }
        }
        if tokio::time::timeout_at(deadline, self.inner.commit_due(true))
            .await
            .is_err()
        {
            tracing::warn!(
                "buffered messages not committed by the shutdown deadline; the WAL keeps them for the next start"
            );
        }
        self.inner.write_status();
    }
}

fn now_ms() -> i64 {
    crate::clock::now_ms() as i64
}

impl Inner {
    pub(super) fn app_id(&self, route: u32) -> String {
        let name = self
            .routes
            .get(route as usize)
            .map(|r| r.name.as_str())
            .unwrap_or("gone");
        format!("{}:{name}", self.app_prefix)
    }

    pub(super) fn key_for(&self, rec: &Record) -> Key {
        let frame = self
            .routes
            .get(rec.route as usize)
            .and_then(|r| r.frame_for(&rec.topic).ok())
            .unwrap_or_else(unroutable);
        Key {
            route: rec.route,
            frame,
        }
    }

    pub(super) fn route_for(&self, topic: &str) -> Option<u32> {
        self.routes
            .iter()
            .position(|r| route::matches(&r.filter, topic))
            .map(|i| i as u32)
    }
}
