//! The local cell cache: cells fetched from the meadow are kept on local disk, least recently
//! used evicted first by bytes. Cells are immutable (a new version writes new files), so an
//! entry keyed by path is never stale. It sits in front of the meadow's store, so every read
//! of a cell (any query, any scan) goes through it; the log and Apiary's own documents do not.
//! Its summary goes into the node's heartbeat so the swarm planner can send work to the nodes
//! that already hold the cells.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    Attributes, CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult,
    MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, RenameOptions,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

/// Default size: this much, or a quarter of the free disk space if that is less.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;
/// Keys listed in a heartbeat (most recently used first); the counts cover the rest.
const SUMMARY_KEYS: usize = 4096;

/// The cache key of a cell: a short hash of its path in the store, the same on every node.
pub fn key(path: &str) -> String {
    let digest = Sha256::digest(path.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A data file of a frame (a checkpoint in `_delta_log` is Parquet too, but not a cell).
fn is_cell(path: &Path) -> bool {
    let s = path.as_ref();
    s.ends_with(".parquet") && !s.contains("_delta_log/")
}

/// What a heartbeat says about the cache.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CacheSummary {
    pub bytes: u64,
    pub max_bytes: u64,
    pub cells: u64,
    pub hits: u64,
    pub misses: u64,
    /// Keys ([`key`]) of cached cells, most recently used first.
    pub keys: Vec<String>,
}

#[derive(Debug, Clone)]
struct Entry {
    size: u64,
    last_modified: DateTime<Utc>,
    e_tag: Option<String>,
    used: u64,
}

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<String, Entry>,
    bytes: u64,
    tick: u64,
}

#[derive(Debug)]
pub struct CellCache {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    /// One download per cell at a time; readers of the same cell wait for it.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl CellCache {
    /// Open the cache in `dir`, keeping what an earlier run left there (up to `max_bytes`).
    /// `max_bytes` `None`: the default ([`DEFAULT_MAX_BYTES`] or a quarter of the free space).
    pub fn open(dir: &FsPath, max_bytes: Option<u64>) -> Result<Arc<CellCache>> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::storage(format!("cannot create cache dir {}: {e}", dir.display()))
        })?;
        let max_bytes = max_bytes.unwrap_or_else(|| {
            free_space(dir).map_or(DEFAULT_MAX_BYTES, |f| DEFAULT_MAX_BYTES.min(f / 4))
        });
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Ok(meta) = entry.metadata() else { continue };
            if name.len() == 16 && name.bytes().all(|b| b.is_ascii_hexdigit()) && meta.is_file() {
                let modified = meta.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                found.push((modified, name, meta.len()));
            } else if name.ends_with(".part") {
                let _ = std::fs::remove_file(entry.path()); // a download cut short
            }
        }
        found.sort(); // oldest first, so the newest get the highest ticks
        let cache = CellCache {
            dir: dir.to_path_buf(),
            max_bytes,
            index: Mutex::new(Index::default()),
            fetching: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        };
        for (modified, name, size) in found {
            cache.insert(
                name,
                Entry {
                    size,
                    last_modified: modified.into(),
                    e_tag: None,
                    used: 0,
                },
            );
        }
        Ok(Arc::new(cache))
    }

    pub fn summary(&self) -> CacheSummary {
        let index = self.index.lock().expect("cache index");
        let mut by_use: Vec<(&String, u64)> =
            index.entries.iter().map(|(k, e)| (k, e.used)).collect();
        by_use.sort_by_key(|b| std::cmp::Reverse(b.1));
        CacheSummary {
            bytes: index.bytes,
            max_bytes: self.max_bytes,
            cells: index.entries.len() as u64,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            keys: by_use
                .into_iter()
                .take(SUMMARY_KEYS)
                .map(|(k, _)| k.clone())
                .collect(),
        }
    }

    fn file(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// The entry for `key`, marked as just used.
    fn touch(&self, key: &str) -> Option<Entry> {
        let mut index = self.index.lock().expect("cache index");
        index.tick += 1;
        let tick = index.tick;
        let e = index.entries.get_mut(key)?;
        e.used = tick;
        Some(e.clone())
    }

    /// Add an entry, evicting the least recently used until it fits.
    fn insert(&self, key: String, mut entry: Entry) {
        let mut index = self.index.lock().expect("cache index");
        index.tick += 1;
        entry.used = index.tick;
        if let Some(old) = index.entries.remove(&key) {
            index.bytes -= old.size;
        }
        while index.bytes + entry.size > self.max_bytes {
            let Some(victim) = index
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            let e = index.entries.remove(&victim).expect("present");
            index.bytes -= e.size;
            let _ = std::fs::remove_file(self.file(&victim));
        }
        index.bytes += entry.size;
        index.entries.insert(key, entry);
    }

    /// Make sure the cell is on local disk; its entry, or `None` when it is not cached
    /// (too big for the cache).
    async fn fetch(&self, inner: &dyn ObjectStore, location: &Path) -> Result<Option<Entry>> {
        let key = key(location.as_ref());
        if let Some(e) = self.touch(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(e));
        }
        let gate = self
            .fetching
            .lock()
            .expect("cache fetching")
            .entry(key.clone())
            .or_default()
            .clone();
        let _one_at_a_time = gate.lock().await;
        let result = async {
            if let Some(e) = self.touch(&key) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(e)); // another reader fetched it while we waited
            }
            self.misses.fetch_add(1, Ordering::Relaxed);
            let got = inner.get_opts(location, GetOptions::default()).await?;
            let meta = got.meta.clone();
            if meta.size > self.max_bytes / 4 {
                return Ok(None);
            }
            // Streamed to disk, never whole in memory: a cell can be hundreds of MiB.
            let part = self.dir.join(format!("{key}.part"));
            let mut file = tokio::fs::File::create(&part).await?;
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                file.write_all(&chunk?).await?;
            }
            file.sync_all().await?;
            drop(file);
            tokio::fs::rename(&part, self.file(&key)).await?;
            let entry = Entry {
                size: meta.size,
                last_modified: meta.last_modified,
                e_tag: meta.e_tag,
                used: 0,
            };
            self.insert(key.clone(), entry.clone());
            Ok(Some(entry))
        }
        .await;
        self.fetching.lock().expect("cache fetching").remove(&key);
        result
    }

    /// Read `range` of a cached cell.
    async fn read(&self, key: &str, range: Range<u64>) -> std::io::Result<Bytes> {
        let path = self.file(key);
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let file = std::fs::File::open(path)?;
            let mut buf = vec![0u8; (range.end - range.start) as usize];
            file.read_exact_at(&mut buf, range.start)?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

fn free_space(dir: &FsPath) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0)
        .then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// The byte range `range` asks for in an object of `size` bytes.
fn resolve(range: Option<&GetRange>, size: u64) -> Option<Range<u64>> {
    let r = match range {
        None => 0..size,
        Some(GetRange::Bounded(r)) => r.start..r.end.min(size),
        Some(GetRange::Offset(o)) => *o..size,
        Some(GetRange::Suffix(n)) => size.saturating_sub(*n)..size,
    };
    (r.start < r.end || (size == 0 && r.start == 0)).then_some(r)
}

/// The meadow's store with the cell cache in front of it.
#[derive(Debug)]
pub struct CachedStore {
    pub inner: Arc<dyn ObjectStore>,
    pub cache: Arc<CellCache>,
}

impl fmt::Display for CachedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cached({})", self.inner)
    }
}

impl CachedStore {
    async fn cached_get(&self, location: &Path, options: &GetOptions) -> Result<Option<GetResult>> {
        let Some(entry) = self.cache.fetch(self.inner.as_ref(), location).await? else {
            return Ok(None);
        };
        let Some(range) = resolve(options.range.as_ref(), entry.size) else {
            return Ok(None); // a bad range: let the store give its own error
        };
        let bytes = self
            .cache
            .read(&key(location.as_ref()), range.clone())
            .await?;
        Ok(Some(GetResult {
            payload: GetResultPayload::Stream(futures::stream::once(async { Ok(bytes) }).boxed()),
            meta: ObjectMeta {
                location: location.clone(),
                last_modified: entry.last_modified,
                size: entry.size,
                e_tag: entry.e_tag,
                version: None,
            },
            range,
            attributes: Attributes::default(),
        }))
    }
}

#[async_trait]
impl ObjectStore for CachedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let plain = options.if_match.is_none()
            && options.if_none_match.is_none()
            && options.if_modified_since.is_none()
            && options.if_unmodified_since.is_none()
            && options.version.is_none()
            && !options.head;
        if plain && self.cache.max_bytes > 0 && is_cell(location) {
            match self.cached_get(location, &options).await {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                // The cache is a help, never a failure: read from the meadow instead.
                Err(e) => tracing::warn!(cell = %location, error = %e, "cell cache skipped"),
            }
        }
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    fn count_files_in(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    fn cell(i: usize) -> Path {
        Path::from(format!("h/b/f/part-{i}.parquet"))
    }

    #[tokio::test]
    async fn cells_are_served_from_disk_and_evicted_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let meadow: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        for i in 0..5 {
            meadow
                .put(&cell(i), PutPayload::from(vec![i as u8; 400]))
                .await
                .unwrap();
        }
        let cache = CellCache::open(dir.path(), Some(1900)).unwrap(); // four cells fit
        let store = CachedStore {
            inner: meadow.clone(),
            cache: cache.clone(),
        };
        let r = store.get_range(&cell(0), 10..20).await.unwrap();
        assert_eq!(r.as_ref(), &[0u8; 10]);
        // Served from disk: gone from the meadow, still readable.
        meadow.delete(&cell(0)).await.unwrap();
        let whole = store.get(&cell(0)).await.unwrap().bytes().await.unwrap();
        assert_eq!(whole.len(), 400);
        assert_eq!(cache.summary().hits, 1);
        assert_eq!(cache.summary().misses, 1);
        // Use 1, 2, 3, then 0 again: a fifth cell evicts 1, the least recently used.
        for i in [1, 2, 3, 0, 4] {
            store.get_range(&cell(i), 0..1).await.unwrap();
        }
        let s = cache.summary();
        assert_eq!((s.bytes, s.cells), (1600, 4), "{s:?}");
        assert!(
            !s.keys.contains(&key(cell(1).as_ref())),
            "1 was least recently used: {s:?}"
        );
        assert!(s.keys.contains(&key(cell(0).as_ref())));
        assert_eq!(
            count_files_in(dir.path()),
            4,
            "evicted cells leave the disk"
        );
        // Suffix ranges (Parquet footers) and a reopened cache keep working.
        let reopened = CellCache::open(dir.path(), Some(1900)).unwrap();
        assert_eq!(reopened.summary().cells, s.cells);
        let store = CachedStore {
            inner: meadow.clone(),
            cache: reopened.clone(),
        };
        let tail = store
            .get_opts(
                &cell(0),
                GetOptions {
                    range: Some(GetRange::Suffix(8)),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(tail.range, 392..400);
        assert_eq!(reopened.summary().hits, 1, "served by the reopened cache");
        // Not cells: always the meadow.
        let log = Path::from("h/b/f/_delta_log/00000000000000000000.json");
        meadow
            .put(&log, PutPayload::from_static(b"{}"))
            .await
            .unwrap();
        store.get(&log).await.unwrap();
        assert_eq!(reopened.summary().misses, 0);
    }

    #[tokio::test]
    async fn a_missing_cell_is_the_meadows_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = CachedStore {
            inner: Arc::new(InMemory::new()),
            cache: CellCache::open(dir.path(), Some(1 << 20)).unwrap(),
        };
        let e = store.get(&cell(9)).await.unwrap_err();
        assert!(matches!(e, object_store::Error::NotFound { .. }), "{e}");
    }
}
