//! What ingestion holds between the write-ahead log and a commit, as plain data with no I/O:
//! the records waiting per (route, frame), the committed sequences kept for redelivery
//! checks, and recent messages by identity. The exactly-once bookkeeping lives here, so it
//! is unit-tested on its own.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

// tokio's clock, so that the latency rule can be tested on paused time.
use tokio::time::Instant;

use super::wal::Record;
use crate::names::FrameRef;

/// Committed WAL entries kept for recognising redeliveries (more than any ack window).
pub(super) const DEDUPE_TAIL: u64 = 65_536;

/// Where a record goes: its route (for the exactly-once marker) and its frame.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key {
    pub route: u32,
    pub frame: FrameRef,
}

struct Buffer {
    records: Vec<Record>,
    bytes: usize,
    since: Instant,
}

#[derive(Default)]
pub(super) struct State {
    buffers: BTreeMap<Key, Buffer>,
    /// Committed sequences not yet trimmed from the WAL (kept for redelivery checks).
    committed: VecDeque<u64>,
    /// recent messages by [`Identity::slot`], and the order they came in (to forget the
    /// oldest)
    recent: HashMap<u64, Seen>,
    recent_order: VecDeque<(u64, u64)>,
    /// txn versions we know per (frame written, txn app id)
    pub versions: HashMap<(FrameRef, String), i64>,
    /// bytes received and not yet committed
    pub backlog_bytes: usize,
}

impl State {
    /// Note a message for redelivery checks, forgetting the oldest past the window.
    /// `answered`: its ack is known to have been sent (not so for what the WAL held at
    /// start, see [`State::replayed`]).
    pub fn remember(&mut self, rec: &Record, connection: u64, answered: bool) {
        let id = Identity::of(&rec.session, rec.pkid, &rec.topic, &rec.payload);
        self.remember_as(id, rec.seq, connection, answered);
    }

    /// [`State::remember`] with the message's identity already known.
    pub fn remember_as(&mut self, id: Identity, seq: u64, connection: u64, answered: bool) {
        self.recent.insert(
            id.slot,
            Seen {
                seq,
                connection,
                content: id.content,
                answered,
            },
        );
        self.recent_order.push_back((id.slot, seq));
        while self.recent_order.len() as u64 > DEDUPE_TAIL {
            let (old, seq) = self.recent_order.pop_front().expect("not empty");
            if self.recent.get(&old).is_some_and(|s| s.seq == seq) {
                self.recent.remove(&old);
            }
        }
    }

    /// The message `seq` was answered (its ack sent).
    pub fn answered(&mut self, id: &Identity, seq: u64) {
        if let Some(s) = self.recent.get_mut(&id.slot)
            && s.seq == seq
        {
            s.answered = true;
        }
    }

    /// The sequence of the message this one is sent again of, if it is a redelivery: the
    /// same identity and content, first received on an earlier connection, and either
    /// flagged DUP or never answered (so the publisher cannot have moved on to a new
    /// message under that packet id; some clients, paho's MQTT 5 QoS 2 among them, resend
    /// without DUP after a reconnect).
    pub fn seen_before(&self, id: &Identity, dup: bool, connection: u64) -> Option<u64> {
        self.recent
            .get(&id.slot)
            .filter(|s| s.content == id.content && s.connection < connection)
            .filter(|s| dup || (id.from_session && !s.answered))
            .map(|s| s.seq)
    }

    /// Is a record that `same` accepts waiting in a buffer?
    pub fn buffered(&self, same: impl Fn(&Record) -> bool) -> bool {
        self.buffers
            .values()
            .flat_map(|b| b.records.iter())
            .any(same)
    }

    /// Buffer a record for its frame.
    pub fn push(&mut self, key: Key, rec: Record) {
        self.backlog_bytes += rec.size();
        let buf = self.buffers.entry(key).or_insert_with(|| Buffer {
            records: Vec::new(),
            bytes: 0,
            since: Instant::now(),
        });
        buf.bytes += rec.size();
        buf.records.push(rec);
    }

    /// Take the buffers due for a commit: every one when `all`, else those holding at least
    /// `cell_target` bytes or older than `max_latency`, and while the rest hold more than
    /// `buffer_max` bytes together, the biggest of them (memory stays bounded at any rate).
    pub fn take_due(
        &mut self,
        all: bool,
        cell_target: usize,
        max_latency: Duration,
        buffer_max: usize,
    ) -> Vec<(Key, Vec<Record>)> {
        let mut keys: Vec<Key> = Vec::new();
        let mut rest: Vec<(usize, &Key)> = Vec::new();
        for (k, b) in &self.buffers {
            if all || b.bytes >= cell_target || b.since.elapsed() >= max_latency {
                keys.push(k.clone());
            } else {
                rest.push((b.bytes, k));
            }
        }
        let mut held: usize = rest.iter().map(|(n, _)| n).sum();
        rest.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
        for (n, k) in rest {
            if held <= buffer_max {
                break;
            }
            held -= n;
            keys.push(k.clone());
        }
        keys.into_iter()
            .filter_map(|k| self.buffers.remove(&k).map(|b| (k, b.records)))
            .collect()
    }

    /// `records` are committed: the backlog shrinks and their sequences join the redelivery
    /// window. Returns the sequences that fell out of the window, for the WAL to drop (by
    /// count: sequence numbers jump after a crash, the WAL reserves id ranges).
    pub fn committed(&mut self, records: &[Record]) -> Vec<u64> {
        let bytes: usize = records.iter().map(Record::size).sum();
        self.backlog_bytes = self.backlog_bytes.saturating_sub(bytes);
        self.committed.extend(records.iter().map(|r| r.seq));
        let mut trim = Vec::new();
        while self.committed.len() as u64 > DEDUPE_TAIL {
            trim.push(self.committed.pop_front().expect("front exists"));
        }
        trim
    }

    /// A sequence already committed before a restart (found while replaying the WAL).
    pub fn replayed_committed(&mut self, seq: u64) {
        self.committed.push_back(seq);
    }

    /// A failed commit's records go back in front of what arrived for the frame since, and
    /// the markers cached for the frames it writes are forgotten (the commit may have landed
    /// before the error), so the retry reads what is committed.
    pub fn put_back(&mut self, key: Key, records: Vec<Record>, rejects: &FrameRef) {
        self.versions
            .retain(|(f, _), _| *f != key.frame && f != rejects);
        let bytes: usize = records.iter().map(Record::size).sum();
        let buf = self.buffers.entry(key).or_insert_with(|| Buffer {
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

/// A remembered message.
struct Seen {
    seq: u64,
    connection: u64,
    content: u64,
    answered: bool,
}

/// What identifies a message sent again after a lost ack. From a publisher on the embedded
/// listener: its session (client id) and packet id (the same on a resend, by the MQTT
/// specification; a new message under that id replaces the old one), checked against the
/// content. From an external broker only the content: brokers may give a resent message a
/// new packet id (mosquitto does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Identity {
    slot: u64,
    content: u64,
    from_session: bool,
}

impl Identity {
    pub fn of(session: &str, pkid: u16, topic: &str, payload: &[u8]) -> Identity {
        use std::hash::{Hash, Hasher};
        let hash = |f: &dyn Fn(&mut std::collections::hash_map::DefaultHasher)| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            f(&mut h);
            h.finish()
        };
        let content = hash(&|h| {
            topic.hash(h);
            payload.hash(h);
        });
        if session.is_empty() {
            Identity {
                slot: content,
                content,
                from_session: false,
            }
        } else {
            Identity {
                slot: hash(&|h| {
                    session.hash(h);
                    pkid.hash(h);
                }),
                content,
                from_session: true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, topic: &str, payload: &str) -> Record {
        Record {
            seq,
            route: 0,
            received_ms: 0,
            pkid: seq as u16,
            session: std::sync::Arc::from(""),
            topic: topic.into(),
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        }
    }

    fn key(frame: &str) -> Key {
        Key {
            route: 0,
            frame: frame.parse().unwrap(),
        }
    }

    #[test]
    fn from_a_broker_a_redelivery_is_flagged_and_came_on_an_earlier_connection() {
        let mut st = State::default();
        st.remember(&rec(7, "t", "21.5"), 1, true);
        let id = |t: &str, p: &[u8]| Identity::of("", 99, t, p);
        assert_eq!(
            st.seen_before(&id("t", b"21.5"), true, 2),
            Some(7),
            "resent after a reconnect (under any packet id)"
        );
        assert_eq!(
            st.seen_before(&id("t", b"21.5"), false, 2),
            None,
            "not flagged: a new reading"
        );
        assert_eq!(
            st.seen_before(&id("t", b"21.5"), true, 1),
            None,
            "same connection: a new reading"
        );
        assert_eq!(
            st.seen_before(&id("t", b"22.0"), true, 2),
            None,
            "other bytes"
        );
        assert_eq!(
            st.seen_before(&id("u", b"21.5"), true, 2),
            None,
            "other topic"
        );
    }

    #[test]
    fn from_a_publisher_a_redelivery_has_its_session_and_packet_id() {
        let mut st = State::default();
        let mut r = rec(7, "t", "21.5");
        r.session = "sensor-1".into();
        r.pkid = 12;
        st.remember(&r, 1, false);
        let id = |s: &str, pkid: u16| Identity::of(s, pkid, "t", b"21.5");
        assert_eq!(
            st.seen_before(&id("sensor-1", 12), false, 2),
            Some(7),
            "never answered: the publisher must send it again, DUP or not"
        );
        st.answered(&id("sensor-1", 12), 7);
        assert_eq!(
            st.seen_before(&id("sensor-1", 12), false, 2),
            None,
            "answered: the packet id is free, an unflagged message is new"
        );
        assert_eq!(st.seen_before(&id("sensor-1", 12), true, 2), Some(7));
        assert_eq!(
            st.seen_before(&id("sensor-1", 13), true, 2),
            None,
            "the same reading under another packet id is a new one"
        );
        assert_eq!(
            st.seen_before(&id("sensor-2", 12), true, 2),
            None,
            "another publisher"
        );
        assert_eq!(
            st.seen_before(&Identity::of("", 12, "t", b"21.5"), true, 2),
            None
        );
        let mut next = rec(8, "t", "22.0");
        next.session = "sensor-1".into();
        next.pkid = 12;
        st.remember(&next, 3, true);
        assert_eq!(
            st.seen_before(&id("sensor-1", 12), true, 4),
            None,
            "a new message under the packet id replaces the old one"
        );
    }

    #[test]
    fn the_redelivery_window_forgets_the_oldest() {
        let mut st = State::default();
        for seq in 0..DEDUPE_TAIL + 10 {
            st.remember(&rec(seq, "t", &seq.to_string()), 1, true);
        }
        let id = |p: &[u8]| Identity::of("", 0, "t", p);
        assert_eq!(st.seen_before(&id(b"0"), true, 2), None);
        assert_eq!(st.seen_before(&id(b"9"), true, 2), None);
        assert_eq!(st.seen_before(&id(b"10"), true, 2), Some(10));
        assert_eq!(st.recent.len() as u64, DEDUPE_TAIL);
    }

    #[test]
    fn buffers_are_due_by_size_or_age_and_committing_trims_by_count() {
        let mut st = State::default();
        st.push(key("h.b.small"), rec(1, "t", "x"));
        st.push(key("h.b.big"), rec(2, "t", &"y".repeat(100)));
        assert!(st.buffered(|r| r.seq == 1));
        let due = st.take_due(false, 100, Duration::from_secs(60), usize::MAX);
        assert_eq!(due.len(), 1, "only the big one");
        assert_eq!(due[0].0, key("h.b.big"));
        let all = st.take_due(true, 100, Duration::from_secs(60), usize::MAX);
        assert_eq!(all.len(), 1);
        assert!(!st.buffered(|r| r.seq == 1));
        let before = st.backlog_bytes;
        assert!(st.committed(&all[0].1).is_empty());
        assert_eq!(st.backlog_bytes, before - all[0].1[0].size());
        let many: Vec<Record> = (10..DEDUPE_TAIL + 13).map(|s| rec(s, "t", "z")).collect();
        let trimmed = st.committed(&many);
        assert_eq!(
            trimmed,
            vec![1, 10, 11, 12],
            "the oldest beyond the window, in order"
        );
    }

    #[test]
    fn over_the_memory_cap_the_biggest_buffers_are_due_first() {
        let mut st = State::default();
        st.push(key("h.b.a"), rec(1, "t", &"a".repeat(100)));
        st.push(key("h.b.b"), rec(2, "t", &"b".repeat(300)));
        st.push(key("h.b.c"), rec(3, "t", &"c".repeat(200)));
        let long = Duration::from_secs(60);
        assert!(
            st.take_due(false, usize::MAX, long, 1000).is_empty(),
            "under the cap"
        );
        let due = st.take_due(false, usize::MAX, long, 250);
        let frames: Vec<String> = due.iter().map(|(k, _)| k.frame.to_string()).collect();
        assert_eq!(
            frames,
            vec!["h.b.b", "h.b.c"],
            "the biggest until the rest (121 bytes) is under the cap"
        );
        assert!(st.buffered(|r| r.seq == 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_buffer_is_due_when_its_oldest_record_reaches_the_latency() {
        let mut st = State::default();
        let latency = Duration::from_secs(5);
        st.push(key("h.b.f"), rec(1, "t", "a"));
        tokio::time::advance(Duration::from_secs(3)).await;
        st.push(key("h.b.f"), rec(2, "t", "b"));
        assert!(
            st.take_due(false, usize::MAX, latency, usize::MAX)
                .is_empty()
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        let due = st.take_due(false, usize::MAX, latency, usize::MAX);
        assert_eq!(due.len(), 1, "5 s after the first record, not the last");
        assert_eq!(due[0].1.len(), 2);
    }

    #[test]
    fn a_failed_commit_goes_back_in_front_and_forgets_its_markers() {
        let mut st = State::default();
        let k = key("h.b.f");
        let rejects: FrameRef = "h.b.f_rejects".parse().unwrap();
        st.versions.insert((k.frame.clone(), "r".into()), 5);
        st.versions.insert((rejects.clone(), "r".into()), 4);
        st.versions
            .insert(("h.b.other".parse().unwrap(), "r".into()), 9);
        st.push(k.clone(), rec(1, "t", "a"));
        let (_, taken) = st.take_due(true, 0, Duration::ZERO, usize::MAX).remove(0);
        st.push(k.clone(), rec(2, "t", "b"));
        st.put_back(k.clone(), taken, &rejects);
        let (_, again) = st.take_due(true, 0, Duration::ZERO, usize::MAX).remove(0);
        let seqs: Vec<u64> = again.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 2], "receive order kept");
        assert_eq!(
            st.versions.len(),
            1,
            "only the other frame's marker is kept"
        );
    }
}
