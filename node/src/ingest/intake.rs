//! From publishes to the write-ahead log, whichever door a message came in by (the embedded
//! listener or the connection to an external broker): redeliveries recognised, the WAL
//! written and flushed in groups, then the acks, in receive order. Nothing is acked before
//! it is on disk; when the node is critical or the backlog is over its cap the acks wait,
//! and with them the publishers.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};

use super::buffer::Identity;
use super::wal::Record;
use super::{Inner, now_ms};

/// One message as it arrives.
pub(super) struct Arrival {
    /// Connections are numbered from 1 (per door); what the WAL held at start counts as 0.
    pub connection: u64,
    /// The publisher's client id on the embedded listener; empty from an external broker.
    pub session: Arc<str>,
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub pkid: u16,
    pub dup: bool,
    pub ack: Ack,
}

/// How a message is acknowledged once stored.
pub(super) enum Ack {
    /// To the external broker (rumqttc's manual ack).
    Broker(rumqttc::Publish),
    /// To a listener connection, which sends PUBACK / PUBREC (nothing for QoS 0). The permit
    /// holds the message's bytes in the listener's budget until it is answered.
    Reply {
        answer: oneshot::Sender<Outcome>,
        _budget: OwnedSemaphorePermit,
    },
}

/// What became of a message, for the listener's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// In the WAL (or it was already: a redelivery).
    Stored,
    /// No route takes its topic: acked and dropped, as a broker without subscribers would.
    NoRoute,
    /// The WAL failed: not acked, the publisher sends it again.
    Failed,
}

impl Ack {
    /// Send a broker ack; `false` if its connection cannot take it now (try again later).
    /// A listener's reply is sent when the entry is dropped from the held list.
    fn try_broker(&self, broker: Option<&rumqttc::AsyncClient>) -> bool {
        match self {
            Ack::Broker(p) => broker.is_none_or(|c| c.try_ack(p).is_ok()),
            Ack::Reply { .. } => true,
        }
    }
}

/// An arrival on its way through one group commit.
struct Entry {
    ack: Ack,
    outcome: Outcome,
    /// the record it became (to note when its ack went out)
    stored: Option<(Identity, u64)>,
}

impl Inner {
    /// Is this a message we already have, sent again because our ack was lost? The
    /// bookkeeping says so ([`super::buffer::State::seen_before`]) and its bytes match a
    /// record still held.
    fn is_redelivery(&self, a: &Arrival, id: &Identity, unflushed: &[Record]) -> bool {
        let seen = self
            .state
            .lock()
            .expect("ingest lock")
            .seen_before(id, a.dup, a.connection);
        let Some(seq) = seen else {
            return false;
        };
        let same = |r: &Record| {
            r.seq == seq
                && r.topic == a.topic
                && r.payload == a.payload
                && *r.session == *a.session
                && (a.session.is_empty() || r.pkid == a.pkid)
        };
        unflushed.iter().any(same)
            || matches!(self.wal.get(seq), Ok(Some(r)) if same(&r))
            || self.state.lock().expect("ingest lock").buffered(same)
    }

    fn record(&self, a: &Arrival, route: u32) -> Option<Record> {
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
            pkid: a.pkid,
            session: a.session.clone(),
            topic: a.topic.clone(),
            payload: a.payload.clone(),
        })
    }

    fn acks_allowed(&self) -> bool {
        let backlog = self.state.lock().expect("ingest lock").backlog_bytes;
        let cap = self.config.wal_max.0.max(1) as usize;
        self.pool
            .colony()
            .set_ingest_backlog(backlog as f64 / cap as f64);
        backlog < cap && self.pool.acks_ingest()
    }

    /// Take arrivals until `stop`, then store and ack what already came, and return.
    pub(super) async fn intake(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Arrival>,
        broker: Option<rumqttc::AsyncClient>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut group = Group::default();
        let mut tick = tokio::time::interval(self.config.flush_interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => self.flush(broker.as_ref(), &mut group).await,
                a = rx.recv() => {
                    let Some(a) = a else { break };
                    self.take(a, &mut group);
                    // Group commit: what came while the last group was being written goes
                    // into this one, which is written at once. Waiting for more would only
                    // stall publishers whose window is full until they hear their acks.
                    while group.entries.len() < self.config.flush_messages {
                        match rx.try_recv() {
                            Ok(a) => self.take(a, &mut group),
                            Err(_) => break,
                        }
                    }
                    self.flush(broker.as_ref(), &mut group).await;
                }
            }
        }
        while let Ok(a) = rx.try_recv() {
            self.take(a, &mut group);
        }
        self.flush(broker.as_ref(), &mut group).await;
        if !group.held.is_empty() {
            // Leaving: acks held by backpressure are sent now that their messages are stored.
            self.send_acks(broker.as_ref(), &mut group.held);
        }
    }

    fn take(&self, a: Arrival, group: &mut Group) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let id = Identity::of(&a.session, a.pkid, &a.topic, &a.payload);
        let mut stored = None;
        let outcome = if self.is_redelivery(&a, &id, &group.records) {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            Outcome::Stored
        } else if let Some(route) = self.route_for(&a.topic) {
            match self.record(&a, route) {
                Some(rec) => {
                    self.state.lock().expect("ingest lock").remember_as(
                        id,
                        rec.seq,
                        a.connection,
                        false,
                    );
                    stored = Some((id, rec.seq));
                    group.records.push(rec);
                    Outcome::Stored
                }
                None => Outcome::Failed,
            }
        } else {
            self.stats.unrouted.fetch_add(1, Ordering::Relaxed);
            Outcome::NoRoute
        };
        group.entries.push(Entry {
            ack: a.ack,
            outcome,
            stored,
        });
    }

    /// Group commit: write and flush the WAL, then ack in receive order (unless the node is
    /// critical or the backlog is over its cap: then the acks wait, and the publishers).
    async fn flush(&self, broker: Option<&rumqttc::AsyncClient>, group: &mut Group) {
        if !group.records.is_empty() {
            if let Err(e) = self.wal.append(&group.records).await {
                // Not durable: no ack; the publisher (or broker) sends these again.
                tracing::error!(error = %e, "write-ahead log failed; messages not acked");
                group.records.clear();
                for e in &mut group.entries {
                    e.outcome = Outcome::Failed;
                }
            } else {
                let mut st = self.state.lock().expect("ingest lock");
                for rec in group.records.drain(..) {
                    st.push(self.key_for(&rec), rec);
                }
            }
        }
        // A failed message gets its answer (a closed connection) at once; the rest queue
        // behind any held acks, in order.
        for e in group.entries.drain(..) {
            if e.outcome == Outcome::Failed {
                if let Ack::Reply { answer, .. } = e.ack {
                    let _ = answer.send(Outcome::Failed);
                }
            } else {
                group.held.push(e);
            }
        }
        if group.held.is_empty() {
            return;
        }
        if !self.acks_allowed() {
            self.stats
                .held_acks
                .store(group.held.len() as u64, Ordering::Relaxed);
            self.stats.ack_pauses.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.send_acks(broker, &mut group.held);
    }

    /// Ack in order until the broker connection is full (a full request channel keeps the
    /// rest for the next tick: never wait on the connection here, it may be waiting for us).
    fn send_acks(&self, broker: Option<&rumqttc::AsyncClient>, held: &mut Vec<Entry>) {
        let mut sent = 0;
        for e in held.iter() {
            if !e.ack.try_broker(broker) {
                break;
            }
            sent += 1;
        }
        let mut st = self.state.lock().expect("ingest lock");
        for e in held.drain(..sent) {
            if let Some((id, seq)) = &e.stored {
                st.answered(id, *seq);
            }
            if let Ack::Reply { answer, .. } = e.ack {
                let _ = answer.send(e.outcome);
            }
        }
        drop(st);
        self.stats.acked.fetch_add(sent as u64, Ordering::Relaxed);
        self.stats
            .held_acks
            .store(held.len() as u64, Ordering::Relaxed);
    }
}

/// What one group commit holds: records to write, their arrivals' acks, and acks held back.
#[derive(Default)]
struct Group {
    records: Vec<Record>,
    entries: Vec<Entry>,
    held: Vec<Entry>,
}
