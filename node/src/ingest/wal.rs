//! The write-ahead log: every message is here, flushed to disk, before it is acked to the
//! publisher (or the broker), and stays until its cell is committed. A sled tree keyed by a
//! monotonic sequence; a second tree remembers the publishers' persistent sessions.

use std::path::Path;

use bytes::Bytes;

use crate::error::{Error, Result};

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    /// Index of the route that took it.
    pub route: u32,
    pub received_ms: i64,
    /// MQTT packet id (to recognise a redelivery after a lost ack).
    pub pkid: u16,
    /// The publisher's client id when it published to the embedded listener (its session);
    /// empty for messages from an external broker.
    pub session: String,
    pub topic: String,
    pub payload: Bytes,
}

/// Entries written before the session was recorded (tree "messages") are moved to "records".
const OLD_TREE: &str = "messages";
const TREE: &str = "records";
const SESSIONS: &str = "sessions";

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut v =
            Vec::with_capacity(20 + self.session.len() + self.topic.len() + self.payload.len());
        v.extend_from_slice(&self.route.to_le_bytes());
        v.extend_from_slice(&self.received_ms.to_le_bytes());
        v.extend_from_slice(&self.pkid.to_le_bytes());
        v.extend_from_slice(&(self.session.len() as u16).to_le_bytes());
        v.extend_from_slice(self.session.as_bytes());
        v.extend_from_slice(&(self.topic.len() as u32).to_le_bytes());
        v.extend_from_slice(self.topic.as_bytes());
        v.extend_from_slice(&self.payload);
        v
    }

    fn decode(seq: u64, v: &[u8]) -> Result<Record> {
        Self::decode_as(seq, v, true)
    }

    fn decode_as(seq: u64, v: &[u8], with_session: bool) -> Result<Record> {
        let bad = || Error::storage(format!("write-ahead log entry {seq} is corrupt"));
        let mut rest = v;
        let mut take = |n: usize| -> Result<&[u8]> {
            if rest.len() < n {
                return Err(bad());
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let route = u32::from_le_bytes(take(4)?.try_into().map_err(|_| bad())?);
        let received_ms = i64::from_le_bytes(take(8)?.try_into().map_err(|_| bad())?);
        let pkid = u16::from_le_bytes(take(2)?.try_into().map_err(|_| bad())?);
        let session = if with_session {
            let len = u16::from_le_bytes(take(2)?.try_into().map_err(|_| bad())?) as usize;
            String::from_utf8(take(len)?.to_vec()).map_err(|_| bad())?
        } else {
            String::new()
        };
        let tlen = u32::from_le_bytes(take(4)?.try_into().map_err(|_| bad())?) as usize;
        let topic = String::from_utf8(take(tlen)?.to_vec()).map_err(|_| bad())?;
        Ok(Record {
            seq,
            route,
            received_ms,
            pkid,
            session,
            topic,
            payload: Bytes::copy_from_slice(rest),
        })
    }

    /// Bytes this record holds (for backlog accounting).
    pub fn size(&self) -> usize {
        self.session.len() + self.topic.len() + self.payload.len() + 20
    }
}

pub struct Wal {
    db: sled::Db,
    tree: sled::Tree,
    sessions: sled::Tree,
}

fn sled_err(e: sled::Error) -> Error {
    Error::storage(format!("write-ahead log: {e}"))
}

impl Wal {
    pub fn open(dir: &Path) -> Result<Wal> {
        // A log closed a moment ago in this process may still be locked by sled's flusher
        // thread: wait a little for it rather than fail a restart.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let db = loop {
            let opened = sled::Config::new()
                .path(dir)
                .cache_capacity(16 << 20)
                .mode(sled::Mode::HighThroughput)
                .open();
            match opened {
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => {
                    break other.map_err(|e| {
                        Error::storage(format!(
                            "cannot open write-ahead log {}: {e}",
                            dir.display()
                        ))
                    })?;
                }
            }
        };
        let tree = db.open_tree(TREE).map_err(sled_err)?;
        let sessions = db.open_tree(SESSIONS).map_err(sled_err)?;
        if db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == OLD_TREE.as_bytes())
        {
            let old = db.open_tree(OLD_TREE).map_err(sled_err)?;
            let mut batch = sled::Batch::default();
            for kv in old.iter() {
                let (k, v) = kv.map_err(sled_err)?;
                let seq = u64::from_be_bytes(
                    k.as_ref()
                        .try_into()
                        .map_err(|_| Error::storage("bad WAL key"))?,
                );
                batch.insert(k, Record::decode_as(seq, &v, false)?.encode());
            }
            tree.apply_batch(batch).map_err(sled_err)?;
            db.flush().map_err(sled_err)?;
            db.drop_tree(OLD_TREE).map_err(sled_err)?;
        }
        Ok(Wal { db, tree, sessions })
    }

    /// A publisher connects: is there a persistent session of its client id (from before,
    /// also before a restart)? A clean connection ends any; a persistent one is remembered.
    pub fn open_session(&self, client_id: &str, clean: bool) -> Result<bool> {
        if clean {
            self.sessions.remove(client_id).map_err(sled_err)?;
            return Ok(false);
        }
        let before = self.sessions.insert(client_id, &[][..]).map_err(sled_err)?;
        Ok(before.is_some())
    }

    /// A new sequence number: increasing across restarts.
    pub fn next_seq(&self) -> Result<u64> {
        Ok(self.db.generate_id().map_err(sled_err)? + 1)
    }

    /// Add records (atomically); durable after [`Wal::flush`].
    pub fn write(&self, records: &[Record]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for r in records {
            batch.insert(&r.seq.to_be_bytes(), r.encode());
        }
        self.tree.apply_batch(batch).map_err(sled_err)
    }

    pub async fn flush(&self) -> Result<()> {
        self.db.flush_async().await.map(|_| ()).map_err(sled_err)
    }

    pub fn remove(&self, seqs: impl IntoIterator<Item = u64>) -> Result<()> {
        let mut batch = sled::Batch::default();
        for s in seqs {
            batch.remove(&s.to_be_bytes());
        }
        self.tree.apply_batch(batch).map_err(sled_err)
    }

    pub fn get(&self, seq: u64) -> Result<Option<Record>> {
        match self.tree.get(seq.to_be_bytes()).map_err(sled_err)? {
            Some(v) => Ok(Some(Record::decode(seq, &v)?)),
            None => Ok(None),
        }
    }

    /// Every record, oldest first.
    pub fn records(&self) -> Result<Vec<Record>> {
        self.tree
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(sled_err)?;
                let seq = u64::from_be_bytes(
                    k.as_ref()
                        .try_into()
                        .map_err(|_| Error::storage("bad WAL key"))?,
                );
                Record::decode(seq, &v)
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> Record {
        Record {
            seq,
            route: 2,
            received_ms: 1_700_000_000_000,
            pkid: 7,
            session: "sensor-1".into(),
            topic: "a/b".into(),
            payload: Bytes::from_static(b"{\"x\":1}"),
        }
    }

    #[tokio::test]
    async fn records_survive_reopen_in_order_and_trim() {
        let dir = tempfile::tempdir().unwrap();
        {
            let wal = Wal::open(dir.path()).unwrap();
            let a = wal.next_seq().unwrap();
            let b = wal.next_seq().unwrap();
            assert!(b > a && a > 0);
            wal.write(&[rec(a), rec(b), rec(b + 300)]).unwrap();
            wal.flush().await.unwrap();
            wal.remove([a]).unwrap();
            wal.flush().await.unwrap();
        }
        let wal = Wal::open(dir.path()).unwrap();
        let all = wal.records().unwrap();
        assert_eq!(all.len(), 2);
        assert!(all[0].seq < all[1].seq);
        assert_eq!(all[0].topic, "a/b");
        assert_eq!(all[0].session, "sensor-1");
        assert_eq!(all[0].payload.as_ref(), b"{\"x\":1}");
        assert!(
            wal.next_seq().unwrap() > all[0].seq,
            "sequence keeps rising after reopen"
        );
    }

    #[test]
    fn corrupt_entries_are_errors() {
        assert!(Record::decode(1, b"short").is_err());
        let mut v = rec(1).encode();
        v[14] = 200; // session length past the end
        assert!(Record::decode(1, &v).is_err());
    }

    #[test]
    fn a_log_from_before_sessions_is_read_and_moved() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let old = db.open_tree(OLD_TREE).unwrap();
            // route 1, received 5, pkid 9, topic "t", payload "p": the old layout
            let mut v = Vec::new();
            v.extend_from_slice(&1u32.to_le_bytes());
            v.extend_from_slice(&5i64.to_le_bytes());
            v.extend_from_slice(&9u16.to_le_bytes());
            v.extend_from_slice(&1u32.to_le_bytes());
            v.extend_from_slice(b"tp");
            old.insert(42u64.to_be_bytes(), v).unwrap();
            db.flush().unwrap();
        }
        let wal = Wal::open(dir.path()).unwrap();
        let all = wal.records().unwrap();
        assert_eq!(all.len(), 1);
        let r = &all[0];
        assert_eq!((r.seq, r.route, r.pkid), (42, 1, 9));
        assert_eq!(
            (r.topic.as_str(), r.payload.as_ref(), r.session.as_str()),
            ("t", &b"p"[..], "")
        );
    }

    #[test]
    fn persistent_sessions_are_remembered_and_clean_ones_end_them() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path()).unwrap();
        assert!(!wal.open_session("a", false).unwrap(), "new");
        assert!(wal.open_session("a", false).unwrap(), "present");
        assert!(
            !wal.open_session("a", true).unwrap(),
            "a clean start has no session"
        );
        assert!(
            !wal.open_session("a", false).unwrap(),
            "ended by the clean start"
        );
    }
}
