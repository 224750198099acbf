//! MQTT to frames, durably and exactly once.
//!
//! message → write-ahead log (group commit) → PUBACK (in receive order) → per-frame buffer →
//! Parquet cell, committed with a Delta `txn` (app id = node + route, version = the last WAL
//! sequence in the cell) → WAL trimmed. After a crash the WAL is replayed and what the
//! frame's `txn` version says is committed is skipped. A message the broker redelivers
//! because our ack was lost (DUP flag) is recognised by its packet id and bytes, and acked
//! without being stored twice. Bad payloads go to `<frame>_rejects` with the reason.

mod broker;
pub mod payload;
pub mod route;
pub mod wal;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use self::payload::Row;
use self::route::Route;
use self::wal::{Record, Wal};
use crate::bees::BeePool;
use crate::config::{IngestConfig, MqttConfig, PayloadFormat};
use crate::error::{Error, ErrorKind, Result};
use crate::frames::{Column, FrameDef, Frames, Txn, WriteCtx};

/// Where messages go whose topic names no valid frame.
const UNROUTABLE: (&str, &str, &str) = ("apiary", "ingest", "unroutable");
/// Committed WAL entries kept for recognising redeliveries (more than any ack window).
const DEDUPE_TAIL: u64 = 65_536;

/// hive, box, frame
type FrameName = (String, String, String);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    route: u32,
    frame: FrameName,
}

struct Buffer {
    records: Vec<Record>,
    bytes: usize,
    since: Instant,
}

#[derive(Default)]
struct State {
    buffers: BTreeMap<Key, Buffer>,
    /// Committed sequences not yet trimmed (kept for redelivery checks).
    committed: VecDeque<u64>,
    last_seq: u64,
    /// content hash (topic + payload) → (sequence, connection) of recent messages, and the
    /// order they came in (to forget the oldest)
    recent: HashMap<u64, (u64, u64)>,
    recent_order: VecDeque<(u64, u64)>,
    /// txn versions we know per (frame, rejects?, route)
    versions: HashMap<(FrameName, bool, u32), i64>,
    /// bytes received and not yet committed
    backlog_bytes: usize,
}

#[derive(Default)]
struct Stats {
    received: AtomicU64,
    duplicates: AtomicU64,
    committed_rows: AtomicU64,
    rejected: AtomicU64,
    commits: AtomicU64,
    last_commit_ms: AtomicU64,
    held_acks: AtomicU64,
    acked: AtomicU64,
    compactions: AtomicU64,
    cells_compacted: AtomicU64,
    cells_vacuumed: AtomicU64,
    /// flushes whose acks were held back (WAL cap or the colony's critical band)
    ack_pauses: AtomicU64,
    /// durations of the latest commits (cell write + Delta commit), ms
    commit_ms: Mutex<VecDeque<u32>>,
}

/// Messages turned from JSON rows into Arrow at a time when committing.
const DECODE_CHUNK: usize = 8192;

/// Commit durations kept for the percentiles in the status.
const COMMIT_SAMPLES: usize = 1000;

/// What `apiary ingest status` shows (also written to `<state_dir>/ingest-status.json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct IngestStatus {
    pub broker: String,
    pub routes: Vec<String>,
    pub received: u64,
    pub committed_rows: u64,
    pub rejected: u64,
    pub duplicates: u64,
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

    /// Stop taking messages, commit everything buffered, write the status file.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.inner.commit_due(true).await;
        self.inner.write_status();
    }
}

/// (host, port, TLS?) of a broker URL.
fn parse_mqtt_url(url: &str) -> Result<(String, u16, bool)> {
    let bad = |why: &str| {
        Error::invalid(format!(
            "bad mqtt.url {url:?}: {why}; write mqtt://host:port or mqtts://host:port"
        ))
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let tls = match scheme {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        _ => return Err(bad("unknown scheme")),
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad("bad port"))?),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((host.to_string(), port, tls))
}

/// TLS to the broker: its certificate must chain to `ca_file` (or the system's roots).
fn tls_transport(mqtt: &MqttConfig) -> Result<rumqttc::Transport> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match &mqtt.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| Error::invalid(format!("mqtt.ca_file {}: {e}", path.display())))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert
                    .map_err(|e| Error::invalid(format!("mqtt.ca_file {}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| Error::invalid(format!("mqtt.ca_file {}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(Error::invalid(format!(
                    "mqtt.ca_file {}: no PEM certificate in it",
                    path.display()
                )));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("TLS set-up: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
        Arc::new(config),
    )))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Inner {
    fn app_id(&self, route: u32) -> String {
        let name = self
            .routes
            .get(route as usize)
            .map(|r| r.name.as_str())
            .unwrap_or("gone");
        format!("{}:{name}", self.app_prefix)
    }

    fn key_for(&self, rec: &Record) -> Key {
        let frame = self
            .routes
            .get(rec.route as usize)
            .and_then(|r| r.frame_for(&rec.topic).ok())
            .unwrap_or_else(|| {
                (
                    UNROUTABLE.0.into(),
                    UNROUTABLE.1.into(),
                    UNROUTABLE.2.into(),
                )
            });
        Key {
            route: rec.route,
            frame,
        }
    }

    fn route_for(&self, topic: &str) -> Option<u32> {
        self.routes
            .iter()
            .position(|r| route::matches(&r.filter, topic))
            .map(|i| i as u32)
    }

    /// Put WAL records back into buffers, except what the frames say is committed.
    async fn replay(&self) -> Result<()> {
        let records = self.wal.records()?;
        if records.is_empty() {
            return Ok(());
        }
        let n = records.len();
        let mut skipped = 0;
        for rec in records {
            let key = self.key_for(&rec);
            let main = self.version(&key.frame, false, key.route).await?;
            let mut st = self.state.lock().expect("ingest lock");
            st.last_seq = st.last_seq.max(rec.seq);
            remember(&mut st, &rec, 0);
            // Its rows are in (and its rejects, committed before them, too). Anything else
            // goes back to a buffer, and commit() skips what either frame already has.
            if (rec.seq as i64) <= main {
                st.committed.push_back(rec.seq);
                skipped += 1;
            } else {
                push(&mut st, key, rec);
            }
        }
        tracing::info!(
            records = n,
            already_committed = skipped,
            "replayed the write-ahead log"
        );
        Ok(())
    }

    /// The txn version committed for this route into `frame` (cached; -1 for none).
    async fn version(&self, frame: &FrameName, rejects: bool, route: u32) -> Result<i64> {
        let k = (frame.clone(), rejects, route);
        if let Some(v) = self.state.lock().expect("ingest lock").versions.get(&k) {
            return Ok(*v);
        }
        let (h, b, f) = frame;
        let v = match self.frames.txn_version(h, b, f, &self.app_id(route)).await {
            Ok(v) => v.unwrap_or(-1),
            Err(e) if e.kind == ErrorKind::NotFound => -1,
            Err(e) => return Err(e),
        };
        self.state
            .lock()
            .expect("ingest lock")
            .versions
            .insert(k, v);
        Ok(v)
    }

    fn acks_allowed(&self) -> bool {
        let backlog = self.state.lock().expect("ingest lock").backlog_bytes;
        let cap = self.config.wal_max.0.max(1) as usize;
        self.pool
            .colony()
            .set_ingest_backlog(backlog as f64 / cap as f64);
        backlog < cap && self.pool.acks_ingest()
    }

    /// Is this a message we already have, sent again because our ack was lost? Brokers
    /// flag such resends as DUP on a later connection, but may give them new packet ids
    /// (mosquitto does), so: a DUP message whose topic and bytes match one received on an
    /// earlier connection.
    fn is_redelivery(&self, p: &Publish, connection: u64, unflushed: &[Record]) -> bool {
        if !p.dup {
            return false;
        }
        let seen = self
            .state
            .lock()
            .expect("ingest lock")
            .recent
            .get(&content_hash(&p.topic, &p.payload))
            .copied();
        let Some((seq, seen_on)) = seen else {
            return false;
        };
        if seen_on >= connection {
            return false;
        }
        let same = |r: &Record| r.seq == seq && r.topic == p.topic && r.payload == p.payload;
        unflushed.iter().any(same)
            || matches!(self.wal.get(seq), Ok(Some(r)) if same(&r))
            || self.buffered(seq, p)
    }

    fn buffered(&self, seq: u64, p: &Publish) -> bool {
        let st = self.state.lock().expect("ingest lock");
        st.buffers
            .values()
            .flat_map(|b| b.records.iter())
            .any(|r| r.seq == seq && r.topic == p.topic && r.payload == p.payload)
    }

    /// Drive the MQTT connection in its own task (so no event is lost to a cancelled poll)
    /// and hand publishes over a channel.
    fn drive(
        client: AsyncClient,
        mut events: EventLoop,
        filters: Vec<String>,
        tx: mpsc::Sender<(u64, Publish)>,
        subscribed: watch::Sender<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            // Connections are numbered from 1; what the WAL held at start counts as 0.
            let mut connection = 0u64;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed.send(true);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send((connection, p)).await.is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        connection += 1;
                        tracing::info!(
                            session_present = ack.session_present,
                            "connected to the MQTT broker"
                        );
                        // A persistent session keeps subscriptions; subscribing again is harmless.
                        for f in &filters {
                            if let Err(e) = client.subscribe(f.clone(), QoS::AtLeastOnce).await {
                                tracing::warn!(filter = %f, error = %e, "subscribe failed");
                            }
                        }
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => {
                        if tx.is_closed() {
                            return;
                        }
                        tracing::warn!(error = %e, "MQTT connection lost; reconnecting");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        })
    }

    fn record(&self, p: &Publish) -> Option<Record> {
        let route = self.route_for(&p.topic)?;
        let seq = match self.wal.next_seq() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "write-ahead log failed");
                return None;
            }
        };
        Some(Record {
            seq,
            route,
            received_ms: now_ms(),
            pkid: p.pkid,
            topic: p.topic.clone(),
            payload: p.payload.clone(),
        })
    }

    async fn receive(
        self: Arc<Self>,
        client: AsyncClient,
        events: EventLoop,
        filters: Vec<String>,
        mut stop: watch::Receiver<bool>,
        subscribed: watch::Sender<bool>,
    ) {
        let (tx, mut rx) = mpsc::channel::<(u64, Publish)>(self.config.flush_messages.max(1) * 4);
        let driver = Self::drive(client.clone(), events, filters, tx, subscribed);
        let mut pending: Vec<Publish> = Vec::new();
        let mut records: Vec<Record> = Vec::new();
        let mut held: Vec<Publish> = Vec::new();
        let mut tick = tokio::time::interval(self.config.flush_interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => {
                    self.flush(&client, &mut pending, &mut records, &mut held).await;
                }
                p = rx.recv() => {
                    let Some((connection, p)) = p else { break };
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    if self.is_redelivery(&p, connection, &records) {
                        self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    } else if let Some(rec) = self.record(&p) {
                        remember(&mut self.state.lock().expect("ingest lock"), &rec, connection);
                        records.push(rec);
                    }
                    // Unroutable messages are acked too: no route wants them.
                    pending.push(p);
                    if pending.len() >= self.config.flush_messages {
                        self.flush(&client, &mut pending, &mut records, &mut held).await;
                    }
                }
            }
        }
        // Store what already arrived, ack it, then leave cleanly.
        while let Ok((_, p)) = rx.try_recv() {
            if let Some(rec) = self.record(&p) {
                records.push(rec);
            }
            pending.push(p);
        }
        self.flush(&client, &mut pending, &mut records, &mut held)
            .await;
        drop(rx);
        let _ = client.disconnect().await;
        if tokio::time::timeout(Duration::from_secs(2), driver)
            .await
            .is_err()
        {
            tracing::warn!("MQTT connection did not close in time");
        }
    }

    /// Group commit: write and flush the WAL, then ack in receive order (unless the node is
    /// critical or the backlog is over its cap: then the acks wait and the broker holds).
    async fn flush(
        &self,
        client: &AsyncClient,
        pending: &mut Vec<Publish>,
        records: &mut Vec<Record>,
        held: &mut Vec<Publish>,
    ) {
        if !records.is_empty() {
            let durable = match self.wal.write(records) {
                Ok(()) => self.wal.flush().await,
                Err(e) => Err(e),
            };
            if let Err(e) = durable {
                // Not durable: do not ack; the broker will send these again.
                tracing::error!(error = %e, "write-ahead log failed; messages left with the broker");
                records.clear();
                pending.clear();
                return;
            }
            let mut st = self.state.lock().expect("ingest lock");
            for rec in records.drain(..) {
                st.last_seq = st.last_seq.max(rec.seq);
                let key = self.key_for(&rec);
                push(&mut st, key, rec);
            }
        }
        held.append(pending);
        if held.is_empty() {
            return;
        }
        if !self.acks_allowed() {
            self.stats
                .held_acks
                .store(held.len() as u64, Ordering::Relaxed);
            self.stats.ack_pauses.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Never wait on the connection here: it may be waiting for us to take publishes
        // (a full request channel keeps the rest for the next tick).
        let mut sent = 0;
        for p in held.iter() {
            if client.try_ack(p).is_err() {
                break;
            }
            sent += 1;
        }
        held.drain(..sent);
        self.stats.acked.fetch_add(sent as u64, Ordering::Relaxed);
        self.stats
            .held_acks
            .store(held.len() as u64, Ordering::Relaxed);
    }

    /// Small-cell upkeep: whoever holds the swarm's compaction lease merges the small cells
    /// of the frames this node ingests into, then deletes cells past the retention.
    async fn upkeep_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let every = self.config.compact_interval.0;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let meadow = self.frames.meadow();
            let ttl = (every * 3).max(Duration::from_secs(60));
            match crate::meadow::lease::acquire(meadow, "compaction", &self.node_id, ttl).await {
                Ok(true) => self.upkeep().await,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the compaction lease"),
            }
        }
    }

    async fn upkeep(&self) {
        let frames: BTreeSet<FrameName> = self
            .state
            .lock()
            .expect("ingest lock")
            .versions
            .keys()
            // Keys name the frame itself: the rejects frame for rejects markers.
            .map(|(f, _, _)| f.clone())
            .collect();
        for (h, b, f) in frames {
            let name = format!("{h}.{b}.{f}");
            let compacted = self
                .pool
                .run(&format!("compact {name}"), async |chamber| {
                    let session = crate::frames::write_session(chamber.runtime_env());
                    self.frames.compact(&h, &b, &f, session).await
                })
                .await;
            match compacted {
                Ok((removed, added)) if removed > 0 => {
                    self.stats.compactions.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .cells_compacted
                        .fetch_add(removed, Ordering::Relaxed);
                    tracing::info!(frame = %name, removed, added, "merged small cells");
                }
                Ok(_) => {}
                Err(e) if e.kind == ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!(frame = %name, error = %e, "compaction failed; next round retries")
                }
            }
            match self
                .frames
                .vacuum(&h, &b, &f, self.config.vacuum_retention.0)
                .await
            {
                Ok(n) => {
                    self.stats
                        .cells_vacuumed
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(frame = %name, error = %e, "vacuum failed; next round retries")
                }
            }
        }
    }

    async fn commit_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let period = (self.config.max_latency.0 / 10)
            .clamp(Duration::from_millis(20), Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(period) => self.commit_due(false).await,
            }
        }
    }

    /// Commit the buffers that are big or old enough (all of them when `all`).
    async fn commit_due(&self, all: bool) {
        let due: Vec<(Key, Vec<Record>)> = {
            let mut st = self.state.lock().expect("ingest lock");
            let keys: Vec<Key> = st
                .buffers
                .iter()
                .filter(|(_, b)| {
                    all || b.bytes >= self.cell_target
                        || b.since.elapsed() >= self.config.max_latency.0
                })
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| st.buffers.remove(&k).map(|b| (k, b.records)))
                .collect()
        };
        for (key, records) in due {
            let bytes: usize = records.iter().map(Record::size).sum();
            let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
            let started = Instant::now();
            match self.commit(&key, &records).await {
                Ok(()) => {
                    {
                        let mut c = self.stats.commit_ms.lock().expect("ingest stats");
                        c.push_back(started.elapsed().as_millis() as u32);
                        if c.len() > COMMIT_SAMPLES {
                            c.pop_front();
                        }
                    }
                    let mut st = self.state.lock().expect("ingest lock");
                    st.backlog_bytes = st.backlog_bytes.saturating_sub(bytes);
                    st.committed.extend(seqs);
                    // Keep the newest DEDUPE_TAIL committed records (by count: sequence
                    // numbers jump after a crash, sled reserves id ranges).
                    let mut trim = Vec::new();
                    while st.committed.len() as u64 > DEDUPE_TAIL {
                        trim.push(st.committed.pop_front().expect("front exists"));
                    }
                    drop(st);
                    if let Err(e) = self.wal.remove(trim) {
                        tracing::warn!(error = %e, "trimming the write-ahead log failed");
                    }
                }
                Err(e) => {
                    // The commit may have landed before the error (say, a failed checkpoint):
                    // forget the cached markers so the retry re-reads what is committed.
                    {
                        let mut st = self.state.lock().expect("ingest lock");
                        st.versions.retain(|(f, _, r), _| {
                            !(*r == key.route && (f == &key.frame || f == &rejects_of(&key.frame)))
                        });
                    }
                    tracing::warn!(frame = %format!("{}.{}.{}", key.frame.0, key.frame.1, key.frame.2), error = %e, "ingest commit failed; will retry");
                    let mut st = self.state.lock().expect("ingest lock");
                    let buf = st.buffers.entry(key).or_insert_with(|| Buffer {
                        records: Vec::new(),
                        bytes: 0,
                        since: Instant::now(),
                    });
                    let mut back = records;
                    back.append(&mut buf.records);
                    buf.records = back;
                    buf.bytes += bytes;
                }
            }
        }
    }

    /// Commit one buffer: rejects first, then the rows, each with its exactly-once marker.
    async fn commit(&self, key: &Key, records: &[Record]) -> Result<()> {
        let Some(last) = records.iter().map(|r| r.seq).max() else {
            return Ok(());
        };
        let route = &self.routes[key.route as usize];
        let main_v = self.version(&key.frame, false, key.route).await?;
        let rej_frame = rejects_of(&key.frame);
        let rej_v = self.version(&rej_frame, true, key.route).await?;
        let (h, b, f) = &key.frame;

        let mut rejects: Vec<(&Record, String)> = Vec::new();
        let unroutable = (h.as_str(), b.as_str(), f.as_str()) == UNROUTABLE;
        let def = if unroutable {
            None
        } else {
            match self.frame_def(route, &key.frame, records).await {
                Ok(d) => Some(d),
                Err(e) => {
                    for r in records {
                        rejects.push((r, format!("frame {h}.{b}.{f} unavailable: {e}")));
                    }
                    None
                }
            }
        };
        let mut batch: Option<Vec<RecordBatch>> = None;
        if let Some(def) = &def {
            let schema = crate::frames::arrow_schema(def)?;
            let csv_cols: Vec<String> = def
                .columns
                .iter()
                .map(|c| c.name.clone())
                .filter(|c| {
                    !route.columns.contains_key(c) && route.received_at.as_deref() != Some(c)
                })
                .collect();
            // JSON rows are bulky (a map per row): turn them into Arrow a chunk at a time.
            let mut batches = Vec::new();
            for (c, chunk) in records.chunks(DECODE_CHUNK).enumerate() {
                let mut rows: Vec<(usize, Row)> = Vec::new();
                for (j, r) in chunk.iter().enumerate() {
                    if r.seq as i64 <= main_v {
                        continue;
                    }
                    let i = c * DECODE_CHUNK + j;
                    match payload::rows(route, r, self.config.max_payload.0 as usize, &csv_cols) {
                        Ok(rs) => rows.extend(rs.into_iter().map(|mut row| {
                            row.retain(|k, _| schema.index_of(k).is_ok());
                            (i, row)
                        })),
                        Err(e) => rejects.push((r, e)),
                    }
                }
                let (b, bad) = payload::decode_each(&schema, &def.partition_by, &rows);
                batches.extend(b);
                for (i, e) in bad {
                    rejects.push((&records[i], e));
                }
            }
            batch = Some(batches);
        } else if unroutable {
            for r in records {
                let why = route
                    .frame_for(&r.topic)
                    .err()
                    .map(|e| e.message)
                    .unwrap_or_default();
                rejects.push((r, why));
            }
        }
        rejects.retain(|(r, _)| r.seq as i64 > rej_v);
        rejects.sort_by_key(|(r, _)| r.seq);
        rejects.dedup_by_key(|(r, _)| r.seq);

        if !rejects.is_empty() {
            self.ensure_rejects_frame(&rej_frame).await?;
            let rb = payload::rejects_batch(&rejects);
            self.append(&rej_frame, vec![rb], key.route, last).await?;
            self.state
                .lock()
                .expect("ingest lock")
                .versions
                .insert((rej_frame.clone(), true, key.route), last as i64);
            self.stats
                .rejected
                .fetch_add(rejects.len() as u64, Ordering::Relaxed);
        }
        if let Some(batch) = batch
            && batch.iter().any(|b| b.num_rows() > 0)
        {
            let rows = batch.iter().map(|b| b.num_rows() as u64).sum();
            self.append(&key.frame, batch, key.route, last).await?;
            self.state
                .lock()
                .expect("ingest lock")
                .versions
                .insert((key.frame.clone(), false, key.route), last as i64);
            self.stats.committed_rows.fetch_add(rows, Ordering::Relaxed);
        }
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .last_commit_ms
            .store(now_ms() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn append(
        &self,
        frame: &FrameName,
        batches: Vec<RecordBatch>,
        route: u32,
        version: u64,
    ) -> Result<()> {
        let (h, b, f) = frame;
        let app_id = self.app_id(route);
        self.pool
            .run(&format!("ingest {h}.{b}.{f}"), async |chamber| {
                let ctx = WriteCtx {
                    txn: Some(Txn {
                        app_id,
                        version: version as i64,
                    }),
                    session: Some(crate::frames::write_session(chamber.runtime_env())),
                };
                self.frames.append(h, b, f, batches, ctx).await
            })
            .await
            .map(|_| ())
    }

    /// The frame's definition, creating it (and its hive and box) from the messages when
    /// it does not exist and auto-create is on.
    async fn frame_def(
        &self,
        route: &Route,
        frame: &FrameName,
        records: &[Record],
    ) -> Result<FrameDef> {
        let (h, b, f) = frame;
        let reg = self.frames.registry();
        match reg.frame(h, b, f).await {
            Ok(d) => return Ok(d),
            Err(e) if e.kind == ErrorKind::NotFound && self.config.auto_create => {}
            Err(e) => return Err(e),
        }
        let sample: Vec<Row> = records
            .iter()
            .take(1000)
            .filter_map(|r| payload::rows(route, r, self.config.max_payload.0 as usize, &[]).ok())
            .flatten()
            .collect();
        if sample.is_empty() || route.format == PayloadFormat::Csv {
            return Err(Error::not_found(format!(
                "frame not found: {h}.{b}.{f} (and no JSON message to infer its columns from)"
            )));
        }
        let cols = payload::infer_columns(route, &sample).map_err(Error::invalid)?;
        let columns = cols
            .into_iter()
            .map(|(name, t)| Column {
                name,
                type_name: t.to_string(),
            })
            .collect();
        reg.create_hive(h).await?;
        reg.create_box(h, b).await?;
        let def = FrameDef::new(h, b, f, columns, vec![])?;
        match self.frames.create_frame(&def).await {
            Ok(_) => {
                tracing::info!(frame = %def.full_name(), "created frame from incoming messages");
                Ok(def)
            }
            // Another node made it first (perhaps with other columns): use theirs.
            Err(e) if e.kind == ErrorKind::AlreadyExists => reg.frame(h, b, f).await,
            Err(e) => Err(e),
        }
    }

    async fn ensure_rejects_frame(&self, frame: &FrameName) -> Result<()> {
        let (h, b, f) = frame;
        let reg = self.frames.registry();
        reg.create_hive(h).await?;
        reg.create_box(h, b).await?;
        let columns = payload::rejects_columns()
            .into_iter()
            .map(|(n, t)| Column {
                name: n.into(),
                type_name: t.into(),
            })
            .collect();
        let def = FrameDef::new(h, b, f, columns, vec![])?;
        match self.frames.create_frame(&def).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind == ErrorKind::AlreadyExists => {
                Err(e.context("the rejects frame has other columns"))
            }
            Err(e) => Err(e),
        }
    }

    async fn status_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut last = (Instant::now(), 0u64);
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
            self.write_status();
        }
    }

    fn status(&self) -> IngestStatus {
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
                            .map(|(h, b, f)| format!("{h}.{b}.{f}"))
                            .unwrap_or_else(|| "<hive>.<box>.<frame> from the topic".into())
                    )
                })
                .collect(),
            received: s.received.load(Ordering::Relaxed),
            committed_rows: s.committed_rows.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
            duplicates: s.duplicates.load(Ordering::Relaxed),
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

    fn write_status(&self) {
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

fn content_hash(topic: &str, payload: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut h);
    payload.hash(&mut h);
    h.finish()
}

/// Note a message for redelivery checks, forgetting the oldest past the window.
fn remember(st: &mut State, rec: &Record, connection: u64) {
    let h = content_hash(&rec.topic, &rec.payload);
    st.recent.insert(h, (rec.seq, connection));
    st.recent_order.push_back((h, rec.seq));
    while st.recent_order.len() as u64 > DEDUPE_TAIL {
        let (old, seq) = st.recent_order.pop_front().expect("not empty");
        if st.recent.get(&old).is_some_and(|(s, _)| *s == seq) {
            st.recent.remove(&old);
        }
    }
}

fn push(st: &mut State, key: Key, rec: Record) {
    st.backlog_bytes += rec.size();
    let buf = st.buffers.entry(key).or_insert_with(|| Buffer {
        records: Vec::new(),
        bytes: 0,
        since: Instant::now(),
    });
    buf.bytes += rec.size();
    buf.records.push(rec);
}

fn rejects_of(frame: &FrameName) -> FrameName {
    if (frame.0.as_str(), frame.1.as_str(), frame.2.as_str()) == UNROUTABLE {
        return frame.clone();
    }
    (
        frame.0.clone(),
        frame.1.clone(),
        format!("{}_rejects", frame.2),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls() {
        assert_eq!(
            parse_mqtt_url("mqtt://10.0.0.2:1884").unwrap(),
            ("10.0.0.2".into(), 1884, false)
        );
        assert_eq!(
            parse_mqtt_url("mqtt://broker").unwrap(),
            ("broker".into(), 1883, false)
        );
        assert_eq!(
            parse_mqtt_url("mqtts://b").unwrap(),
            ("b".into(), 8883, true)
        );
        assert!(parse_mqtt_url("http://b").is_err());
        assert!(parse_mqtt_url("mqtt://b:port").is_err());
        assert!(parse_mqtt_url("broker:1883").is_err());
    }

    #[test]
    fn bad_ca_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let mqtt = |ca: &std::path::Path| MqttConfig {
            ca_file: Some(ca.to_path_buf()),
            ..MqttConfig::default()
        };
        let e = tls_transport(&mqtt(&empty)).err().unwrap();
        assert!(e.message.contains("no PEM certificate"), "{e}");
        let e = tls_transport(&mqtt(&dir.path().join("missing.pem")))
            .err()
            .unwrap();
        assert!(e.message.contains("mqtt.ca_file"), "{e}");
        assert!(
            tls_transport(&MqttConfig::default()).is_ok(),
            "system roots"
        );
    }
}
