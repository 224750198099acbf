//! MQTT to frames, durably and exactly once.
//!
//! message → write-ahead log (group commit) → PUBACK (in receive order) → per-frame buffer →
//! Parquet cell, committed with a Delta `txn` (app id = node + route, version = the last WAL
//! sequence in the cell) → WAL trimmed. After a crash the WAL is replayed and what the
//! frame's `txn` version says is committed is skipped. A message sent again because our ack
//! was lost (DUP flag) is recognised (by its publisher's session, packet id and bytes on the
//! embedded listener; by its bytes from an external broker) and acked without being stored
//! twice. Bad payloads go to `<frame>_rejects` with the reason.
//!
//! By job: `listener` (the embedded MQTT front door) or `client` (the connection to an
//! external broker) take messages; `intake` (WAL group commit, acks), `buffer` (the
//! exactly-once bookkeeping, pure), `commit` (buffers to frames), `upkeep` (compaction and
//! vacuum), `status` (figures); this module starts and stops them.

mod buffer;
mod client;
mod commit;
#[doc(hidden)]
pub mod fuzz;
mod intake;
pub(crate) mod listener;
pub(crate) mod payload;
pub(crate) mod route;
mod status;
mod upkeep;
pub(crate) mod wal;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::MqttOptions;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use self::buffer::{Key, State};
use self::client::{BrokerDoor, parse_mqtt_url, tls_transport};
use self::commit::unroutable;
use self::intake::Arrival;
use self::listener::{Listener, ListenerParts};
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
    wal: Arc<Wal>,
    app_prefix: String,
    node_id: String,
    cell_target: usize,
    broker_desc: String,
    /// unanswered messages a publisher may have at once (`mqtt.inflight`)
    receive_max: usize,
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
    door: Door,
    /// the intake first (it answers the door), then the rest
    tasks: Vec<JoinHandle<()>>,
}

/// Where messages come in.
enum Door {
    Listener(Listener),
    Broker(BrokerDoor),
}

impl Door {
    async fn close(self, deadline: tokio::time::Instant) {
        match self {
            Door::Listener(l) => l.close(deadline).await,
            Door::Broker(b) => b.close().await,
        }
    }
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
        for h in &config.default_route_hives {
            crate::names::validate_name("hive", h)
                .map_err(|e| e.context("ingest.default_route_hives"))?;
        }
        if config.default_route {
            routes.push(Route {
                hives: config.default_route_hives.clone(),
                ..Route::default_route()
            });
        }
        if routes.is_empty() {
            return Err(Error::invalid(
                "ingest is enabled but has no routes (ingest.default_route = false and no [[ingest.routes]])",
            ));
        }
        let wal = Arc::new(Wal::open(&state_dir.join("wal"))?);
        let (stop, stop_rx) = watch::channel(false);
        let (tx, rx) = mpsc::channel::<Arrival>(config.flush_messages.max(1) * 4);
        let max_packet = config.max_payload.0 as usize + (64 << 10);
        let (door, broker_desc) = match &mqtt.url {
            Some(url) => {
                let (host, port, tls) = parse_mqtt_url(url)?;
                let desc = format!("{}://{host}:{port}", if tls { "mqtts" } else { "mqtt" });
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
                    .set_max_packet_size(max_packet, 64 << 10);
                if let (Some(u), Some(p)) = (&mqtt.username, &mqtt.password) {
                    options.set_credentials(u, p);
                }
                if tls {
                    options.set_transport(tls_transport(&mqtt)?);
                }
                let filters: Vec<String> = routes
                    .iter()
                    .map(|r| {
                        if config.shared_group.is_empty() {
                            r.filter.clone()
                        } else {
                            format!("$share/{}/{}", config.shared_group, r.filter)
                        }
                    })
                    .collect();
                let (subscribed, mut subscribed_rx) = watch::channel(false);
                let door = BrokerDoor::open(options, filters, tx, subscribed);
                // Ready means subscribed: messages published from now on are ours. A broker
                // that is not up yet is not fatal; the connection keeps retrying.
                let wait =
                    tokio::time::timeout(Duration::from_secs(10), subscribed_rx.wait_for(|s| *s))
                        .await;
                if wait.is_err() {
                    tracing::warn!(broker = %desc, "not subscribed yet: the MQTT broker does not answer; retrying in the background");
                }
                (Door::Broker(door), desc)
            }
            None => {
                let listener = Listener::start(ListenerParts {
                    mqtt: &mqtt,
                    state_dir: &state_dir,
                    max_payload: config.max_payload.0 as usize,
                    intake: tx,
                    wal: wal.clone(),
                    stop: stop_rx.clone(),
                })
                .await?;
                let addrs: Vec<String> = listener.addrs.iter().map(|a| a.to_string()).collect();
                (
                    Door::Listener(listener),
                    format!("embedded at {}", addrs.join(", ")),
                )
            }
        };
        let inner = Arc::new(Inner {
            cell_target: frames.cell_target_bytes() as usize,
            frames,
            pool,
            app_prefix: format!("apiary-ingest:{node_id}"),
            node_id: node_id.clone(),
            routes,
            wal,
            broker_desc,
            receive_max: mqtt.inflight.max(1) as usize,
            status_path: state_dir.join("ingest-status.json"),
            state: Mutex::new(State::default()),
            stats: Stats::default(),
            rate_ppm: AtomicU64::new(0),
            config,
        });
        // What the WAL holds goes back into buffers before any new message is taken (those
        // wait in the channel meanwhile).
        if let Err(e) = inner.replay().await {
            let _ = stop.send(true);
            door.close(tokio::time::Instant::now() + Duration::from_secs(2))
                .await;
            return Err(e);
        }
        let broker = match &door {
            Door::Broker(b) => Some(b.client.clone()),
            Door::Listener(_) => None,
        };
        let tasks = vec![
            tokio::spawn(inner.clone().intake(rx, broker, stop_rx.clone())),
            tokio::spawn(inner.clone().commit_loop(stop_rx.clone())),
            tokio::spawn(inner.clone().upkeep_loop(stop_rx.clone())),
            tokio::spawn(inner.clone().status_loop(stop_rx)),
        ];
        // The status file is there from the start (not only after the first second).
        inner.write_status();
        tracing::info!(broker = %inner.broker_desc, routes = inner.routes.len(), "ingest started");
        Ok(Ingest {
            inner,
            stop,
            door,
            tasks,
        })
    }

    /// Where the embedded listener listens (empty with an external broker).
    pub fn listen_addrs(&self) -> Vec<std::net::SocketAddr> {
        match &self.door {
            Door::Listener(l) => l.addrs.clone(),
            Door::Broker(_) => Vec::new(),
        }
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
        let mut tasks = self.tasks.into_iter();
        // The intake stores and answers what came in; then the door closes (a listener's
        // connections send those answers, a broker gets its acks).
        if let Some(mut intake) = tasks.next()
            && tokio::time::timeout_at(deadline - reserve, &mut intake)
                .await
                .is_err()
        {
            tracing::warn!("the ingest intake did not stop in time; aborting it");
            intake.abort();
        }
        self.door.close(deadline - reserve).await;
        for mut t in tasks {
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

/// An argon2id hash of a password for `[[mqtt.users]] password_hash`.
pub fn hash_password(password: &str) -> Result<String> {
    listener::auth::hash_password(password)
}

/// What a publisher from the network logs in with when no `[[mqtt.users]]` are configured.
pub struct DeviceCredentials {
    pub user: String,
    pub password: String,
    /// The MQTT TLS certificate's fingerprint (with `mqtt.tls_listen` and no configured
    /// certificate).
    pub tls_sha256: Option<String>,
}

/// The device credential and certificate fingerprint, made in the state dir if missing
/// (the Pi image copies them to the boot partition).
pub fn device_credentials(config: &crate::config::Config) -> Result<DeviceCredentials> {
    let state_dir = &config.node.state_dir;
    let password = listener::auth::device_password(state_dir)?;
    let mqtt = &config.mqtt;
    let tls_sha256 = if !mqtt.tls_listen.is_empty() && mqtt.tls_cert.is_none() {
        crate::tls::mqtt_self_signed(state_dir)?;
        let fp =
            std::fs::read_to_string(state_dir.join(crate::tls::MQTT_TLS_DIR).join("cert.sha256"))?;
        Some(fp.trim().to_string())
    } else {
        None
    };
    Ok(DeviceCredentials {
        user: listener::auth::DEVICE_USER.to_string(),
        password,
        tls_sha256,
    })
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
