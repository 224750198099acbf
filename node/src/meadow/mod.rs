//! The meadow: the bucket every node shares. Opens an `ObjectStore` from a URI, proves at
//! start-up that it honours conditional writes, and offers the few conditional-write helpers
//! everything above uses. Nothing above this module builds store paths by hand.

pub(crate) mod counted;
mod durable;
pub mod lease;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::Serialize;
use serde::de::DeserializeOwned;
use url::Url;

use crate::error::{Error, ErrorKind, Result};

/// The version of the documents this build writes into the meadow (registry, UDF manifests,
/// leases, heartbeats, swarm queries). The rules (docs/architecture.md, "Formats"): a build
/// reads [`OLDEST_FORMAT`] up to its own and refuses a newer document with a clear error, never
/// parsing it as its own; swarm work is shared only between nodes of one format.
pub const FORMAT_VERSION: u32 = 1;
/// The oldest format this build still reads: a release that bumps the format keeps reading the
/// one before, so versions N and N+1 can share a meadow while a swarm upgrades.
pub const OLDEST_FORMAT: u32 = 1;

/// The format this node writes: [`FORMAT_VERSION`], or in a debug build the test override
/// `APIARY_FORMAT_VERSION` (how the tests run a node of the next format beside this one).
pub fn format_version() -> u32 {
    static VERSION: OnceLock<u32> = OnceLock::new();
    *VERSION.get_or_init(|| {
        if cfg!(debug_assertions)
            && let Some(v) = std::env::var("APIARY_FORMAT_VERSION")
                .ok()
                .and_then(|v| v.parse().ok())
        {
            return v;
        }
        FORMAT_VERSION
    })
}

/// Why a document of format `v` cannot be read here; `None` when it can.
pub fn unreadable_format(v: u64) -> Option<String> {
    let own = format_version();
    if v > own as u64 {
        Some(format!(
            "written by a newer apiary (format {v}; this node reads formats {OLDEST_FORMAT} to {own}): upgrade this node"
        ))
    } else if v < OLDEST_FORMAT as u64 {
        Some(format!(
            "written by an apiary too old for this one (format {v}; this node reads formats {OLDEST_FORMAT} to {own})"
        ))
    } else {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeadowKind {
    Local,
    /// An S3-compatible store at a configured endpoint (MinIO, Garage, a LAN box).
    S3,
    /// AWS S3 itself, over the internet.
    CloudS3,
    Memory,
}

impl MeadowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MeadowKind::Local => "local",
            MeadowKind::S3 | MeadowKind::CloudS3 => "s3",
            MeadowKind::Memory => "memory",
        }
    }
}

/// An opened meadow. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Meadow {
    kind: MeadowKind,
    /// The store at the root of the file system / bucket / memory.
    store: Arc<dyn ObjectStore>,
    /// URL of the meadow root (always ends in `/`).
    root_url: Url,
    /// Path of the meadow root inside `store`.
    prefix: Path,
    /// Requests that reached the store (cache hits above it do not count).
    requests: Arc<counted::Requests>,
}

/// An object as a listing shows it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub last_modified: chrono::DateTime<chrono::Utc>,
    pub e_tag: Option<String>,
}

/// A value read with the version to use for a later put-if-match.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub value: T,
    pub version: UpdateVersion,
}

impl Meadow {
    /// Open a meadow from a URI: a bare path or `file://`, `s3://bucket/prefix`, `memory://`.
    /// S3 settings come from `options` (keys of object_store's S3 config, with or without the
    /// `aws_` prefix), then the usual `AWS_*` variables.
    pub async fn open(uri: &str, options: &BTreeMap<String, String>) -> Result<Meadow> {
        let meadow = Self::connect(uri, options)?;
        meadow.probe_conditional_writes().await?;
        Ok(meadow)
    }

    /// Build the store without touching it (no probe).
    pub fn connect(uri: &str, options: &BTreeMap<String, String>) -> Result<Meadow> {
        register_delta_handlers();
        let bad = |why: &str| {
            Error::invalid(format!(
                "bad storage URI {uri:?}: {why}; use a directory path, file:///dir, s3://bucket/prefix or memory://"
            ))
        };
        if uri.trim().is_empty() {
            return Err(bad("it is empty"));
        }
        let (scheme, rest) = match uri.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("file".to_string(), uri),
        };
        match scheme.as_str() {
            "file" => {
                if rest.is_empty() {
                    return Err(bad("no directory given"));
                }
                let dir = std::path::Path::new(rest);
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::storage(format!("cannot create meadow directory {rest}: {e}"))
                })?;
                let dir = dir.canonicalize()?;
                let mut root_url =
                    Url::from_directory_path(&dir).map_err(|_| bad("not an absolute directory"))?;
                normalise_dir_url(&mut root_url);
                let prefix = Path::from_url_path(root_url.path())
                    .map_err(|e| bad(&format!("bad path: {e}")))?;
                Ok(Meadow::counted(
                    MeadowKind::Local,
                    Arc::new(durable::DurableLocal::new()),
                    root_url,
                    prefix,
                ))
            }
            "memory" => Ok(Meadow::counted(
                MeadowKind::Memory,
                Arc::new(InMemory::new()),
                Url::parse("memory:///").expect("static URL"),
                Path::default(),
            )),
            "s3" | "s3a" => {
                let (bucket, key_prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad("no bucket name"));
                }
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                let mut allow_http = false;
                for (key, value) in options {
                    let k = key.to_ascii_lowercase();
                    if (k == "endpoint" || k == "aws_endpoint") && value.starts_with("http://") {
                        allow_http = true;
                    }
                    let parsed = k.parse().map_err(|_| {
                        Error::invalid(format!(
                            "unknown S3 option {key:?} in [meadow.options]; see object_store's AmazonS3ConfigKey for the names"
                        ))
                    })?;
                    builder = builder.with_config(parsed, value);
                }
                if std::env::var("AWS_ENDPOINT_URL")
                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                    .is_ok_and(|e| e.starts_with("http://"))
                {
                    allow_http = true;
                }
                if allow_http {
                    builder = builder.with_allow_http(true);
                }
                let store = builder.build().map_err(|e| {
                    Error::invalid(format!("cannot configure S3 meadow {uri}: {e}"))
                })?;
                let key_prefix = key_prefix.trim_matches('/');
                let mut root_url = Url::parse(&format!("s3://{bucket}/{key_prefix}"))
                    .map_err(|e| bad(&e.to_string()))?;
                normalise_dir_url(&mut root_url);
                let kind = if options.keys().any(|k| k.ends_with("endpoint"))
                    || std::env::var("AWS_ENDPOINT_URL").is_ok()
                    || std::env::var("AWS_ENDPOINT").is_ok()
                {
                    MeadowKind::S3
                } else {
                    MeadowKind::CloudS3
                };
                Ok(Meadow::counted(
                    kind,
                    Arc::new(store),
                    root_url,
                    Path::from(key_prefix),
                ))
            }
            other => Err(bad(&format!("unknown scheme {other}://"))),
        }
    }

    fn counted(kind: MeadowKind, store: Arc<dyn ObjectStore>, root_url: Url, prefix: Path) -> Self {
        let requests = Arc::new(counted::Requests::default());
        Meadow {
            kind,
            store: Arc::new(counted::Counted {
                inner: store,
                requests: requests.clone(),
            }),
            root_url,
            prefix,
            requests,
        }
    }

    /// This meadow with its store seen through `wrap` (e.g. a local cache of cells).
    pub fn wrapped(
        mut self,
        wrap: impl FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>,
    ) -> Meadow {
        self.store = wrap(self.store);
        self
    }

    /// Requests made to the store so far.
    pub fn requests(&self) -> counted::RequestCounts {
        self.requests.counts()
    }

    pub fn kind(&self) -> MeadowKind {
        self.kind
    }

    pub fn root_url(&self) -> &Url {
        &self.root_url
    }

    /// The store rooted at the file system / bucket root (what deltalake wants).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The URL of a directory below the meadow root, e.g. a frame's Delta table.
    pub fn dir_url(&self, parts: &[&str]) -> Url {
        let mut url = self.root_url.clone();
        {
            let mut segs = url.path_segments_mut().expect("hierarchical URL");
            segs.pop_if_empty();
            for p in parts {
                segs.push(p);
            }
            segs.push("");
        }
        url
    }

    /// Path of an object given relative to the meadow root.
    pub fn path(&self, rel: &str) -> Path {
        let rel = rel.trim_matches('/');
        if self.prefix.as_ref().is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// Path relative to the meadow root (inverse of [`Meadow::path`]).
    fn relative<'a>(&self, p: &'a Path) -> &'a str {
        let s = p.as_ref();
        let pre = self.prefix.as_ref();
        if pre.is_empty() {
            s
        } else {
            s.strip_prefix(pre)
                .map(|r| r.trim_start_matches('/'))
                .unwrap_or(s)
        }
    }

    /// Create `rel` only if it does not exist. `Ok(true)` when this call created it.
    pub async fn put_if_absent(&self, rel: &str, body: Bytes) -> Result<bool> {
        let opts = PutOptions::from(PutMode::Create);
        match self
            .store
            .put_opts(&self.path(rel), PutPayload::from(body), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(Error::from(e).context(format!("meadow put-if-absent {rel}"))),
        }
    }

    /// Replace `rel` only if it is still at `version`; a `Conflict` error otherwise.
    pub async fn put_if_match(&self, rel: &str, body: Bytes, version: UpdateVersion) -> Result<()> {
        let opts = PutOptions::from(PutMode::Update(version));
        self.store
            .put_opts(&self.path(rel), PutPayload::from(body), opts)
            .await
            .map(|_| ())
            .map_err(|e| Error::from(e).context(format!("meadow put-if-match {rel}")))
    }

    pub async fn put(&self, rel: &str, body: Bytes) -> Result<()> {
        self.store
            .put(&self.path(rel), PutPayload::from(body))
            .await
            .map(|_| ())
            .map_err(|e| Error::from(e).context(format!("meadow put {rel}")))
    }

    /// Read `rel`; `None` when it does not exist.
    pub async fn get(&self, rel: &str) -> Result<Option<Versioned<Bytes>>> {
        match self.store.get(&self.path(rel)).await {
            Ok(r) => {
                let version = UpdateVersion {
                    e_tag: r.meta.e_tag.clone(),
                    version: r.meta.version.clone(),
                };
                let value = r.bytes().await.map_err(Error::from)?;
                Ok(Some(Versioned { value, version }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::from(e).context(format!("meadow get {rel}"))),
        }
    }

    /// Stream object `rel` into the file `dest` (made anew, synced): for objects too big to
    /// hold in memory. The bytes written; `None` when there is no such object.
    pub async fn download(&self, rel: &str, dest: &std::path::Path) -> Result<Option<u64>> {
        use tokio::io::AsyncWriteExt;
        let got = match self.store.get(&self.path(rel)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Error::from(e).context(format!("meadow get {rel}"))),
        };
        let mut file = tokio::fs::File::create(dest).await?;
        let mut stream = got.into_stream();
        let mut size = 0;
        while let Some(chunk) = stream.try_next().await? {
            size += chunk.len() as u64;
            file.write_all(&chunk).await?;
        }
        file.sync_all().await?;
        Ok(Some(size))
    }

    /// Read a JSON document written by [`Meadow::put_json_if_absent`] and friends, checking
    /// its `format_version`.
    pub async fn get_json<T: DeserializeOwned>(&self, rel: &str) -> Result<Option<Versioned<T>>> {
        let Some(v) = self.get(rel).await? else {
            return Ok(None);
        };
        let value = decode_versioned_json(&v.value).map_err(|e| e.context(rel))?;
        Ok(Some(Versioned {
            value,
            version: v.version,
        }))
    }

    pub async fn put_json_if_absent<T: Serialize>(&self, rel: &str, value: &T) -> Result<bool> {
        self.put_if_absent(rel, encode_json(value)?).await
    }

    pub async fn delete(&self, rel: &str) -> Result<()> {
        match self.store.delete(&self.path(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::from(e).context(format!("meadow delete {rel}"))),
        }
    }

    /// Names (last path segment) of the objects directly under the folder `rel`.
    pub async fn list_names(&self, rel: &str) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .list_meta(rel)
            .await?
            .into_iter()
            .map(|l| l.name)
            .collect();
        names.sort();
        Ok(names)
    }

    /// The objects directly under the folder `rel`: name, when the store last changed it (by
    /// the store's clock) and its e-tag.
    pub async fn list_meta(&self, rel: &str) -> Result<Vec<Listed>> {
        let prefix = self.path(rel);
        let listing = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| Error::from(e).context(format!("meadow list {rel}")))?;
        Ok(listing
            .objects
            .into_iter()
            .filter_map(|o| {
                Some(Listed {
                    name: o.location.filename()?.to_string(),
                    last_modified: o.last_modified,
                    e_tag: o.e_tag,
                })
            })
            .collect())
    }

    /// Every object below the folder `rel`, as paths relative to the meadow root.
    pub async fn list_all(&self, rel: &str) -> Result<Vec<String>> {
        let prefix = self.path(rel);
        let metas: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| Error::from(e).context(format!("meadow list {rel}")))?;
        Ok(metas
            .iter()
            .map(|m| self.relative(&m.location).to_string())
            .collect())
    }

    /// Two concurrent put-if-absent calls on one fresh key: exactly one must win. A store that
    /// lets both win (or cannot do conditional writes at all) would corrupt Delta commits, so it
    /// is refused here with the reason.
    pub async fn probe_conditional_writes(&self) -> Result<()> {
        let id = format!("p-{}", uuid::Uuid::new_v4().simple());
        let rel = crate::layout::Key::Probe(id).to_string();
        let (a, b) = tokio::join!(
            self.put_if_absent(&rel, Bytes::from_static(b"a")),
            self.put_if_absent(&rel, Bytes::from_static(b"b"))
        );
        let _ = self.delete(&rel).await;
        let fix = "Apiary commits with conditional writes (If-None-Match: *). Use a store that \
                   supports them (AWS S3, MinIO, Cloudflare R2, Garage, a local directory); for an \
                   S3-compatible store that does, keep `conditional_put = \"etag\"` in \
                   [meadow.options] (env AWS_CONDITIONAL_PUT=etag)";
        match (a, b) {
            (Ok(x), Ok(y)) if x != y => Ok(()),
            (Ok(_), Ok(_)) => Err(Error::unsupported(format!(
                "meadow {} does not honour conditional writes: two writers both created {rel}. {fix}",
                self.root_url
            ))),
            (Err(e), _) | (_, Err(e)) => {
                // A store that takes a plain write of the same object refuses only the
                // condition (S3-compatible stores answer 501 Not Implemented, or worse).
                let plain = self.put(&rel, Bytes::from_static(b"p")).await;
                let _ = self.delete(&rel).await;
                if e.kind == ErrorKind::Unsupported || plain.is_ok() {
                    Err(Error::unsupported(format!(
                        "meadow {} refused a conditional write ({}). {fix}",
                        self.root_url, e.message
                    ))
                    .with_source(e))
                } else {
                    Err(e.context(format!("cannot use meadow {}", self.root_url)))
                }
            }
        }
    }
}

fn normalise_dir_url(url: &mut Url) {
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
}

/// Serialise a document for the meadow.
pub fn encode_json<T: Serialize>(value: &T) -> Result<Bytes> {
    Ok(Bytes::from(serde_json::to_vec_pretty(value)?))
}

/// Parse a meadow document, refusing a `format_version` this build does not read (it is
/// never parsed as if it were one this build knows).
pub fn decode_versioned_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let raw: serde_json::Value = serde_json::from_slice(bytes)?;
    match raw.get("format_version").and_then(|v| v.as_u64()) {
        Some(v) => match unreadable_format(v) {
            None => Ok(serde_json::from_value(raw)?),
            Some(why) => Err(Error::unsupported(why)),
        },
        None => Err(Error::invalid("document has no format_version")),
    }
}

/// Delta's default log store commits with put-if-absent, which is what we want on S3 too
/// (we verified the store honours it). Register it for the S3 schemes once.
fn register_delta_handlers() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        use deltalake::logstore::{LogStoreFactory, default_logstore, logstore_factories};
        #[derive(Debug)]
        struct ConditionalPutLogStore;
        impl LogStoreFactory for ConditionalPutLogStore {
            fn with_options(
                &self,
                prefixed_store: deltalake::logstore::ObjectStoreRef,
                root_store: deltalake::logstore::ObjectStoreRef,
                location: &Url,
                options: &deltalake::logstore::StorageConfig,
            ) -> deltalake::DeltaResult<Arc<dyn deltalake::logstore::LogStore>> {
                Ok(default_logstore(
                    prefixed_store,
                    root_store,
                    location,
                    options,
                ))
            }
        }
        for scheme in ["s3://", "s3a://"] {
            logstore_factories().insert(
                Url::parse(scheme).expect("static URL"),
                Arc::new(ConditionalPutLogStore),
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_uris_are_refused_clearly() {
        for uri in ["", "ftp://x/y", "s3://", "file://"] {
            let e = Meadow::connect(uri, &BTreeMap::new()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidInput, "{uri}: {e}");
            assert!(e.message.contains("storage URI"), "{e}");
        }
    }

    #[tokio::test]
    async fn local_and_memory_honour_conditional_writes() {
        let dir = tempfile::tempdir().unwrap();
        for uri in [dir.path().to_str().unwrap(), "memory://"] {
            let m = Meadow::open(uri, &BTreeMap::new()).await.unwrap();
            assert!(
                m.put_if_absent("a/b.json", Bytes::from_static(b"1"))
                    .await
                    .unwrap()
            );
            assert!(
                !m.put_if_absent("a/b.json", Bytes::from_static(b"2"))
                    .await
                    .unwrap()
            );
            assert_eq!(
                m.get("a/b.json").await.unwrap().unwrap().value.as_ref(),
                b"1"
            );
            assert_eq!(m.list_names("a").await.unwrap(), vec!["b.json"]);
            assert_eq!(m.list_all("a").await.unwrap(), vec!["a/b.json"]);
        }
    }

    #[test]
    fn unknown_format_version_is_an_error_not_a_panic() {
        #[derive(serde::Deserialize, Debug)]
        struct Doc {}
        let e = decode_versioned_json::<Doc>(br#"{"format_version": 99}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported);
        assert!(decode_versioned_json::<Doc>(b"{}").is_err());
        assert!(decode_versioned_json::<Doc>(b"not json").is_err());
    }
}
