//! The meadow's layout and the swarm's protocol: every object Apiary keeps under `_apiary/`
//! is named here, written by [`Key`]'s `Display` and read back by [`Key::parse`], so writer
//! and reader (coordinator and worker, a node and the clean-up chore) cannot disagree.
//! Frames' Delta tables live beside `_apiary/`, at `<hive>/<box>/<frame>/`.
//!
//! ```text
//! _apiary/registry/hives/<hive>.json               a hive
//! _apiary/registry/boxes/<hive>/<box>.json         a box
//! _apiary/registry/frames/<hive>/<box>/<f>.json    a frame's definition
//! _apiary/udfs/<name>.json, <sha256>.wasm          a UDF's manifest and module
//! _apiary/leases/<name>.json                       a swarm-wide chore's lease
//! _apiary/probe/<id>                               the conditional-write probe
//! _apiary/releases/<channel>/<arch>.json           a channel's signed release for an architecture
//! _apiary/releases/<channel>/<sha256>.deb          a released package, by its hash
//! _apiary/swarm/nodes/<node>.json                  a node's heartbeat
//! _apiary/swarm/queries/<q>/manifest.json          a shared stage: its scan and deadline
//! _apiary/swarm/queries/<q>/stage.bin              the plan fragment workers run
//! _apiary/swarm/queries/<q>/tasks/<n>-<a>-<node>.json     attempt a of task n, for node
//! _apiary/swarm/queries/<q>/status/<n>-<a>.json           its claim, then its outcome
//! _apiary/swarm/queries/<q>/results/<n>-<a>/<k>.arrow     its result parts
//! ```

use std::fmt;

use crate::names::{FrameRef, is_name};

/// Where Apiary's own objects live in a meadow.
pub const ROOT: &str = "_apiary";

/// One attempt at one task of a shared stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attempt {
    pub task: u32,
    pub attempt: u32,
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.task, self.attempt)
    }
}

/// One object under `_apiary/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Hive(String),
    Box {
        hive: String,
        box_name: String,
    },
    Frame(FrameRef),
    UdfManifest(String),
    /// A UDF's module by the hex sha256 of its bytes.
    UdfModule(String),
    Lease(String),
    Probe(String),
    /// The signed release of `channel` for a Debian architecture (`arm64`, `amd64`).
    Release {
        channel: String,
        arch: String,
    },
    /// A released package by the hex sha256 of its bytes.
    ReleasePackage {
        channel: String,
        sha256: String,
    },
    Heartbeat(String),
    Manifest(String),
    Stage(String),
    Task {
        query: String,
        attempt: Attempt,
        node: String,
    },
    Status {
        query: String,
        attempt: Attempt,
    },
    ResultPart {
        query: String,
        attempt: Attempt,
        part: u32,
    },
}

/// A folder under `_apiary/`, for listings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dir {
    Hives,
    Boxes(String),
    Frames { hive: String, box_name: String },
    Udfs,
    Nodes,
    Queries,
    Query(String),
    Results { query: String, attempt: Attempt },
}

impl fmt::Display for Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dir::Hives => write!(f, "{ROOT}/registry/hives"),
            Dir::Boxes(h) => write!(f, "{ROOT}/registry/boxes/{h}"),
            Dir::Frames { hive, box_name } => write!(f, "{ROOT}/registry/frames/{hive}/{box_name}"),
            Dir::Udfs => write!(f, "{ROOT}/udfs"),
            Dir::Nodes => write!(f, "{ROOT}/swarm/nodes"),
            Dir::Queries => write!(f, "{ROOT}/swarm/queries"),
            Dir::Query(q) => write!(f, "{}/{q}", Dir::Queries),
            Dir::Results { query, attempt } => {
                write!(f, "{}/results/{attempt}", Dir::Query(query.clone()))
            }
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = |query: &String| Dir::Query(query.clone());
        match self {
            Key::Hive(h) => write!(f, "{}/{h}.json", Dir::Hives),
            Key::Box { hive, box_name } => {
                write!(f, "{}/{box_name}.json", Dir::Boxes(hive.clone()))
            }
            Key::Frame(r) => write!(
                f,
                "{}/{}.json",
                Dir::Frames {
                    hive: r.hive.clone(),
                    box_name: r.box_name.clone()
                },
                r.frame
            ),
            Key::UdfManifest(n) => write!(f, "{}/{n}.json", Dir::Udfs),
            Key::UdfModule(sha) => write!(f, "{}/{sha}.wasm", Dir::Udfs),
            Key::Lease(n) => write!(f, "{ROOT}/leases/{n}.json"),
            Key::Probe(id) => write!(f, "{ROOT}/probe/{id}"),
            Key::Release { channel, arch } => write!(f, "{ROOT}/releases/{channel}/{arch}.json"),
            Key::ReleasePackage { channel, sha256 } => {
                write!(f, "{ROOT}/releases/{channel}/{sha256}.deb")
            }
            Key::Heartbeat(n) => write!(f, "{}/{n}.json", Dir::Nodes),
            Key::Manifest(query) => write!(f, "{}/manifest.json", q(query)),
            Key::Stage(query) => write!(f, "{}/stage.bin", q(query)),
            Key::Task {
                query,
                attempt,
                node,
            } => write!(f, "{}/tasks/{attempt}-{node}.json", q(query)),
            Key::Status { query, attempt } => write!(f, "{}/status/{attempt}.json", q(query)),
            Key::ResultPart {
                query,
                attempt,
                part,
            } => write!(
                f,
                "{}/{part}.arrow",
                Dir::Results {
                    query: query.clone(),
                    attempt: *attempt
                }
            ),
        }
    }
}

impl Key {
    /// The key a meadow path names, if it is one of ours.
    pub fn parse(path: &str) -> Option<Key> {
        let rest = path.strip_prefix(ROOT)?.strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        let name = |s: &str| is_name(s).then(|| s.to_string());
        let json = |s: &str| s.strip_suffix(".json").and_then(name);
        let key = match parts.as_slice() {
            ["registry", "hives", h] => Key::Hive(json(h)?),
            ["registry", "boxes", h, b] => Key::Box {
                hive: name(h)?,
                box_name: json(b)?,
            },
            ["registry", "frames", h, b, f] => Key::Frame(FrameRef {
                hive: name(h)?,
                box_name: name(b)?,
                frame: json(f)?,
            }),
            ["udfs", file] => match file.strip_suffix(".wasm") {
                Some(sha) if is_sha256(sha) => Key::UdfModule(sha.into()),
                Some(_) => return None,
                None => Key::UdfManifest(json(file)?),
            },
            ["leases", l] => Key::Lease(json(l)?),
            ["probe", id] => Key::Probe(name(id)?),
            ["releases", c, file] => match file.strip_suffix(".deb") {
                Some(sha) if is_sha256(sha) => Key::ReleasePackage {
                    channel: name(c)?,
                    sha256: sha.into(),
                },
                Some(_) => return None,
                None => Key::Release {
                    channel: name(c)?,
                    arch: json(file)?,
                },
            },
            ["swarm", "nodes", n] => Key::Heartbeat(json(n)?),
            ["swarm", "queries", q, rest @ ..] => {
                let query = name(q)?;
                match rest {
                    ["manifest.json"] => Key::Manifest(query),
                    ["stage.bin"] => Key::Stage(query),
                    ["tasks", t] => {
                        let (attempt, node) = parse_task(t)?;
                        Key::Task {
                            query,
                            attempt,
                            node,
                        }
                    }
                    ["status", s] => Key::Status {
                        query,
                        attempt: parse_attempt(s.strip_suffix(".json")?)?,
                    },
                    ["results", a, p] => Key::ResultPart {
                        query,
                        attempt: parse_attempt(a)?,
                        part: number(p.strip_suffix(".arrow")?)?,
                    },
                    _ => return None,
                }
            }
            _ => return None,
        };
        Some(key)
    }
}

/// The query a path under [`Dir::Queries`] belongs to, whatever the object.
pub fn query_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix(ROOT)?.strip_prefix("/swarm/queries/")?;
    rest.split('/').next().filter(|q| is_name(q))
}

fn number(s: &str) -> Option<u32> {
    // Only the canonical spelling, so that formatting a parsed key gives the same path.
    s.parse().ok().filter(|n: &u32| n.to_string() == s)
}

fn parse_attempt(s: &str) -> Option<Attempt> {
    let (task, attempt) = s.split_once('-')?;
    Some(Attempt {
        task: number(task)?,
        attempt: number(attempt)?,
    })
}

/// `<task>-<attempt>-<node>.json`: the node's name may hold `-` itself.
fn parse_task(file: &str) -> Option<(Attempt, String)> {
    let mut it = file.strip_suffix(".json")?.splitn(3, '-');
    let attempt = Attempt {
        task: number(it.next()?)?,
        attempt: number(it.next()?)?,
    };
    let node = it.next().filter(|n| is_name(n))?;
    Some((attempt, node.to_string()))
}

/// The hex sha256 of `bytes`: the name content-addressed objects go by.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The query a swarm object belongs to.
    fn query_of_key(k: &Key) -> Option<&str> {
        match k {
            Key::Manifest(q)
            | Key::Stage(q)
            | Key::Task { query: q, .. }
            | Key::Status { query: q, .. }
            | Key::ResultPart { query: q, .. } => Some(q),
            _ => None,
        }
    }

    fn name() -> impl Strategy<Value = String> {
        "[A-Za-z_][A-Za-z0-9_-]{0,20}"
    }

    fn attempt() -> impl Strategy<Value = Attempt> {
        (any::<u32>(), any::<u32>()).prop_map(|(task, attempt)| Attempt { task, attempt })
    }

    fn key() -> impl Strategy<Value = Key> {
        prop_oneof![
            name().prop_map(Key::Hive),
            (name(), name()).prop_map(|(hive, box_name)| Key::Box { hive, box_name }),
            (name(), name(), name()).prop_map(|(h, b, f)| Key::Frame(FrameRef {
                hive: h,
                box_name: b,
                frame: f
            })),
            name().prop_map(Key::UdfManifest),
            "[0-9a-f]{64}".prop_map(Key::UdfModule),
            name().prop_map(Key::Lease),
            name().prop_map(Key::Probe),
            (name(), name()).prop_map(|(channel, arch)| Key::Release { channel, arch }),
            (name(), "[0-9a-f]{64}")
                .prop_map(|(channel, sha256)| Key::ReleasePackage { channel, sha256 }),
            name().prop_map(Key::Heartbeat),
            name().prop_map(Key::Manifest),
            name().prop_map(Key::Stage),
            (name(), attempt(), name()).prop_map(|(query, attempt, node)| Key::Task {
                query,
                attempt,
                node
            }),
            (name(), attempt()).prop_map(|(query, attempt)| Key::Status { query, attempt }),
            (name(), attempt(), any::<u32>()).prop_map(|(query, attempt, part)| {
                Key::ResultPart {
                    query,
                    attempt,
                    part,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn every_key_round_trips(k in key()) {
            let path = k.to_string();
            prop_assert_eq!(Key::parse(&path), Some(k.clone()), "{}", path);
            prop_assert_eq!(query_of(&path), query_of_key(&k));
        }

        #[test]
        fn parsing_never_panics_and_is_canonical(path in "_apiary/[a-z0-9/._-]{0,60}") {
            if let Some(k) = Key::parse(&path) {
                prop_assert_eq!(k.to_string(), path);
            }
        }
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let at = Attempt {
            task: 3,
            attempt: 2,
        };
        let q = "q-ab12".to_string();
        let cases = [
            (Key::Hive("farm".into()), "_apiary/registry/hives/farm.json"),
            (
                Key::Frame("farm.sensors.air".parse().unwrap()),
                "_apiary/registry/frames/farm/sensors/air.json",
            ),
            (
                Key::Heartbeat("node-1".into()),
                "_apiary/swarm/nodes/node-1.json",
            ),
            (
                Key::Lease("compaction".into()),
                "_apiary/leases/compaction.json",
            ),
            (
                Key::Task {
                    query: q.clone(),
                    attempt: at,
                    node: "node-ab12".into(),
                },
                "_apiary/swarm/queries/q-ab12/tasks/3-2-node-ab12.json",
            ),
            (
                Key::Status {
                    query: q.clone(),
                    attempt: at,
                },
                "_apiary/swarm/queries/q-ab12/status/3-2.json",
            ),
            (
                Key::ResultPart {
                    query: q,
                    attempt: at,
                    part: 0,
                },
                "_apiary/swarm/queries/q-ab12/results/3-2/0.arrow",
            ),
        ];
        for (key, path) in cases {
            assert_eq!(key.to_string(), path);
        }
        for bad in [
            "_apiary/swarm/queries/q/tasks/x-2-node.json",
            "_apiary/swarm/queries/q/tasks/3-2-node",
            "_apiary/swarm/queries/q/status/03-2.json",
            "_apiary/udfs/NOTHEX.wasm",
            "farm/sensors/air/_delta_log/0.json",
        ] {
            assert_eq!(Key::parse(bad), None, "{bad}");
        }
    }
}
