//! The embedded MQTT listener: the node's own front door for publishers, used when no
//! external broker is configured. It speaks MQTT 3.1.1 and 5 (QoS 0, 1 and 2, clean and
//! persistent sessions, keep-alive, v5 topic aliases) over TCP and TLS, and answers a
//! PUBLISH only once the intake has it in the write-ahead log: PUBACK (QoS 1) and PUBREC
//! (QoS 2) mean stored. It takes publishes only; SUBSCRIBE is refused (subscribers use an
//! external broker).
//!
//! Memory is bounded: at most `mqtt.inflight` unanswered publishes per connection (then the
//! connection is not read, and TCP slows the publisher), `mqtt.inflight_bytes` of messages
//! not yet in the WAL across connections, `mqtt.max_connections` connections, and a packet
//! no larger than the ingest's `max_payload` allows.

pub(crate) mod auth;
pub(crate) mod packet;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use self::auth::{Principal, Users};
use self::packet::{AckReason, Connect, In, Out, Refusal, Version};
use super::intake::{Ack, Arrival, Outcome};
use crate::config::MqttConfig;
use crate::error::{Error, Result};

/// A client must send CONNECT this soon after the TCP (and TLS) handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A reply that cannot be written in this long (a client not reading) ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// v5 topic aliases a client may set per connection.
const ALIAS_MAX: u16 = 32;

/// What the connections share.
struct Door {
    users: Users,
    intake: mpsc::Sender<Arrival>,
    /// bytes of received messages not yet answered by the intake
    budget: Arc<Semaphore>,
    max_packet: usize,
    receive_max: u16,
    connections: Semaphore,
    next_connection: AtomicU64,
    sessions: Mutex<HashMap<String, Session>>,
    wal: Arc<super::wal::Wal>,
    stop: watch::Receiver<bool>,
}

/// A client id's session while the node runs: who holds it, and the QoS 2 packet ids
/// stored but not yet released (PUBREL).
#[derive(Default)]
struct Session {
    owner: Option<(u64, Arc<Notify>)>,
    awaiting_release: HashSet<u16>,
}

/// The running listener.
pub(super) struct Listener {
    pub addrs: Vec<SocketAddr>,
    accept: Vec<JoinHandle<()>>,
    tracker: TaskTracker,
}

/// Where and how the listener listens.
pub(super) struct ListenerParts<'a> {
    pub mqtt: &'a MqttConfig,
    pub state_dir: &'a std::path::Path,
    pub max_payload: usize,
    pub intake: mpsc::Sender<Arrival>,
    pub wal: Arc<super::wal::Wal>,
    pub stop: watch::Receiver<bool>,
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr> {
    value.parse().map_err(|_| {
        Error::invalid(format!(
            "{key} = {value:?}: write host:port, e.g. 127.0.0.1:1883"
        ))
    })
}

impl Listener {
    pub async fn start(parts: ListenerParts<'_>) -> Result<Listener> {
        let mqtt = parts.mqtt;
        let mut binds: Vec<(&str, SocketAddr, bool)> = Vec::new();
        if !mqtt.listen.is_empty() {
            binds.push((
                "mqtt.listen",
                parse_addr("mqtt.listen", &mqtt.listen)?,
                false,
            ));
        }
        if !mqtt.tls_listen.is_empty() {
            binds.push((
                "mqtt.tls_listen",
                parse_addr("mqtt.tls_listen", &mqtt.tls_listen)?,
                true,
            ));
        }
        if binds.is_empty() {
            return Err(Error::invalid(
                "no MQTT listener: set mqtt.listen or mqtt.tls_listen, or mqtt.url for an external broker",
            ));
        }
        let network = binds.iter().any(|(_, a, _)| !a.ip().is_loopback());
        let users = Users::from_config(mqtt, network, parts.state_dir)?;
        let tls = if binds.iter().any(|(_, _, tls)| *tls) {
            Some(crate::tls::mqtt_acceptor(mqtt, parts.state_dir)?)
        } else {
            None
        };
        let max_packet = parts.max_payload + (64 << 10);
        let door = Arc::new(Door {
            users,
            intake: parts.intake,
            budget: Arc::new(Semaphore::new(
                mqtt.inflight_bytes.0.max(max_packet as u64) as usize
            )),
            max_packet,
            receive_max: mqtt.inflight.max(1),
            connections: Semaphore::new(mqtt.max_connections.max(1)),
            next_connection: AtomicU64::new(1),
            sessions: Mutex::new(HashMap::new()),
            wal: parts.wal,
            stop: parts.stop,
        });
        let tracker = TaskTracker::new();
        let mut addrs = Vec::new();
        let mut accept = Vec::new();
        for (key, addr, is_tls) in binds {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                Error::invalid(format!(
                    "cannot listen on {addr} ({key}) for MQTT: {e}; set {key}, or mqtt.url to use a running broker"
                ))
            })?;
            let local = listener.local_addr()?;
            tracing::info!(addr = %local, tls = is_tls, "MQTT listener open");
            addrs.push(local);
            let tls = if is_tls { tls.clone() } else { None };
            accept.push(tokio::spawn(accept_loop(
                listener,
                tls,
                door.clone(),
                tracker.clone(),
            )));
        }
        Ok(Listener {
            addrs,
            accept,
            tracker,
        })
    }

    /// Stop accepting; connections answer what the intake stored, then close (by `deadline`).
    pub async fn close(self, deadline: tokio::time::Instant) {
        for a in &self.accept {
            a.abort();
        }
        self.tracker.close();
        if tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("MQTT connections did not close in time");
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    door: Arc<Door>,
    tracker: TaskTracker,
) {
    let mut stop = door.stop.clone();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stopped(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accepting an MQTT connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let door = door.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            let Ok(_slot) = door.connections.try_acquire() else {
                tracing::warn!(%peer, "MQTT connection refused: mqtt.max_connections reached");
                return;
            };
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => serve(door.clone(), stream, peer).await,
                        _ => tracing::debug!(%peer, "TLS handshake failed"),
                    }
                }
                None => serve(door.clone(), tcp, peer).await,
            }
        });
    }
}

/// A publish waiting for the intake's answer, in receive order.
struct Pending {
    pkid: u16,
    qos: u8,
    answer: oneshot::Receiver<Outcome>,
}

/// Why a connection ended (for the log).
type End = std::result::Result<(), String>;

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(door: Arc<Door>, mut io: S, peer: SocketAddr) {
    let mut rbuf = BytesMut::with_capacity(4096);
    let connect = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        read_connect(&door, &mut io, &mut rbuf),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "MQTT connection refused");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no MQTT CONNECT in time");
            return;
        }
    };
    let version = connect.version;
    let mut wbuf = BytesMut::new();
    let refuse = |refusal: Refusal, wbuf: &mut BytesMut| {
        let _ = packet::write(version, door.connack(false, Some(refusal)), wbuf);
    };
    let principal = match door
        .users
        .check(connect.username.as_deref(), connect.password.as_deref())
        .await
    {
        Ok(p) => p,
        Err(refusal) => {
            tracing::warn!(%peer, user = connect.username.as_deref().unwrap_or("(anonymous)"), ?refusal, "MQTT login refused");
            refuse(refusal, &mut wbuf);
            let _ = write_out(&mut io, &mut wbuf).await;
            return;
        }
    };
    let client_id = if connect.client_id.is_empty() {
        if !connect.clean && version == Version::V4 {
            refuse(Refusal::BadClientId, &mut wbuf);
            let _ = write_out(&mut io, &mut wbuf).await;
            return;
        }
        format!("apiary-anon-{}", uuid::Uuid::new_v4().simple())
    } else {
        connect.client_id.clone()
    };
    let present = match door.wal.open_session(&client_id, connect.clean).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "MQTT session store failed");
            refuse(Refusal::ServerBusy, &mut wbuf);
            let _ = write_out(&mut io, &mut wbuf).await;
            return;
        }
    };
    let number = door.next_connection.fetch_add(1, Ordering::Relaxed);
    let kicked = door.take_session(&client_id, number, connect.clean);
    let _ = packet::write(version, door.connack(present, None), &mut wbuf);
    if write_out(&mut io, &mut wbuf).await.is_err() {
        door.leave_session(&client_id, number, connect.clean);
        return;
    }
    tracing::debug!(%peer, client = %client_id, user = principal.name.as_deref().unwrap_or("(anonymous)"), ?version, "MQTT client connected");
    let mut conn = Connection {
        door: door.clone(),
        version,
        number,
        session: Arc::from(client_id.as_str()),
        principal,
        keep_alive: connect.keep_alive,
        aliases: HashMap::new(),
        pending: VecDeque::new(),
        wbuf,
        last_topic: Arc::from(""),
    };
    let end = conn.run(&mut io, &mut rbuf, &kicked).await;
    let _ = write_out(&mut io, &mut conn.wbuf).await;
    let _ = io.shutdown().await;
    door.leave_session(&client_id, number, connect.clean);
    match end {
        Ok(()) => tracing::debug!(%peer, client = %client_id, "MQTT client left"),
        Err(why) => {
            tracing::info!(%peer, client = %client_id, reason = %why, "MQTT connection closed")
        }
    }
}

async fn read_connect<S: AsyncRead + Unpin>(
    door: &Door,
    io: &mut S,
    rbuf: &mut BytesMut,
) -> Result<Connect> {
    let version = loop {
        if let Some(v) = packet::connect_version(rbuf)? {
            break v;
        }
        if io.read_buf(rbuf).await? == 0 {
            return Err(Error::invalid("closed before CONNECT"));
        }
    };
    loop {
        if let Some(c) = packet::read_connect(version, rbuf, door.max_packet)? {
            return Ok(c);
        }
        if io.read_buf(rbuf).await? == 0 {
            return Err(Error::invalid("closed during CONNECT"));
        }
    }
}

async fn write_out<S: AsyncWrite + Unpin>(io: &mut S, wbuf: &mut BytesMut) -> std::io::Result<()> {
    if wbuf.is_empty() {
        return Ok(());
    }
    let written = tokio::time::timeout(WRITE_TIMEOUT, async {
        io.write_all(wbuf).await?;
        io.flush().await
    })
    .await;
    wbuf.clear();
    match written {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client does not read its replies",
        )),
    }
}

impl Door {
    fn connack(&self, session_present: bool, refused: Option<Refusal>) -> Out {
        Out::ConnAck {
            session_present,
            refused,
            receive_max: self.receive_max,
            max_packet: self.max_packet as u32,
            alias_max: ALIAS_MAX,
        }
    }

    /// The connection `number` takes over `client_id`'s session (an older connection of the
    /// same id is told to close, as MQTT requires). Returns what tells this one to close.
    fn take_session(&self, client_id: &str, number: u64, clean: bool) -> Arc<Notify> {
        let kick = Arc::new(Notify::new());
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let s = sessions.entry(client_id.to_string()).or_default();
        if let Some((_, old)) = s.owner.take() {
            old.notify_one();
        }
        if clean {
            s.awaiting_release.clear();
        }
        s.owner = Some((number, kick.clone()));
        kick
    }

    fn leave_session(&self, client_id: &str, number: u64, clean: bool) {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        if let Some(s) = sessions.get_mut(client_id)
            && s.owner.as_ref().is_some_and(|(n, _)| *n == number)
        {
            s.owner = None;
            if clean {
                sessions.remove(client_id);
            }
        }
    }

    /// QoS 2: is this packet id stored and not yet released? `mark`: it is now.
    fn awaiting_release(&self, client_id: &str, pkid: u16, mark: Option<bool>) -> bool {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let Some(s) = sessions.get_mut(client_id) else {
            return false;
        };
        match mark {
            None => s.awaiting_release.contains(&pkid),
            Some(true) => !s.awaiting_release.insert(pkid),
            Some(false) => s.awaiting_release.remove(&pkid),
        }
    }
}

struct Connection {
    door: Arc<Door>,
    version: Version,
    number: u64,
    session: Arc<str>,
    principal: Principal,
    keep_alive: u16,
    aliases: HashMap<u16, String>,
    pending: VecDeque<Pending>,
    wbuf: BytesMut,
    /// the topic of the last publish
    last_topic: Arc<str>,
}

impl Connection {
    fn out(&mut self, out: Out) {
        if let Err(e) = packet::write(self.version, out, &mut self.wbuf) {
            tracing::error!(error = %e, "cannot encode an MQTT reply");
        }
    }

    fn disconnect(&mut self, reason: DisconnectReasonCode, why: impl Into<String>) -> End {
        self.out(Out::Disconnect(reason));
        Err(why.into())
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        rbuf: &mut BytesMut,
        kicked: &Notify,
    ) -> End {
        let mut stop = self.door.stop.clone();
        let mut stopping = *stop.borrow();
        // MQTT: one and a half keep-alive periods without a packet end the connection.
        let idle =
            (self.keep_alive > 0).then(|| Duration::from_millis(self.keep_alive as u64 * 1500));
        let mut deadline = idle.map(|d| tokio::time::Instant::now() + d);
        loop {
            // Packets already in the buffer first (a read may bring several).
            while !stopping && self.pending.len() < self.door.receive_max as usize {
                match packet::read(self.version, rbuf, self.door.max_packet) {
                    Ok(Some(p)) => {
                        if let Some(end) = self.handle(p).await {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let reason = if e.message.contains("PayloadSizeLimitExceeded") {
                            DisconnectReasonCode::PacketTooLarge
                        } else {
                            DisconnectReasonCode::MalformedPacket
                        };
                        return self.disconnect(reason, e.message);
                    }
                }
            }
            write_out(io, &mut self.wbuf)
                .await
                .map_err(|e| format!("writing: {e}"))?;
            if stopping && self.pending.is_empty() {
                return self.disconnect(
                    DisconnectReasonCode::ServerShuttingDown,
                    "the node is stopping",
                );
            }
            let can_read = !stopping && self.pending.len() < self.door.receive_max as usize;
            rbuf.reserve(4096);
            tokio::select! {
                _ = kicked.notified() => {
                    return self.disconnect(
                        DisconnectReasonCode::SessionTakenOver,
                        "a new connection took the session over",
                    );
                }
                answer = async { (&mut self.pending.front_mut().expect("not empty").answer).await },
                    if !self.pending.is_empty() => {
                    let p = self.pending.pop_front().expect("not empty");
                    self.answer(p, answer.unwrap_or(Outcome::Failed))?;
                    // A group commit answers many at once: take every answer already there,
                    // in order, so that one write carries their acks.
                    while let Some(front) = self.pending.front_mut() {
                        let Ok(outcome) = front.answer.try_recv() else {
                            break;
                        };
                        let p = self.pending.pop_front().expect("not empty");
                        self.answer(p, outcome)?;
                    }
                }
                read = io.read_buf(rbuf), if can_read => {
                    match read {
                        Ok(0) => return Err("closed by the client".into()),
                        Ok(_) => deadline = idle.map(|d| tokio::time::Instant::now() + d),
                        Err(e) => return Err(format!("reading: {e}")),
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() && can_read => {
                    return self.disconnect(DisconnectReasonCode::KeepAliveTimeout, "keep-alive timed out");
                }
                _ = stopped(&mut stop), if !stopping => stopping = true,
            }
        }
    }

    /// Reply to a publish the intake answered.
    fn answer(&mut self, p: Pending, outcome: Outcome) -> End {
        let reason = match outcome {
            Outcome::Stored => AckReason::Ok,
            Outcome::NoRoute => AckReason::NoRoute,
            // Not stored: no ack, and the publisher will send it again on a new connection.
            Outcome::Failed => {
                return self.disconnect(
                    DisconnectReasonCode::UnspecifiedError,
                    "the write-ahead log failed",
                );
            }
        };
        if p.qos == 2 {
            self.door
                .awaiting_release(&self.session, p.pkid, Some(true));
        }
        if p.qos > 0 {
            self.out(Out::Ack {
                pkid: p.pkid,
                qos: p.qos,
                reason,
            });
        }
        Ok(())
    }

    /// Handle one packet; `Some` ends the connection.
    async fn handle(&mut self, p: In) -> Option<End> {
        match p {
            In::Publish {
                topic,
                alias,
                qos,
                dup,
                pkid,
                payload,
            } => {
                let topic = match self.topic(topic, alias) {
                    Ok(t) => t,
                    Err(why) => {
                        return Some(self.disconnect(DisconnectReasonCode::TopicNameInvalid, why));
                    }
                };
                if !self.principal.may_publish(&topic) {
                    tracing::warn!(client = %self.session, user = self.principal.name.as_deref().unwrap_or("(anonymous)"), %topic, "MQTT publish refused: topic outside the credential's rules");
                    if qos == 0 {
                        return None;
                    }
                    if self.version == Version::V4 {
                        // 3.1.1 has no negative ack: close rather than ack what is not stored.
                        return Some(Err(format!("not authorised to publish to {topic}")));
                    }
                    self.out(Out::Ack {
                        pkid,
                        qos,
                        reason: AckReason::NotAuthorized,
                    });
                    return None;
                }
                if qos == 2 && self.door.awaiting_release(&self.session, pkid, None) {
                    // Sent again before our PUBREC arrived: stored already.
                    self.out(Out::Ack {
                        pkid,
                        qos,
                        reason: AckReason::Ok,
                    });
                    return None;
                }
                let permit = match self.reserve(topic.len() + payload.len()).await {
                    Some(p) => p,
                    None => return Some(Err("the node is stopping".into())),
                };
                let (tx, answer) = oneshot::channel();
                let arrival = Arrival {
                    connection: self.number,
                    session: self.session.clone(),
                    topic,
                    payload,
                    pkid,
                    dup,
                    ack: Ack::Reply {
                        answer: tx,
                        _budget: permit,
                    },
                };
                if self.door.intake.send(arrival).await.is_err() {
                    return Some(Err("ingest stopped".into()));
                }
                self.pending.push_back(Pending { pkid, qos, answer });
                None
            }
            In::PubRel(pkid) => {
                self.door.awaiting_release(&self.session, pkid, Some(false));
                self.out(Out::PubComp(pkid));
                None
            }
            In::Subscribe { pkid, filters } => {
                tracing::info!(client = %self.session, "SUBSCRIBE refused: the embedded listener takes publishes only (subscribers use an external broker)");
                self.out(Out::SubAckRefused { pkid, filters });
                None
            }
            In::Unsubscribe { pkid, filters } => {
                self.out(Out::UnsubAck { pkid, filters });
                None
            }
            In::PingReq => {
                self.out(Out::PingResp);
                None
            }
            In::Disconnect => Some(Ok(())),
            In::Unexpected(what) => Some(self.disconnect(
                DisconnectReasonCode::ProtocolError,
                format!("protocol error: {what}"),
            )),
        }
    }

    /// The topic of a publish, through v5 topic aliases.
    fn topic(
        &mut self,
        topic: String,
        alias: Option<u16>,
    ) -> std::result::Result<Arc<str>, String> {
        let topic = match alias {
            Some(a) if a == 0 || a > ALIAS_MAX => {
                return Err(format!("topic alias {a} out of range"));
            }
            Some(a) if topic.is_empty() => self
                .aliases
                .get(&a)
                .cloned()
                .ok_or_else(|| format!("unknown topic alias {a}"))?,
            Some(a) => {
                self.aliases.insert(a, topic.clone());
                topic
            }
            None => topic,
        };
        if topic.is_empty() || topic.contains(['+', '#', '\0']) {
            return Err(format!("bad topic name {topic:?}"));
        }
        // Publishes in a row on one topic (a sensor's usual stream) share one copy of its name.
        if *self.last_topic != *topic {
            self.last_topic = Arc::from(topic);
        }
        Ok(self.last_topic.clone())
    }

    /// Budget for a message's bytes until the intake answers it (waits while the node holds
    /// acks); `None` when the node stops meanwhile.
    async fn reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let n = bytes.clamp(1, self.door.max_packet) as u32;
        let mut stop = self.door.stop.clone();
        tokio::select! {
            permit = self.door.budget.clone().acquire_many_owned(n) => permit.ok(),
            _ = stopped(&mut stop) => None,
        }
    }
}

/// Until the node stops (a future that holds no lock guard, so tasks stay `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
