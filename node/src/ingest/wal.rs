//! The write-ahead log: every message is here, fsynced, before it is acked to the publisher
//! (or the broker), and stays until its cell is committed. A redb database (copy-on-write
//! B-trees, checksummed commits: whole after a power cut) with a table of records keyed by a
//! monotonic sequence and a table of the publishers' persistent sessions.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

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
    pub session: Arc<str>,
    /// Shared with the other messages of its connection on that topic (a record is kept in
    /// memory until its cell commits: its size is the node's memory at a high rate).
    pub topic: Arc<str>,
    pub payload: Bytes,
}

/// redb's page cache (its default is 1 GiB): the log is written once and read back only
/// after a restart, so a small cache costs nothing and keeps the node small.
const CACHE_BYTES: usize = 4 << 20;
/// The log's file in its directory (`<state_dir>/wal/`).
const FILE: &str = "log.redb";
/// Records by sequence number.
const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
/// Publishers' persistent sessions, by client id.
const SESSIONS: TableDefinition<&str, ()> = TableDefinition::new("sessions");
/// The next sequence number, kept so that numbers rise across restarts even when every
/// record has been committed and removed.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQ: &str = "next_seq";

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
            Arc::from(std::str::from_utf8(take(len)?).map_err(|_| bad())?)
        } else {
            Arc::from("")
        };
        let tlen = u32::from_le_bytes(take(4)?.try_into().map_err(|_| bad())?) as usize;
        let topic = Arc::from(std::str::from_utf8(take(tlen)?).map_err(|_| bad())?);
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
    db: Arc<Database>,
    next: AtomicU64,
}

fn wal_err(e: impl std::fmt::Display) -> Error {
    Error::storage(format!("write-ahead log: {e}"))
}

impl Wal {
    pub fn open(dir: &Path) -> Result<Wal> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::storage(format!(
                "cannot create write-ahead log dir {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(FILE);
        // A log closed a moment ago in this process may still be held by a task finishing
        // its last write: wait a little for it rather than fail a restart.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let db = loop {
            match Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create(&path)
            {
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => {
                    break other.map_err(|e| {
                        Error::storage(format!(
                            "cannot open write-ahead log {}: {e}",
                            path.display()
                        ))
                    })?;
                }
            }
        };
        let txn = db.begin_write().map_err(wal_err)?;
        let next = {
            let records = txn.open_table(RECORDS).map_err(wal_err)?;
            let meta = txn.open_table(META).map_err(wal_err)?;
            txn.open_table(SESSIONS).map_err(wal_err)?;
            let stored = meta
                .get(NEXT_SEQ)
                .map_err(wal_err)?
                .map_or(1, |v| v.value());
            let last = records
                .last()
                .map_err(wal_err)?
                .map_or(0, |(k, _)| k.value());
            stored.max(last + 1)
        };
        txn.commit().map_err(wal_err)?;
        let wal = Wal {
            db: Arc::new(db),
            next: AtomicU64::new(next),
        };
        sled_log::migrate(dir, &wal)?;
        Ok(wal)
    }

    /// A publisher connects: is there a persistent session of its client id (from before,
    /// also before a restart)? A clean connection ends any; a persistent one is remembered
    /// (on disk with the next appended records).
    pub async fn open_session(&self, client_id: &str, clean: bool) -> Result<bool> {
        let client_id = client_id.to_string();
        self.off_thread(move |db| Self::session(db, &client_id, clean))
            .await
    }

    fn session(db: &Database, client_id: &str, clean: bool) -> Result<bool> {
        let mut txn = db.begin_write().map_err(wal_err)?;
        txn.set_durability(Durability::None).map_err(wal_err)?;
        let before = {
            let mut sessions = txn.open_table(SESSIONS).map_err(wal_err)?;
            if clean {
                sessions.remove(client_id).map_err(wal_err)?;
                false
            } else {
                sessions.insert(client_id, ()).map_err(wal_err)?.is_some()
            }
        };
        txn.commit().map_err(wal_err)?;
        Ok(before)
    }

    /// A new sequence number: increasing across restarts.
    pub fn next_seq(&self) -> Result<u64> {
        Ok(self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// A write transaction waits for the one before (an fsync, perhaps): run it on a
    /// blocking thread, never on the async ones.
    async fn off_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(wal_err)?
    }

    /// Add records in one transaction, on disk (fsynced) when this returns.
    pub async fn append(&self, records: &[Record]) -> Result<()> {
        let encoded: Vec<(u64, Vec<u8>)> = records.iter().map(|r| (r.seq, r.encode())).collect();
        self.off_thread(move |db| Self::insert(db, &encoded, 0, Durability::Immediate))
            .await
    }

    /// Insert encoded records, raising the kept next sequence number past them (and to at
    /// least `next`).
    fn insert(
        db: &Database,
        encoded: &[(u64, Vec<u8>)],
        next: u64,
        durability: Durability,
    ) -> Result<()> {
        let mut txn = db.begin_write().map_err(wal_err)?;
        txn.set_durability(durability).map_err(wal_err)?;
        {
            let mut table = txn.open_table(RECORDS).map_err(wal_err)?;
            for (seq, v) in encoded {
                table.insert(seq, v.as_slice()).map_err(wal_err)?;
            }
            let wanted = encoded.iter().map(|(s, _)| s + 1).fold(next, u64::max);
            let mut meta = txn.open_table(META).map_err(wal_err)?;
            let kept = meta
                .get(NEXT_SEQ)
                .map_err(wal_err)?
                .map_or(1, |v| v.value());
            if wanted > kept {
                meta.insert(NEXT_SEQ, wanted).map_err(wal_err)?;
            }
        }
        txn.commit().map_err(wal_err)
    }

    /// Drop committed records. Not fsynced: a removal lost in a power cut only replays
    /// records whose frames already hold them (their txn versions say so).
    pub async fn remove(&self, seqs: Vec<u64>) -> Result<()> {
        self.off_thread(move |db| {
            let mut txn = db.begin_write().map_err(wal_err)?;
            txn.set_durability(Durability::None).map_err(wal_err)?;
            {
                let mut table = txn.open_table(RECORDS).map_err(wal_err)?;
                for s in seqs {
                    table.remove(s).map_err(wal_err)?;
                }
            }
            txn.commit().map_err(wal_err)
        })
        .await
    }

    pub fn get(&self, seq: u64) -> Result<Option<Record>> {
        let txn = self.db.begin_read().map_err(wal_err)?;
        let table = txn.open_table(RECORDS).map_err(wal_err)?;
        match table.get(seq).map_err(wal_err)? {
            Some(v) => Ok(Some(Record::decode(seq, v.value())?)),
            None => Ok(None),
        }
    }

    /// Every record, oldest first.
    pub fn records(&self) -> Result<Vec<Record>> {
        let txn = self.db.begin_read().map_err(wal_err)?;
        let table = txn.open_table(RECORDS).map_err(wal_err)?;
        table
            .iter()
            .map_err(wal_err)?
            .map(|kv| {
                let (k, v) = kv.map_err(wal_err)?;
                Record::decode(k.value(), v.value())
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        let count = || -> Result<u64> {
            let txn = self.db.begin_read().map_err(wal_err)?;
            txn.open_table(RECORDS)
                .map_err(wal_err)?
                .len()
                .map_err(wal_err)
        };
        count().unwrap_or(0) as usize
    }
}

/// The log of earlier versions (a sled database in the same directory): read once into the
/// new log, then removed. sled is not safe through a power cut (it syncs file ranges, not
/// the file's size, and never syncs its blob files), which is why the log moved.
mod sled_log {
    use super::*;

    /// Entries written before the session was recorded (tree "messages").
    const OLD_TREE: &str = "messages";
    const TREE: &str = "records";
    const SESSIONS: &str = "sessions";
    const FILES: [&str; 3] = ["conf", "db", "blobs"];

    pub(super) fn migrate(dir: &Path, wal: &Wal) -> Result<()> {
        if !dir.join("conf").exists() {
            return Ok(());
        }
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|e| Error::storage(format!("cannot read the old write-ahead log: {e}")))?;
        let mut encoded = Vec::new();
        for (tree, with_session) in [(OLD_TREE, false), (TREE, true)] {
            if !db
                .tree_names()
                .iter()
                .any(|n| n.as_ref() == tree.as_bytes())
            {
                continue;
            }
            for kv in db.open_tree(tree).map_err(wal_err)?.iter() {
                let (k, v) = kv.map_err(wal_err)?;
                let seq = u64::from_be_bytes(
                    k.as_ref()
                        .try_into()
                        .map_err(|_| Error::storage("bad key in the old write-ahead log"))?,
                );
                encoded.push((seq, Record::decode_as(seq, &v, with_session)?.encode()));
            }
        }
        let sessions: Vec<String> = db
            .open_tree(SESSIONS)
            .map_err(wal_err)?
            .iter()
            .keys()
            .filter_map(|k| k.ok().and_then(|k| String::from_utf8(k.to_vec()).ok()))
            .collect();
        let next = db.generate_id().map_err(wal_err)? + 1;
        drop(db);
        for s in &sessions {
            Wal::session(&wal.db, s, false)?;
        }
        let top = encoded.iter().map(|(s, _)| s + 1).fold(next, u64::max);
        Wal::insert(&wal.db, &encoded, next, Durability::Immediate)?;
        wal.next.fetch_max(top, Ordering::Relaxed);
        for f in FILES {
            let p = dir.join(f);
            let gone = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            if let Err(e) = gone
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(Error::storage(format!("removing {}: {e}", p.display())));
            }
        }
        for entry in std::fs::read_dir(dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with("snap.") {
                std::fs::remove_file(entry.path())?;
            }
        }
        tracing::info!(
            records = encoded.len(),
            "moved the write-ahead log to its new format"
        );
        Ok(())
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
        let b;
        {
            let wal = Wal::open(dir.path()).unwrap();
            let a = wal.next_seq().unwrap();
            b = wal.next_seq().unwrap();
            assert!(b > a && a > 0);
            wal.append(&[rec(a), rec(b), rec(b + 300)]).await.unwrap();
            wal.remove(vec![a]).await.unwrap();
            wal.append(&[]).await.unwrap();
        }
        let wal = Wal::open(dir.path()).unwrap();
        let all = wal.records().unwrap();
        assert_eq!(all.len(), 2);
        assert!(all[0].seq < all[1].seq);
        assert_eq!(&*all[0].topic, "a/b");
        assert_eq!(&*all[0].session, "sensor-1");
        assert_eq!(all[0].payload.as_ref(), b"{\"x\":1}");
        assert!(
            wal.next_seq().unwrap() > b + 300,
            "sequence keeps rising after reopen"
        );
        wal.remove(vec![b, b + 300]).await.unwrap();
        wal.append(&[]).await.unwrap();
        drop(wal);
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.len(), 0);
        assert!(
            wal.next_seq().unwrap() > b + 300,
            "and when every record was removed"
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
    fn an_old_sled_log_is_moved_to_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            // The oldest layout: route 1, received 5, pkid 9, topic "t", payload "p".
            let old = db.open_tree("messages").unwrap();
            let mut v = Vec::new();
            v.extend_from_slice(&1u32.to_le_bytes());
            v.extend_from_slice(&5i64.to_le_bytes());
            v.extend_from_slice(&9u16.to_le_bytes());
            v.extend_from_slice(&1u32.to_le_bytes());
            v.extend_from_slice(b"tp");
            old.insert(42u64.to_be_bytes(), v).unwrap();
            // The last sled layout, with sessions, and a sequence counter past both.
            db.open_tree("records")
                .unwrap()
                .insert(43u64.to_be_bytes(), rec(43).encode())
                .unwrap();
            db.open_tree("sessions")
                .unwrap()
                .insert("sensor-1", &[][..])
                .unwrap();
            while db.generate_id().unwrap() < 500 {}
            db.flush().unwrap();
        }
        let wal = Wal::open(dir.path()).unwrap();
        let all = wal.records().unwrap();
        assert_eq!(all.len(), 2);
        let r = &all[0];
        assert_eq!((r.seq, r.route, r.pkid), (42, 1, 9));
        assert_eq!(
            (&*r.topic, r.payload.as_ref(), &*r.session),
            ("t", &b"p"[..], "")
        );
        assert_eq!(all[1], rec(43));
        assert!(
            Wal::session(&wal.db, "sensor-1", false).unwrap(),
            "session kept"
        );
        assert!(wal.next_seq().unwrap() > 500, "sequence kept rising");
        for gone in ["conf", "db", "blobs"] {
            assert!(!dir.path().join(gone).exists(), "{gone} left behind");
        }
        drop(wal);
        assert_eq!(Wal::open(dir.path()).unwrap().len(), 2, "moved once");
    }

    #[tokio::test]
    async fn persistent_sessions_are_remembered_and_clean_ones_end_them() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path()).unwrap();
        assert!(!wal.open_session("a", false).await.unwrap(), "new");
        assert!(wal.open_session("a", false).await.unwrap(), "present");
        assert!(
            !wal.open_session("a", true).await.unwrap(),
            "a clean start has no session"
        );
        assert!(
            !wal.open_session("a", false).await.unwrap(),
            "ended by the clean start"
        );
    }
}
