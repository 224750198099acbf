//! A local meadow that survives a power cut.
//!
//! object_store's local backend writes a staging file and renames (or links) it into place
//! without fsync. On ext4 the new name reaches the journal within seconds while the data
//! waits for write-back, so after a power cut committed Delta log entries and cells were
//! there with no content and the frame could not be opened. Here an object's bytes are on
//! the disk before its name appears, and the name (and any new directory) is on the disk
//! before the call returns. Reads, listings and deletes are object_store's own.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    UploadPart,
};

const STORE: &str = "DurableLocal";

#[derive(Debug, Default)]
pub struct DurableLocal {
    inner: LocalFileSystem,
}

impl fmt::Display for DurableLocal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DurableLocal")
    }
}

fn io_error(path: &FsPath, source: std::io::Error) -> object_store::Error {
    if source.kind() == ErrorKind::AlreadyExists {
        return object_store::Error::AlreadyExists {
            path: path.display().to_string(),
            source: Box::new(source),
        };
    }
    object_store::Error::Generic {
        store: STORE,
        source: format!("{}: {source}", path.display()).into(),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> object_store::Result<T> + Send + 'static,
) -> object_store::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| object_store::Error::Generic {
            store: STORE,
            source: Box::new(e),
        })?
}

fn sync_dir(dir: &FsPath) -> object_store::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

/// Create `dir` and its missing ancestors, each one's name made durable in its parent.
fn make_dirs(dir: &FsPath) -> object_store::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.is_dir() {
        missing.push(at);
        at = match at.parent() {
            Some(p) => p,
            None => break,
        };
    }
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error(d, e)),
        }
        if let Some(parent) = d.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

fn parent(path: &FsPath) -> object_store::Result<&FsPath> {
    path.parent().ok_or_else(|| object_store::Error::Generic {
        store: STORE,
        source: format!("{} has no parent directory", path.display()).into(),
    })
}

/// A new staging file next to `dest`, named as object_store's local backend names its own
/// (`<name>#<n>`), so listings never show it.
fn staging_file(dest: &FsPath) -> object_store::Result<(File, PathBuf)> {
    make_dirs(parent(dest)?)?;
    for n in 1u32.. {
        let mut name = dest.as_os_str().to_owned();
        name.push(format!("#{n}"));
        let path = PathBuf::from(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error(&path, e)),
        }
    }
    unreachable!("u32 staging names exhausted")
}

/// Put the synced staging file at `dest` (replacing it, or only if absent), then sync the
/// directory so the name survives a power cut.
fn publish(staging: &FsPath, dest: &FsPath, replace: bool) -> object_store::Result<()> {
    let placed = if replace {
        std::fs::rename(staging, dest)
    } else {
        std::fs::hard_link(staging, dest)
    };
    if !replace || placed.is_err() {
        let _ = std::fs::remove_file(staging);
    }
    placed.map_err(|e| io_error(dest, e))?;
    sync_dir(parent(dest)?)
}

impl DurableLocal {
    pub fn new() -> Self {
        Self::default()
    }

    async fn put_result(&self, location: &Path) -> object_store::Result<PutResult> {
        let meta = self.inner.head(location).await?;
        Ok(PutResult {
            e_tag: meta.e_tag,
            version: meta.version,
        })
    }

    /// Run a rename or copy of object_store's (hard links: the bytes are already synced)
    /// with the destination's directories made durably first and its name after.
    async fn place<F>(&self, to: &Path, op: F) -> object_store::Result<()>
    where
        F: std::future::Future<Output = object_store::Result<()>>,
    {
        let dir = parent(&self.inner.path_to_filesystem(to)?)?.to_path_buf();
        let made = dir.clone();
        blocking(move || make_dirs(&made)).await?;
        op.await?;
        blocking(move || sync_dir(&dir)).await
    }
}

#[async_trait]
impl ObjectStore for DurableLocal {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let replace = match opts.mode {
            PutMode::Overwrite => true,
            PutMode::Create => false,
            // Not offered locally; the caller's fallback handles the refusal.
            PutMode::Update(_) => return self.inner.put_opts(location, payload, opts).await,
        };
        if !opts.attributes.is_empty() {
            return self.inner.put_opts(location, payload, opts).await;
        }
        let dest = self.inner.path_to_filesystem(location)?;
        blocking(move || {
            let (mut file, staging) = staging_file(&dest)?;
            let written = payload
                .iter()
                .try_for_each(|chunk| file.write_all(chunk))
                .and_then(|()| file.sync_data());
            if let Err(e) = written {
                let _ = std::fs::remove_file(&staging);
                return Err(io_error(&staging, e));
            }
            drop(file);
            publish(&staging, &dest, replace)
        })
        .await?;
        self.put_result(location).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        if !opts.attributes.is_empty() {
            return self.inner.put_multipart_opts(location, opts).await;
        }
        let dest = self.inner.path_to_filesystem(location)?;
        let (file, staging) = blocking({
            let dest = dest.clone();
            move || staging_file(&dest)
        })
        .await?;
        Ok(Box::new(Upload {
            store: self.inner.clone(),
            location: location.clone(),
            dest,
            staging: Some(staging),
            file: Arc::new(file),
            offset: 0,
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        // A delete lost in a power cut only leaves an object for the next vacuum.
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
        self.place(to, self.inner.copy_opts(from, to, options))
            .await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.place(to, self.inner.rename_opts(from, to, options))
            .await
    }
}

/// A multipart upload into a staging file, synced and renamed into place on completion.
#[derive(Debug)]
struct Upload {
    store: LocalFileSystem,
    location: Path,
    dest: PathBuf,
    staging: Option<PathBuf>,
    file: Arc<File>,
    offset: u64,
}

#[async_trait]
impl MultipartUpload for Upload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let offset = self.offset;
        self.offset += data.content_length() as u64;
        let file = self.file.clone();
        let staging = self.staging.clone().unwrap_or_default();
        blocking(move || {
            let mut at = offset;
            for chunk in data.iter() {
                file.write_all_at(chunk, at)
                    .map_err(|e| io_error(&staging, e))?;
                at += chunk.len() as u64;
            }
            Ok(())
        })
        .boxed()
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let staging = self.staging.take().ok_or(object_store::Error::Generic {
            store: STORE,
            source: "upload already completed or aborted".into(),
        })?;
        let (file, dest) = (self.file.clone(), self.dest.clone());
        blocking(move || {
            file.sync_data().map_err(|e| io_error(&staging, e))?;
            publish(&staging, &dest, true)
        })
        .await?;
        let meta = self.store.head(&self.location).await?;
        Ok(PutResult {
            e_tag: meta.e_tag,
            version: meta.version,
        })
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        if let Some(staging) = self.staging.take() {
            blocking(move || std::fs::remove_file(&staging).map_err(|e| io_error(&staging, e)))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn store_in(dir: &FsPath) -> (DurableLocal, Path) {
        let prefix = Path::from_filesystem_path(dir).expect("absolute temp dir");
        (DurableLocal::new(), prefix)
    }

    #[tokio::test]
    async fn puts_create_directories_and_refuse_a_second_create() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, root) = store_in(tmp.path());
        let at = root.join("a").join("b").join("x.json");
        let create = PutOptions::from(PutMode::Create);
        store
            .put_opts(&at, PutPayload::from_static(b"one"), create.clone())
            .await
            .unwrap();
        let again = store
            .put_opts(&at, PutPayload::from_static(b"two"), create)
            .await;
        assert!(
            matches!(again, Err(object_store::Error::AlreadyExists { .. })),
            "{again:?}"
        );
        store
            .put(&at, PutPayload::from_static(b"three"))
            .await
            .unwrap();
        let body = store.get(&at).await.unwrap().bytes().await.unwrap();
        assert_eq!(&body[..], b"three");
        // No staging file is left or listed.
        let names: Vec<_> = std::fs::read_dir(tmp.path().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.json")]);
    }

    #[tokio::test]
    async fn a_multipart_upload_appears_whole_on_completion_only() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, root) = store_in(tmp.path());
        let at = root.clone().join("cells").join("c.parquet");
        let mut up = store.put_multipart(&at).await.unwrap();
        let (p1, p2) = (
            up.put_part(PutPayload::from(vec![1u8; 70_000])),
            up.put_part(PutPayload::from(vec![2u8; 5])),
        );
        p2.await.unwrap();
        p1.await.unwrap();
        let listed: Vec<_> = store.list(Some(&root)).try_collect().await.unwrap();
        assert!(listed.is_empty(), "{listed:?}");
        let done = up.complete().await.unwrap();
        assert!(done.e_tag.is_some());
        let body = store.get(&at).await.unwrap().bytes().await.unwrap();
        assert_eq!(body.len(), 70_005);
        assert_eq!(body[69_999], 1);
        assert_eq!(&body[70_000..], &[2u8; 5]);
    }

    #[tokio::test]
    async fn rename_if_absent_places_once() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, root) = store_in(tmp.path());
        let (tmp_a, tmp_b) = (root.clone().join("t1"), root.clone().join("t2"));
        let commit = root.join("_delta_log").join("00000000000000000001.json");
        store
            .put(&tmp_a, PutPayload::from_static(b"a"))
            .await
            .unwrap();
        store
            .put(&tmp_b, PutPayload::from_static(b"b"))
            .await
            .unwrap();
        store.rename_if_not_exists(&tmp_a, &commit).await.unwrap();
        let second = store.rename_if_not_exists(&tmp_b, &commit).await;
        assert!(
            matches!(second, Err(object_store::Error::AlreadyExists { .. })),
            "{second:?}"
        );
        let body = store.get(&commit).await.unwrap().bytes().await.unwrap();
        assert_eq!(&body[..], b"a");
    }
}
