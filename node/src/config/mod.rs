//! Configuration: `apiary.toml`, then `APIARY_*` environment, then command-line flags.
//! Every key is declared once, in a [`section!`] below: its doc, type, default and
//! environment variable. Defaults, environment overrides and the documentation's key list
//! (`docs/configuration.md`, checked by a test) follow from those declarations.

mod device;
mod units;
mod update;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use self::device::{DeviceConfig, WifiConfig};
pub use self::units::{ByteSize, Period};
pub use self::update::{UpdateConfig, public_key};
use crate::error::{Error, Result};

/// Where a config file is looked for when neither `--config` nor `APIARY_CONFIG` names one.
pub const SYSTEM_CONFIG: &str = "/etc/apiary/apiary.toml";

/// One declared key: where it lives, the variable that overrides it, what it does.
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    pub section: &'static str,
    pub name: &'static str,
    pub env: Option<&'static str>,
    pub doc: &'static str,
}

impl KeyDoc {
    /// `section.name`
    pub fn path(&self) -> String {
        format!("{}.{}", self.section, self.name)
    }
}

/// Declares a config section once: the struct (every field optional in the file), its
/// `Default`, and its keys' documentation with their environment variables.
macro_rules! section {
    (
        $(#[doc = $sdoc:literal])*
        $section:literal => pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $(#[env = $env:literal])?
                pub $field:ident : $ty:ty = $default:expr,
            )*
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, Deserialize, Serialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: $default, )* }
            }
        }

        impl $name {
            pub const KEYS: &[KeyDoc] = &[
                $( KeyDoc {
                    section: $section,
                    name: stringify!($field),
                    env: section!(@env $($env)?),
                    doc: concat!($($doc),*),
                }, )*
            ];
        }
    };
    (@env) => { None };
    (@env $env:literal) => { Some($env) };
}
pub(crate) use section;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub meadow: MeadowConfig,
    pub bees: BeesConfig,
    pub colony: ColonyConfig,
    pub mqtt: MqttConfig,
    pub ingest: IngestConfig,
    pub udf: UdfConfig,
    pub http: HttpConfig,
    pub swarm: SwarmConfig,
    pub cache: CacheConfig,
    pub log: LogConfig,
    pub device: DeviceConfig,
    pub update: UpdateConfig,
}

fn secs(s: u64) -> Period {
    Period(std::time::Duration::from_secs(s))
}

fn millis(ms: u64) -> Period {
    Period(std::time::Duration::from_millis(ms))
}

section! {
    "node" => pub struct NodeConfig {
        /// A friendly name shown in status; defaults to the host name.
        #[env = "APIARY_NODE_NAME"]
        pub name: Option<String> = None,
        /// Node-local state: node id, scratch dirs, caches, and the default local meadow.
        #[env = "APIARY_STATE_DIR"]
        pub state_dir: PathBuf = PathBuf::from("apiary-data"),
        /// Override the node id kept in the state dir.
        #[env = "APIARY_NODE_ID"]
        pub node_id: Option<String> = None,
        /// Longest a stop may take: services still busy then are cut short (the WAL keeps
        /// uncommitted messages) and the heartbeat is removed.
        pub shutdown_timeout: Period = secs(10),
    }
}

section! {
    "meadow" => pub struct MeadowConfig {
        /// `file:///dir` or a bare path, `s3://bucket/prefix`, `memory://`.
        /// Defaults to `<state_dir>/meadow`.
        #[env = "APIARY_STORAGE"]
        pub uri: Option<String> = None,
        /// Store options (S3: `endpoint`, `region`, `access_key_id`, `secret_access_key`,
        /// `allow_http`, `conditional_put`, ...). `AWS_*` variables fill in what is not set.
        pub options: BTreeMap<String, String> = BTreeMap::new(),
    }
}

section! {
    "bees" => pub struct BeesConfig {
        /// Worker slots; defaults to the number of CPU cores.
        #[env = "APIARY_BEES"]
        pub count: Option<usize> = None,
        /// Memory budget of one bee, e.g. `"64MiB"`; defaults to usable memory / bees.
        #[env = "APIARY_MEMORY_PER_BEE"]
        pub memory_per_bee: Option<ByteSize> = None,
        /// Share of the machine's (or cgroup's) memory the node may use.
        pub usable_fraction: f64 = 0.7,
        /// Deadline of one task (a query, a write), e.g. `"300s"`, `"5m"`.
        #[env = "APIARY_TASK_TIMEOUT"]
        pub task_timeout: Period = secs(300),
        /// Tasks that may wait for a free bee; default 4 × bees.
        pub queue_limit: Option<usize> = None,
    }
}

section! {
    /// Band thresholds and weights of the colony model.
    "colony" => pub struct ColonyConfig {
        /// Below this a node is cold (idle: polls for work faster).
        pub cold: f64 = 0.15,
        /// From here a node is warm.
        pub warm: f64 = 0.45,
        /// From here a node is hot: it takes no swarm tasks.
        pub hot: f64 = 0.65,
        /// From here a node is critical: new queries get Busy, ingest stops acking.
        pub critical: f64 = 0.85,
        /// The temperature the node aims for (reported; the swarm planner prefers nodes below it).
        pub setpoint: f64 = 0.4,
        /// How fast an idle node cools: seconds for the excess over the current load to fall by 1/e.
        pub cooling_secs: f64 = 2.0,
        /// Attempts a task gets (here and on other nodes) before it is abandoned.
        pub trial_limit: u32 = 3,
    }
}

section! {
    "mqtt" => pub struct MqttConfig {
        /// An external broker, `mqtt://host:port` or `mqtts://host:8883` (TLS); none: the
        /// node's own listener takes publishes (`listen`, `tls_listen`).
        #[env = "APIARY_MQTT_URL"]
        pub url: Option<String> = None,
        /// PEM file with the CA certificate(s) an `mqtts://` broker's certificate must chain
        /// to; default: the system's trusted roots.
        pub ca_file: Option<PathBuf> = None,
        /// Where the embedded listener takes MQTT (`host:port`); empty: no plain listener.
        #[env = "APIARY_MQTT_LISTEN"]
        pub listen: String = "127.0.0.1:1883".into(),
        /// Where it takes MQTT over TLS, e.g. `0.0.0.0:8883`; empty: none.
        #[env = "APIARY_MQTT_TLS_LISTEN"]
        pub tls_listen: String = String::new(),
        /// PEM certificate chain for `tls_listen`; with `tls_key`. Default: a self-signed
        /// certificate made at first start in `<state_dir>/mqtt-tls/` (fingerprint in
        /// `cert.sha256` there).
        pub tls_cert: Option<PathBuf> = None,
        /// PEM private key for `tls_cert`.
        pub tls_key: Option<PathBuf> = None,
        /// Let clients publish without a user name. Default: only when every listener is on
        /// loopback (as Mosquitto 2).
        pub allow_anonymous: Option<bool> = None,
        /// Who may publish: `[[mqtt.users]]` tables with `name`, `password_hash` (argon2, from
        /// `apiary mqtt passwd <name>`) and `publish` (topic filters, default all). With a
        /// listener beyond loopback and no users, the user `device` logs in with the password
        /// made at first start in `<state_dir>/mqtt-password`.
        pub users: Vec<MqttUser> = vec![],
        /// Publisher connections at once on the embedded listener.
        pub max_connections: usize = 64,
        /// Bytes of received messages not yet in the write-ahead log, across the embedded
        /// listener's connections; when they are all taken, connections wait.
        pub inflight_bytes: ByteSize = ByteSize(16 << 20),
        /// Client id (stable, for a persistent session) at an external broker; default
        /// `apiary-<node id>`.
        pub client_id: Option<String> = None,
        /// The external broker's user name for this node.
        pub username: Option<String> = None,
        /// Its password (never logged).
        pub password: Option<String> = None,
        /// Messages not yet acked at once: what a publisher may send ahead on the embedded
        /// listener (its receive maximum), or the external broker may send us.
        pub inflight: u16 = 1000,
    }
}

/// One `[[mqtt.users]]` entry: a publisher's credential on the embedded listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttUser {
    pub name: String,
    /// An argon2 hash in PHC form (`$argon2id$v=19$...`), from `apiary mqtt passwd`.
    pub password_hash: String,
    /// Topic filters it may publish to.
    #[serde(default = "all_topics")]
    pub publish: Vec<String>,
}

fn all_topics() -> Vec<String> {
    vec!["#".to_string()]
}

section! {
    "ingest" => pub struct IngestConfig {
        /// Run ingestion in `apiary node`.
        pub enabled: bool = true,
        /// The route `apiary/<hive>/<box>/<frame>` (JSON payloads) besides the configured ones.
        pub default_route: bool = true,
        /// The hives the default route takes (and so may create frames in); a topic of another
        /// hive goes to `apiary.ingest.unroutable`. Empty: any hive.
        pub default_route_hives: Vec<String> = vec![],
        /// Create a missing frame from the first messages' inferred schema.
        pub auto_create: bool = true,
        /// Longest a message waits before its cell is committed.
        pub max_latency: Period = secs(5),
        /// Messages held in memory for their cells, all frames together: above this, the
        /// biggest buffers commit early (smaller cells, which compaction merges later).
        pub buffer_max: ByteSize = ByteSize(32 << 20),
        /// Larger payloads are rejected.
        pub max_payload: ByteSize = ByteSize(256 << 10),
        /// Stop acking (the broker holds messages) when the write-ahead log is this large.
        pub wal_max: ByteSize = ByteSize(256 << 20),
        /// How often acks held back (backpressure, a busy broker connection) are tried again.
        pub flush_interval: Period = millis(5),
        /// Group commit of the write-ahead log: at most this many messages per write. A group
        /// is written as soon as the log is free, with what came while the last was written.
        pub flush_messages: usize = 1000,
        /// With an external broker, subscribe as `$share/<group>/<filter>` so that the nodes of
        /// a swarm split the messages. Empty: plain subscriptions.
        pub shared_group: String = "apiary".into(),
        /// How often small cells of ingested frames are merged (by the node holding the
        /// swarm's compaction lease), then cells no longer referenced are deleted.
        pub compact_interval: Period = secs(600),
        /// Removed cells are kept this long for readers of older versions (time travel).
        pub vacuum_retention: Period = secs(24 * 3600),
        /// Routes besides the default one: `[[ingest.routes]]` tables.
        pub routes: Vec<RouteConfig> = vec![],
    }
}

/// One `[[ingest.routes]]` entry: messages on `topic` go to `frame`.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// What a field the frame has no column for does to its message.
    #[serde(default)]
    pub new_fields: NewFields,
}

/// What ingestion does with a payload field the frame has no column for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NewFields {
    /// Add a nullable column of the field's type (a Delta schema change), then store it.
    #[default]
    Evolve,
    /// Send the message to the rejects frame, naming the fields.
    Reject,
    /// Store the message without those fields.
    Ignore,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
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

section! {
    "udf" => pub struct UdfConfig {
        /// Time one UDF call (one record batch) may take, e.g. `"5s"`.
        #[env = "APIARY_UDF_TIMEOUT"]
        pub timeout: Period = secs(5),
    }
}

section! {
    "http" => pub struct HttpConfig {
        /// Serve the HTTP API in `apiary node`.
        pub enabled: bool = true,
        /// Where it listens; port 0 picks a free one (logged in the "ready" line).
        #[env = "APIARY_HTTP_LISTEN"]
        pub listen: String = "127.0.0.1:8080".into(),
        /// The bearer token clients must send; default: made at first start and kept in
        /// `<state_dir>/api-token`.
        pub token: Option<String> = None,
        /// PEM certificate chain: with `tls_key`, serve HTTPS instead of HTTP.
        pub tls_cert: Option<PathBuf> = None,
        /// PEM private key of `tls_cert`.
        pub tls_key: Option<PathBuf> = None,
        /// Largest SQL request body.
        pub max_sql: ByteSize = ByteSize(1 << 20),
        /// Largest UDF upload (a WebAssembly component).
        pub max_udf: ByteSize = ByteSize(32 << 20),
    }
}

/// Shortest token accepted from the config (a generated one has 64 hex digits).
pub const MIN_TOKEN_LEN: usize = 16;

section! {
    "swarm" => pub struct SwarmConfig {
        /// Beat this node's heart into the meadow, take part in distributed queries.
        pub enabled: bool = true,
        /// Time between heartbeats; default 2s on a local or LAN store, 5s on cloud S3.
        pub heartbeat_interval: Option<Period> = None,
        /// Missed intervals before a node is suspect.
        pub suspect_after: u32 = 3,
        /// Missed intervals before a node is dead (its heartbeat and queries are cleaned up).
        pub dead_after: u32 = 10,
        /// A scan at least this big is shared with other nodes that have free bees.
        pub distribute_min_bytes: ByteSize = ByteSize(64 << 20),
        /// Attempts of a swarm task (on other nodes) before the coordinator runs it itself.
        pub task_trials: u32 = 3,
        /// Time a worker has for one task before it is given out again; default the bees'
        /// task timeout / (task_trials + 1), so all attempts fit in the query's deadline.
        pub task_timeout: Option<Period> = None,
        /// Shortest work-polling interval: polling speeds up to it when tasks are found.
        pub forage_min: Period = millis(100),
        /// Longest work-polling interval: polling slows down to it while idle.
        pub forage_max: Period = secs(15),
    }
}

section! {
    "cache" => pub struct CacheConfig {
        /// Where cells fetched from the meadow are kept; default `<state_dir>/cache`.
        #[env = "APIARY_CACHE_DIR"]
        pub dir: Option<PathBuf> = None,
        /// Most bytes kept; default 2 GiB or a quarter of the disk's free space, whichever is
        /// less. `0` turns the cache off.
        pub max_bytes: Option<ByteSize> = None,
    }
}

section! {
    "log" => pub struct LogConfig {
        /// `pretty` or `json`.
        #[env = "APIARY_LOG_FORMAT"]
        pub format: LogFormat = LogFormat::Pretty,
        /// A `tracing` filter such as `info` or `apiary=debug`.
        #[env = "APIARY_LOG"]
        pub level: String = DEFAULT_LOG.into(),
    }
}

/// Our own info, others' warnings. Delta's commit retries under contention are routine, the
/// Delta kernel logs a time-travel request past the latest version (which the user gets as
/// our error) as an error, and the embedded broker logs every closed connection as one.
pub const DEFAULT_LOG: &str = "warn,apiary=info,deltalake_core::kernel::transaction=error,\
     buoyant_kernel::snapshot::builder=off";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

impl ColonyConfig {
    pub fn validate(&self) -> Result<()> {
        let ok = 0.0 <= self.cold
            && self.cold <= self.warm
            && self.warm <= self.hot
            && self.hot <= self.critical
            && self.critical <= 1.0;
        if !ok {
            return Err(Error::invalid(format!(
                "colony thresholds must rise within [0, 1]: cold {} ≤ warm {} ≤ hot {} ≤ critical {}",
                self.cold, self.warm, self.hot, self.critical
            )));
        }
        if self.trial_limit == 0 {
            return Err(Error::invalid("colony.trial_limit must be at least 1"));
        }
        if self.cooling_secs.is_nan() || self.cooling_secs <= 0.0 {
            return Err(Error::invalid("colony.cooling_secs must be positive"));
        }
        Ok(())
    }
}

impl Config {
    /// Every declared key, section by section.
    pub fn keys() -> impl Iterator<Item = &'static KeyDoc> {
        [
            NodeConfig::KEYS,
            MeadowConfig::KEYS,
            BeesConfig::KEYS,
            ColonyConfig::KEYS,
            MqttConfig::KEYS,
            IngestConfig::KEYS,
            UdfConfig::KEYS,
            HttpConfig::KEYS,
            SwarmConfig::KEYS,
            CacheConfig::KEYS,
            LogConfig::KEYS,
            DeviceConfig::KEYS,
            UpdateConfig::KEYS,
        ]
        .into_iter()
        .flatten()
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

    /// Environment overrides: every key declared with an `env` name. `get` is the
    /// environment (a parameter so tests need not touch the process environment). An empty
    /// value unsets the key (back to its default).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        for key in Config::keys() {
            let (Some(var), Some(value)) = (key.env, key.env.and_then(&get)) else {
                continue;
            };
            self.set(&key.path(), &value)
                .map_err(|e| e.context(format!("{var}={value:?}")))?;
        }
        self.validate()
    }

    /// Set a dotted key from text as a user writes it: the value is taken as a string, else
    /// as a TOML literal (a number, a boolean); empty unsets the key.
    fn set(&mut self, dotted: &str, value: &str) -> Result<()> {
        let table = toml::Table::try_from(&*self)
            .map_err(|e| Error::internal(format!("config as TOML: {e}")))?;
        let with = |v: Option<toml::Value>| -> Result<Config> {
            let mut t = table.clone();
            let (section, key) = dotted.split_once('.').expect("keys are section.key");
            let s = t
                .entry(section)
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .expect("a section is a table");
            match v {
                Some(v) => s.insert(key.into(), v),
                None => s.remove(key),
            };
            toml::Value::Table(t)
                .try_into()
                .map_err(|e: toml::de::Error| Error::invalid(e.to_string().trim().to_string()))
        };
        *self = if value.is_empty() {
            with(None)?
        } else {
            with(Some(toml::Value::String(value.into()))).or_else(|e| {
                let literal = toml::from_str::<toml::Table>(&format!("v = {value}"))
                    .ok()
                    .and_then(|mut t| t.remove("v"));
                match literal {
                    Some(v) => with(Some(v)),
                    None => Err(e),
                }
            })?
        };
        Ok(())
    }

    /// Rules across keys and ranges serde cannot state.
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
        self.update.validate()?;
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
mod tests;
