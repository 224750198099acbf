//! Configuration: `apiary.toml`, then `APIARY_*` environment, then command-line flags.
//! Every key has a default, so a node runs with no file at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Where a config file is looked for when neither `--config` nor `APIARY_CONFIG` names one.
pub const SYSTEM_CONFIG: &str = "/etc/apiary/apiary.toml";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub meadow: MeadowConfig,
    pub bees: BeesConfig,
    pub colony: crate::bees::ColonyConfig,
    pub mqtt: MqttConfig,
    pub ingest: IngestConfig,
    pub udf: UdfConfig,
    pub http: HttpConfig,
    pub swarm: SwarmConfig,
    pub cache: CacheConfig,
    pub log: LogConfig,
    pub device: DeviceConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwarmConfig {
    /// Beat this node's heart into the meadow, take part in distributed queries.
    pub enabled: bool,
    /// Time between heartbeats; default 2s on a local or LAN store, 5s on cloud S3.
    pub heartbeat_interval: Option<Duration>,
    /// Missed intervals before a node is suspect, then dead.
    pub suspect_after: u32,
    pub dead_after: u32,
    /// A scan at least this big is shared with other nodes that have free bees.
    pub distribute_min_bytes: ByteSize,
    /// Attempts of a swarm task (on other nodes) before the coordinator runs it itself.
    pub task_trials: u32,
    /// Time a worker has for one task before it is given out again; default the bees'
    /// task timeout / (task_trials + 1), so all attempts fit in the query's deadline.
    pub task_timeout: Option<Duration>,
    /// Bounds of the work-polling interval: it shrinks towards `forage_min` when tasks are
    /// found and grows towards `forage_max` while idle.
    pub forage_min: Duration,
    pub forage_max: Duration,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            enabled: true,
            heartbeat_interval: None,
            suspect_after: 3,
            dead_after: 10,
            distribute_min_bytes: ByteSize(64 << 20),
            task_trials: 3,
            task_timeout: None,
            forage_min: Duration(std::time::Duration::from_millis(100)),
            forage_max: Duration(std::time::Duration::from_secs(15)),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Where cells fetched from the meadow are kept; default `<state_dir>/cache`.
    pub dir: Option<PathBuf>,
    /// Most bytes kept; default 2 GiB or a quarter of the disk's free space, whichever is
    /// less. `0` turns the cache off.
    pub max_bytes: Option<ByteSize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve the HTTP API in `apiary node`.
    pub enabled: bool,
    /// Where it listens; port 0 picks a free one (logged in the "ready" line).
    pub listen: String,
    /// The bearer token clients must send; default: made at first start and kept in
    /// `<state_dir>/api-token`.
    pub token: Option<String>,
    /// PEM certificate chain and private key: serve HTTPS instead of HTTP.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Largest SQL request body.
    pub max_sql: ByteSize,
    /// Largest UDF upload (a WebAssembly component).
    pub max_udf: ByteSize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: "127.0.0.1:8080".into(),
            token: None,
            tls_cert: None,
            tls_key: None,
            max_sql: ByteSize(1 << 20),
            max_udf: ByteSize(32 << 20),
        }
    }
}

/// Shortest token accepted from the config (a generated one has 64 hex digits).
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// An external broker, `mqtt://host:port` or `mqtts://host:8883` (TLS); none: start the
    /// embedded broker.
    pub url: Option<String>,
    /// PEM file with the CA certificate(s) an `mqtts://` broker's certificate must chain
    /// to; default: the system's trusted roots.
    pub ca_file: Option<PathBuf>,
    /// Where the embedded broker listens.
    pub listen: String,
    /// Client id (stable, for a persistent session); default `apiary-<node id>`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Messages the broker may send before we ack (our ack window).
    pub inflight: u16,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: None,
            ca_file: None,
            listen: "127.0.0.1:1883".into(),
            client_id: None,
            username: None,
            password: None,
            inflight: 1000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Run ingestion in `apiary node`.
    pub enabled: bool,
    /// The route `apiary/<hive>/<box>/<frame>` (JSON payloads) besides the configured ones.
    pub default_route: bool,
    /// Create a missing frame from the first messages' inferred schema.
    pub auto_create: bool,
    /// Longest a message waits before its cell is committed.
    pub max_latency: Duration,
    /// Larger payloads are rejected.
    pub max_payload: ByteSize,
    /// Stop acking (the broker holds messages) when the write-ahead log is this large.
    pub wal_max: ByteSize,
    /// Group commit of the write-ahead log: at most this long, or this many messages.
    pub flush_interval: Duration,
    pub flush_messages: usize,
    /// With an external broker, subscribe as `$share/<group>/<filter>` so that the nodes of
    /// a swarm split the messages. Empty: plain subscriptions.
    pub shared_group: String,
    /// How often small cells of ingested frames are merged (by the node holding the
    /// swarm's compaction lease), then cells no longer referenced are deleted.
    pub compact_interval: Duration,
    /// Removed cells are kept this long for readers of older versions (time travel).
    pub vacuum_retention: Duration,
    pub routes: Vec<RouteConfig>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            enabled: true,
            default_route: true,
            auto_create: true,
            max_latency: Duration(std::time::Duration::from_secs(5)),
            max_payload: ByteSize(256 << 10),
            wal_max: ByteSize(256 << 20),
            flush_interval: Duration(std::time::Duration::from_millis(5)),
            flush_messages: 1000,
            shared_group: "apiary".into(),
            compact_interval: Duration(std::time::Duration::from_secs(600)),
            vacuum_retention: Duration(std::time::Duration::from_secs(24 * 3600)),
            routes: vec![],
        }
    }
}

/// One `[[ingest.routes]]` entry: messages on `topic` go to `frame`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// MQTT topic filter, e.g. `sensors/+/temp`.
    pub topic: String,
    /// `hive.box.frame`
    pub frame: String,
    #[serde(default)]
    pub format: PayloadFormat,
    /// Columns filled from topic levels: `device = "{1}"` takes the second level.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// A timestamp column set to the time the node received the message.
    #[serde(default)]
    pub received_at: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// One JSON object per message.
    #[default]
    Json,
    /// JSON objects, one per line.
    Jsonl,
    /// One CSV line per message, columns in the frame's order.
    Csv,
    /// InfluxDB line protocol, one or more lines: `measurement,tag=v field=1.5,n=3i ts_ns`
    /// gives columns `measurement`, the tags (text), the fields and `time`.
    Influx,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// A friendly name shown in status; defaults to the host name.
    pub name: Option<String>,
    /// Node-local state: node id, scratch dirs, caches, and the default local meadow.
    pub state_dir: PathBuf,
    /// Override the node id kept in the state dir.
    pub node_id: Option<String>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: None,
            state_dir: PathBuf::from("apiary-data"),
            node_id: None,
        }
    }
}

/// The appliance's own settings, applied by the Pi image's boot script (`apiary config get`);
/// the node itself does not use them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfig {
    /// The board's host name (also the node's default name).
    pub hostname: Option<String>,
    /// Public keys allowed to log in as root over SSH, one `ssh-…` line each.
    pub ssh_authorized_keys: Vec<String>,
    pub wifi: Option<WifiConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WifiConfig {
    pub ssid: String,
    /// The passphrase (8 to 63 characters) or the 64 hex digits of the key.
    pub psk: String,
    /// Regulatory domain, two letters (ISO 3166), e.g. "GB".
    pub country: Option<String>,
}

impl DeviceConfig {
    fn validate(&self) -> Result<()> {
        if let Some(h) = &self.hostname {
            let label_ok = |l: &str| {
                (1..=63).contains(&l.len())
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            };
            if h.len() > 253 || !h.split('.').all(label_ok) {
                return Err(Error::invalid(format!(
                    "device.hostname = {h:?}: use letters, digits and inner hyphens \
                     (dot-separated labels of at most 63)"
                )));
            }
        }
        for key in &self.ssh_authorized_keys {
            let kind = key.split_whitespace().next().unwrap_or("");
            let known =
                kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-");
            if !known || key.chars().any(char::is_control) {
                return Err(Error::invalid(format!(
                    "device.ssh_authorized_keys: {:?} is not one public key line \
                     (like \"ssh-ed25519 AAAA… me@laptop\")",
                    key.chars().take(40).collect::<String>()
                )));
            }
        }
        if let Some(w) = &self.wifi {
            if w.ssid.is_empty() || w.ssid.len() > 32 || w.ssid.chars().any(char::is_control) {
                return Err(Error::invalid(
                    "device.wifi.ssid: 1 to 32 bytes without control characters",
                ));
            }
            let hex_key = w.psk.len() == 64 && w.psk.chars().all(|c| c.is_ascii_hexdigit());
            let passphrase = (8..=63).contains(&w.psk.len())
                && w.psk.chars().all(|c| c.is_ascii() && !c.is_ascii_control());
            if !(hex_key || passphrase) {
                return Err(Error::invalid(
                    "device.wifi.psk: a passphrase of 8 to 63 printable ASCII characters, \
                     or 64 hex digits",
                ));
            }
            if let Some(c) = &w.country
                && !(c.len() == 2 && c.chars().all(|c| c.is_ascii_uppercase()))
            {
                return Err(Error::invalid(format!(
                    "device.wifi.country = {c:?}: two capital letters, like \"GB\" or \"US\""
                )));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeadowConfig {
    /// `file:///dir` or a bare path, `s3://bucket/prefix`, `memory://`.
    /// Defaults to `<state_dir>/meadow`.
    pub uri: Option<String>,
    /// Store options (S3: `endpoint`, `region`, `access_key_id`, `secret_access_key`,
    /// `allow_http`, `conditional_put`, ...). `AWS_*` variables fill in what is not set.
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UdfConfig {
    /// Time one UDF call (one record batch) may take, e.g. `"5s"`.
    pub timeout: Duration,
}

impl Default for UdfConfig {
    fn default() -> Self {
        UdfConfig {
            timeout: Duration(std::time::Duration::from_secs(5)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BeesConfig {
    /// Worker slots; defaults to the number of CPU cores.
    pub count: Option<usize>,
    /// Memory budget of one bee, e.g. `"64MiB"`; defaults to usable memory / bees.
    pub memory_per_bee: Option<ByteSize>,
    /// Share of the machine's (or cgroup's) memory the node may use.
    pub usable_fraction: f64,
    /// Deadline of one task (a query, a write), e.g. `"300s"`, `"5m"`.
    pub task_timeout: Duration,
    /// Tasks that may wait for a free bee; default 4 × bees.
    pub queue_limit: Option<usize>,
}

impl Default for BeesConfig {
    fn default() -> Self {
        BeesConfig {
            count: None,
            memory_per_bee: None,
            usable_fraction: 0.7,
            task_timeout: Duration(std::time::Duration::from_secs(300)),
            queue_limit: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `apiary=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            level: DEFAULT_LOG.into(),
        }
    }
}

/// Our own info, others' warnings. Delta's commit retries under contention are routine, and
/// the embedded broker logs every closed connection as an error.
pub const DEFAULT_LOG: &str =
    "warn,apiary=info,deltalake_core::kernel::transaction=error,rumqttd=off";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// `"64 MiB"` → (64.0, "MiB"): a number, then a unit (possibly empty).
fn number_and_unit(s: &str) -> Option<(f64, &str)> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    Some((num.parse().ok()?, unit.trim()))
}

/// A size in bytes written as `64MiB`, `1GiB`, `512MB`, `4096`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::invalid(format!("bad size {s:?}: write it like 64MiB, 1GiB or 4096"));
        let (n, unit) = number_and_unit(s).ok_or_else(bad)?;
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            _ => return Err(bad()),
        };
        if !n.is_finite() || n < 0.0 {
            return Err(bad());
        }
        Ok(ByteSize((n * mult as f64) as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A duration written as `300s`, `5m`, `250ms`, `1h` (a bare number is seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration(pub std::time::Duration);

impl std::fmt::Display for Duration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl std::str::FromStr for Duration {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(format!(
                "bad duration {s:?}: write it like 300s, 5m or 250ms"
            ))
        };
        let (n, unit) = number_and_unit(s).ok_or_else(bad)?;
        let secs = match unit {
            "" | "s" => n,
            "ms" => n / 1000.0,
            "m" | "min" => n * 60.0,
            "h" => n * 3600.0,
            _ => return Err(bad()),
        };
        if !secs.is_finite() || secs <= 0.0 {
            return Err(bad());
        }
        Ok(Duration(std::time::Duration::from_secs_f64(secs)))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(f64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => n.to_string().parse().map_err(serde::de::Error::custom),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Config {
    /// Read the file named by `path`, else by `APIARY_CONFIG`, else `/etc/apiary/apiary.toml`
    /// when it exists, else start from defaults; then apply `APIARY_*` variables.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let mut config = match Self::file(path) {
            Some(p) => Self::from_file(&p)?,
            None => Config::default(),
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        Ok(config)
    }

    /// The file `load` reads: `path`, else `APIARY_CONFIG`, else the system one if present.
    pub fn file(path: Option<&Path>) -> Option<PathBuf> {
        let env_path = std::env::var_os("APIARY_CONFIG").map(PathBuf::from);
        path.map(Path::to_path_buf)
            .or(env_path)
            .or_else(|| Some(PathBuf::from(SYSTEM_CONFIG)).filter(|p| p.exists()))
    }

    /// The value at a dotted key (`device.wifi.ssid`) as written in the TOML `text`, for
    /// scripts: a string as is, an array one item a line, anything else as TOML; `None` when
    /// the key is not set.
    pub fn lookup(text: &str, key: &str) -> Result<Option<String>> {
        let mut value: toml::Value = toml::from_str(text).map_err(toml_error)?;
        for part in key.split('.') {
            match value.get(part) {
                Some(v) => value = v.clone(),
                None => return Ok(None),
            }
        }
        let line = |v: &toml::Value| match v {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Ok(Some(match &value {
            toml::Value::Array(items) => items.iter().map(line).collect::<Vec<_>>().join("\n"),
            v => line(v),
        }))
    }

    /// `lookup` in the file at `path`.
    pub fn lookup_file(path: &Path, key: &str) -> Result<Option<String>> {
        Self::lookup(&read_text(path)?, key)
    }

    pub fn from_file(path: &Path) -> Result<Config> {
        Self::from_toml(&read_text(path)?)
            .map_err(|e| e.context(format!("config {}", path.display())))
    }

    pub fn from_toml(text: &str) -> Result<Config> {
        toml::from_str(text).map_err(toml_error)
    }

    /// Environment overrides. `get` is the environment (a parameter so tests need not touch
    /// the process environment).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        if let Some(v) = get("APIARY_STORAGE") {
            self.meadow.uri = Some(v);
        }
        if let Some(v) = get("APIARY_STATE_DIR") {
            self.node.state_dir = PathBuf::from(v);
        }
        if let Some(v) = get("APIARY_CACHE_DIR") {
            self.cache.dir = Some(PathBuf::from(v));
        }
        if let Some(v) = get("APIARY_NODE_NAME") {
            self.node.name = Some(v);
        }
        if let Some(v) = get("APIARY_BEES") {
            let n: usize = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                Error::invalid(format!("APIARY_BEES={v:?}: need a whole number ≥ 1"))
            })?;
            self.bees.count = Some(n);
        }
        if let Some(v) = get("APIARY_MEMORY_PER_BEE") {
            self.bees.memory_per_bee = Some(
                v.parse()
                    .map_err(|e: Error| e.context("APIARY_MEMORY_PER_BEE"))?,
            );
        }
        if let Some(v) = get("APIARY_TASK_TIMEOUT") {
            self.bees.task_timeout = v
                .parse()
                .map_err(|e: Error| e.context("APIARY_TASK_TIMEOUT"))?;
        }
        if let Some(v) = get("APIARY_UDF_TIMEOUT") {
            self.udf.timeout = v
                .parse()
                .map_err(|e: Error| e.context("APIARY_UDF_TIMEOUT"))?;
        }
        if let Some(v) = get("APIARY_NODE_ID") {
            self.node.node_id = Some(v);
        }
        if let Some(v) = get("APIARY_MQTT_URL") {
            self.mqtt.url = Some(v).filter(|s| !s.is_empty());
        }
        if let Some(v) = get("APIARY_MQTT_LISTEN") {
            self.mqtt.listen = v;
        }
        if let Some(v) = get("APIARY_HTTP_LISTEN") {
            self.http.listen = v;
        }
        if let Some(v) = get("APIARY_LOG_FORMAT") {
            self.log.format = match v.as_str() {
                "pretty" => LogFormat::Pretty,
                "json" => LogFormat::Json,
                _ => {
                    return Err(Error::invalid(format!(
                        "APIARY_LOG_FORMAT={v:?}: use pretty or json"
                    )));
                }
            };
        }
        if let Some(v) = get("APIARY_LOG") {
            self.log.level = v;
        }
        self.validate()
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.bees.usable_fraction > 0.0 && self.bees.usable_fraction <= 1.0) {
            return Err(Error::invalid(format!(
                "bees.usable_fraction = {}: must be in (0, 1]",
                self.bees.usable_fraction
            )));
        }
        if self.bees.count == Some(0) {
            return Err(Error::invalid("bees.count = 0: need at least one bee"));
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(Error::invalid(format!(
                "http.listen = {:?}: write an address and port like 127.0.0.1:8080",
                self.http.listen
            )));
        }
        if let Some(t) = &self.http.token
            && (t.len() < MIN_TOKEN_LEN || !t.chars().all(|c| c.is_ascii_graphic()))
        {
            return Err(Error::invalid(format!(
                "http.token must be at least {MIN_TOKEN_LEN} printable \
                 characters without spaces"
            )));
        }
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            return Err(Error::invalid(
                "http.tls_cert and http.tls_key go together: set both for HTTPS, or neither",
            ));
        }
        let s = &self.swarm;
        if s.heartbeat_interval
            .is_some_and(|d| d.0 < std::time::Duration::from_millis(100))
        {
            return Err(Error::invalid(
                "swarm.heartbeat_interval must be at least 100ms",
            ));
        }
        if s.suspect_after == 0 || s.dead_after <= s.suspect_after {
            return Err(Error::invalid(format!(
                "swarm.suspect_after = {} and swarm.dead_after = {}: need 0 < suspect_after < dead_after",
                s.suspect_after, s.dead_after
            )));
        }
        if s.task_trials == 0 {
            return Err(Error::invalid("swarm.task_trials = 0: need at least one"));
        }
        if s.forage_min.0.is_zero() || s.forage_max.0 < s.forage_min.0 {
            return Err(Error::invalid(
                "swarm.forage_min must be above 0 and at most swarm.forage_max",
            ));
        }
        self.device.validate()?;
        self.colony.validate()
    }

    /// The meadow URI: configured, or a local directory under the state dir.
    pub fn meadow_uri(&self) -> String {
        self.meadow
            .uri
            .clone()
            .unwrap_or_else(|| self.node.state_dir.join("meadow").display().to_string())
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::invalid(format!("cannot read config {}: {e}", path.display())))
}

fn toml_error(e: toml::de::Error) -> Error {
    Error::invalid(e.to_string().trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_settings_are_checked() {
        let ok = |t: &str| Config::from_toml(t).and_then(|c| c.validate().map(|_| c));
        let c = ok(r#"
            [device]
            hostname = "hive-7"
            ssh_authorized_keys = ["ssh-ed25519 AAAAC3Nza me@laptop"]
            wifi = { ssid = "Bee Net", psk = "pollen-2026", country = "GB" }
            "#)
        .unwrap();
        assert_eq!(c.device.hostname.as_deref(), Some("hive-7"));
        assert!(ok("[device.wifi]\nssid = \"x\"\npsk = \"").is_err());
        let hex = "ab".repeat(32);
        ok(&format!("[device.wifi]\nssid = \"x\"\npsk = \"{hex}\"")).unwrap();
        let bad = |t: &str| ok(t).unwrap_err().to_string();
        assert!(bad("[device]\nhostname = \"-pi\"").contains("device.hostname"));
        assert!(bad("[device]\nhostname = \"pi_4\"").contains("device.hostname"));
        assert!(bad("[device]\nssh_authorized_keys = [\"hello\"]").contains("public key"));
        assert!(bad("[device.wifi]\nssid = \"x\"\npsk = \"short\"").contains("8 to 63"));
        assert!(bad("[device.wifi]\nssid = \"\"\npsk = \"12345678\"").contains("ssid"));
        let country = "[device.wifi]\nssid = \"x\"\npsk = \"12345678\"\ncountry = \"uk\"";
        assert!(bad(country).contains("two capital letters"));
        assert!(bad("[device]\nwifi_ssid = \"x\"").contains("unknown field"));
    }

    #[test]
    fn the_cache_dir_comes_from_the_environment_too() {
        let mut c = Config::from_toml("[cache]\ndir = \"/srv/cache\"").unwrap();
        assert_eq!(c.cache.dir.as_deref(), Some(Path::new("/srv/cache")));
        c.apply_env(|k| (k == "APIARY_CACHE_DIR").then(|| "/var/cache/apiary".into()))
            .unwrap();
        assert_eq!(c.cache.dir.as_deref(), Some(Path::new("/var/cache/apiary")));
    }

    #[test]
    fn lookup_reads_dotted_keys_for_scripts() {
        let text = r#"
            [device]
            hostname = "hive-7"
            ssh_authorized_keys = ["ssh-ed25519 A a@b", "ssh-rsa B c@d"]
            [device.wifi]
            ssid = "Bee \"Net\""
            [bees]
            count = 2
            "#;
        let get = |k: &str| Config::lookup(text, k).unwrap();
        assert_eq!(get("device.hostname").as_deref(), Some("hive-7"));
        assert_eq!(get("device.wifi.ssid").as_deref(), Some("Bee \"Net\""));
        assert_eq!(
            get("device.ssh_authorized_keys").as_deref(),
            Some("ssh-ed25519 A a@b\nssh-rsa B c@d")
        );
        assert_eq!(get("bees.count").as_deref(), Some("2"));
        assert_eq!(get("device.wifi.psk"), None);
        assert_eq!(get("nothing.here"), None);
        assert!(Config::lookup("[device", "device.hostname").is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!("64MiB".parse::<ByteSize>().unwrap(), ByteSize(64 << 20));
        assert_eq!("1 GiB".parse::<ByteSize>().unwrap(), ByteSize(1 << 30));
        assert_eq!("4096".parse::<ByteSize>().unwrap(), ByteSize(4096));
        assert_eq!("1.5kib".parse::<ByteSize>().unwrap(), ByteSize(1536));
        for bad in ["", "MiB", "12 parsecs", "-3MiB"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn durations_parse() {
        let d = |s: &str| s.parse::<Duration>().map(|d| d.0);
        assert_eq!(d("300s").unwrap(), std::time::Duration::from_secs(300));
        assert_eq!(d("5m").unwrap(), std::time::Duration::from_secs(300));
        assert_eq!(d("250ms").unwrap(), std::time::Duration::from_millis(250));
        assert_eq!(d("2").unwrap(), std::time::Duration::from_secs(2));
        for bad in ["", "0s", "soon", "-1s", "5 fortnights"] {
            assert!(d(bad).is_err(), "{bad}");
        }
        let c =
            Config::from_toml("[bees]\ntask_timeout = \"2s\"\n[colony]\ncritical = 0.5").unwrap();
        assert_eq!(c.bees.task_timeout.0, std::time::Duration::from_secs(2));
        assert_eq!(c.colony.critical, 0.5);
        assert_eq!(Config::default().udf.timeout.to_string(), "5s");
        let mut c = Config::from_toml("[udf]\ntimeout = \"750ms\"").unwrap();
        assert_eq!(c.udf.timeout.to_string(), "750ms");
        c.apply_env(|k| (k == "APIARY_UDF_TIMEOUT").then(|| "2s".into()))
            .unwrap();
        assert_eq!(c.udf.timeout.0, std::time::Duration::from_secs(2));
    }

    #[test]
    fn toml_and_env_layer() {
        let mut c = Config::from_toml(
            r#"
            [meadow]
            uri = "s3://b/p"
            options = { endpoint = "http://127.0.0.1:9000" }
            [bees]
            count = 2
            memory_per_bee = "64MiB"
            "#,
        )
        .unwrap();
        assert_eq!(c.bees.memory_per_bee, Some(ByteSize(64 << 20)));
        c.apply_env(|k| (k == "APIARY_BEES").then(|| "3".to_string()))
            .unwrap();
        assert_eq!(c.bees.count, Some(3));
        assert_eq!(c.meadow_uri(), "s3://b/p");
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        let e = Config::from_toml("[meadow]\nurl = \"x\"").unwrap_err();
        assert!(e.message.contains("unknown field `url`"), "{e}");
        let e = Config::from_toml("[bees]\nmemory_per_bee = \"lots\"").unwrap_err();
        assert!(e.message.contains("bad size"), "{e}");
        let mut c = Config::default();
        let e = c
            .apply_env(|k| (k == "APIARY_BEES").then(|| "zero".into()))
            .unwrap_err();
        assert!(e.message.contains("APIARY_BEES"), "{e}");
        let e = c
            .apply_env(|k| (k == "APIARY_UDF_TIMEOUT").then(|| "forever".into()))
            .unwrap_err();
        assert!(e.message.contains("APIARY_UDF_TIMEOUT"), "{e}");
        let e = Config::from_toml("[udf]\nmemory = \"1GiB\"").unwrap_err();
        assert!(e.message.contains("unknown field `memory`"), "{e}");
    }

    #[test]
    fn bad_http_settings_are_refused() {
        let bad = |toml: &str| {
            Config::from_toml(toml)
                .unwrap()
                .validate()
                .unwrap_err()
                .message
        };
        assert!(bad("[http]\nlisten = \"localhost\"").contains("http.listen"));
        assert!(bad("[http]\ntoken = \"short\"").contains("at least 16"));
        assert!(bad("[http]\ntoken = \"has spaces in the token!\"").contains("without spaces"));
        assert!(bad("[http]\ntls_cert = \"c.pem\"").contains("go together"));
        let mut c = Config::default();
        let e = c
            .apply_env(|k| (k == "APIARY_HTTP_LISTEN").then(|| "nowhere".into()))
            .unwrap_err();
        assert!(e.message.contains("http.listen"), "{e}");
        let ok = Config::from_toml("[http]\nlisten = \"0.0.0.0:0\"\ntoken = \"0123456789abcdef\"");
        ok.unwrap().validate().unwrap();
    }

    #[test]
    fn bad_swarm_settings_are_refused() {
        let bad = |toml: &str| {
            Config::from_toml(toml)
                .unwrap()
                .validate()
                .unwrap_err()
                .message
        };
        assert!(bad("[swarm]\nheartbeat_interval = \"10ms\"").contains("at least 100ms"));
        assert!(bad("[swarm]\nsuspect_after = 5\ndead_after = 5").contains("suspect_after <"));
        assert!(bad("[swarm]\nsuspect_after = 0").contains("suspect_after"));
        assert!(bad("[swarm]\ntask_trials = 0").contains("at least one"));
        assert!(bad("[swarm]\nforage_min = \"20s\"").contains("forage_max"));
        let e = Config::from_toml("[swarm]\nheartbeat = \"2s\"").unwrap_err();
        assert!(e.message.contains("unknown field `heartbeat`"), "{e}");
        let e = Config::from_toml("[cache]\nmax_bytes = \"huge\"").unwrap_err();
        assert!(e.message.contains("bad size"), "{e}");
        let ok = Config::from_toml(
            "[swarm]\nheartbeat_interval = \"5s\"\ndistribute_min_bytes = \"1GiB\"\n\
             [cache]\nmax_bytes = \"0\"",
        );
        ok.unwrap().validate().unwrap();
    }
}
