//! Heartbeats and the world view. Every node writes `_apiary/swarm/nodes/<id>.json` each
//! interval; a reader lists them and judges each node by how long ago its heartbeat last
//! changed. A change is timed by the reader's own clock when it has looked before, so a
//! writer whose clock is off is judged by what others see, not by what it claims; on a first
//! look the store's modification time stands in (the store's clock, not the writer's).

use std::collections::HashMap;
use std::time::Duration;

// tokio's clock, so that tests can judge ages on paused time.
use tokio::time::Instant;

use serde::{Deserialize, Serialize};

use crate::cache::CacheSummary;
use crate::error::{ErrorKind, Result};
use crate::meadow::{Meadow, decode_versioned_json, format_version};

pub fn heartbeat_path(node_id: &str) -> String {
    crate::layout::Key::Heartbeat(node_id.into()).to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Heartbeat {
    pub format_version: u32,
    pub node_id: String,
    pub name: String,
    pub version: String,
    /// The writer's heartbeat interval: readers judge its age in these.
    pub interval_ms: u64,
    pub bees: usize,
    pub idle_bees: usize,
    pub memory_budget: u64,
    pub memory_used: u64,
    pub temperature: f64,
    pub band: String,
    /// Whether it claims swarm tasks now (not hot, not critical).
    pub accepts_tasks: bool,
    pub cache: CacheSummary,
    pub tasks_done: u64,
    pub tasks_failed: u64,
    pub started_at_ms: u64,
    /// The writer's clock at the beat (shown, not trusted).
    pub beat_ms: u64,
    /// Counts up with every beat, so each beat changes the object.
    pub seq: u64,
}

impl Heartbeat {
    pub fn new(node_id: &str, name: &str) -> Heartbeat {
        Heartbeat {
            format_version: format_version(),
            node_id: node_id.into(),
            name: name.into(),
            version: crate::release::running_version().into(),
            interval_ms: 0,
            bees: 0,
            idle_bees: 0,
            memory_budget: 0,
            memory_used: 0,
            temperature: 0.0,
            band: String::new(),
            accepts_tasks: false,
            cache: CacheSummary::default(),
            tasks_done: 0,
            tasks_failed: 0,
            started_at_ms: 0,
            beat_ms: 0,
            seq: 0,
        }
    }
}

impl Heartbeat {
    /// What can be trusted of a heartbeat in a format this node does not read: its format,
    /// name, version and interval (for judging its age); it is shown, and given no work.
    fn foreign(id: &str, bytes: &[u8]) -> Heartbeat {
        let raw: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
        let text = |k: &str| raw.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let mut b = Heartbeat::new(id, &text("name").unwrap_or_else(|| id.into()));
        b.format_version = raw
            .get("format_version")
            .and_then(|v| v.as_u64())
            .unwrap_or_default() as u32;
        b.version = text("version").unwrap_or_default();
        b.interval_ms = raw
            .get("interval_ms")
            .and_then(|v| v.as_u64())
            .unwrap_or_default();
        b
    }

    /// Why this node and that one share no swarm work (`None` when they do): work is shared
    /// only between nodes of one format, so neither reads the other's plans and results.
    pub fn left_out(&self) -> Option<String> {
        let own = format_version();
        let v = self.format_version;
        let (node, version) = (&self.node_id, &self.version);
        match v.cmp(&own) {
            std::cmp::Ordering::Equal => None,
            std::cmp::Ordering::Greater => Some(format!(
                "node {node} (apiary {version}) writes meadow format {v}, newer than this node's {own}: \
                 they share no swarm work until this node is upgraded"
            )),
            std::cmp::Ordering::Less => Some(format!(
                "node {node} (apiary {version}) writes meadow format {v}, older than this node's {own}: \
                 they share no swarm work until that node is upgraded"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Alive,
    Suspect,
    Dead,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Alive => "alive",
            NodeState::Suspect => "suspect",
            NodeState::Dead => "dead",
        }
    }
}

/// A node as this one sees it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub beat: Heartbeat,
    /// Time since its heartbeat last changed.
    pub age: Duration,
    pub state: NodeState,
}

#[derive(Debug)]
struct Seen {
    /// The heartbeat's tag when last listed, and when last read (its `beat`).
    e_tag: String,
    read_tag: String,
    changed_at: Instant,
    looked_at: Instant,
    beat: Heartbeat,
}

/// What a node has seen of the others' heartbeats.
#[derive(Debug, Default)]
pub struct World {
    seen: HashMap<String, Seen>,
    refreshed: Option<Instant>,
    nodes: Vec<NodeView>,
}

impl World {
    /// The last view if it is younger than `max_age`.
    pub fn fresh(&self, max_age: Duration) -> Option<Vec<NodeView>> {
        self.refreshed
            .filter(|t| t.elapsed() < max_age)
            .map(|_| self.nodes.clone())
    }

    /// Look at the heartbeats again: one listing, and a read of each one that changed
    /// (only of new ones when `contents` is false: enough to judge who is alive).
    pub async fn refresh(
        &mut self,
        meadow: &Meadow,
        suspect_after: u32,
        dead_after: u32,
        contents: bool,
    ) -> Result<Vec<NodeView>> {
        let listed = meadow
            .list_meta(&crate::layout::Dir::Nodes.to_string())
            .await?;
        let now = Instant::now();
        let wall = crate::clock::utc();
        let mut present = Vec::with_capacity(listed.len());
        for l in listed {
            let Some(id) = l.name.strip_suffix(".json") else {
                continue;
            };
            present.push(id.to_string());
            let e_tag = l
                .e_tag
                .clone()
                .unwrap_or_else(|| l.last_modified.timestamp_micros().to_string());
            // By the store's clock against ours; never older than our last look. S3 gives
            // whole seconds: the change may have come up to a second later.
            let resolution = if l.last_modified.timestamp_subsec_nanos() == 0 {
                Duration::from_secs(1)
            } else {
                Duration::ZERO
            };
            let store_age = (wall - l.last_modified)
                .to_std()
                .unwrap_or_default()
                .saturating_sub(resolution);
            if let Some(s) = self.seen.get_mut(id) {
                if s.e_tag != e_tag {
                    let age = store_age.min(now - s.looked_at);
                    s.changed_at = now.checked_sub(age).unwrap_or(now);
                    s.e_tag = e_tag.clone();
                }
                if !contents || s.read_tag == e_tag {
                    continue;
                }
            }
            let Some(doc) = meadow.get(&heartbeat_path(id)).await? else {
                continue; // removed since the listing
            };
            let beat: Heartbeat = match decode_versioned_json(&doc.value) {
                Ok(b) => b,
                Err(e) if e.kind == ErrorKind::Unsupported => Heartbeat::foreign(id, &doc.value),
                Err(e) => {
                    tracing::warn!(node = id, error = %e, "unreadable heartbeat skipped");
                    continue;
                }
            };
            match self.seen.get_mut(id) {
                Some(s) => {
                    s.beat = beat;
                    s.read_tag = e_tag;
                }
                None => {
                    if let Some(why) = beat.left_out() {
                        tracing::warn!(node = id, "{why}");
                    }
                    self.seen.insert(
                        id.to_string(),
                        Seen {
                            read_tag: e_tag.clone(),
                            e_tag,
                            changed_at: now.checked_sub(store_age).unwrap_or(now),
                            looked_at: now,
                            beat,
                        },
                    );
                }
            }
        }
        self.seen.retain(|id, _| present.contains(id));
        let mut nodes: Vec<NodeView> = self
            .seen
            .values_mut()
            .map(|s| {
                s.looked_at = now;
                let age = now - s.changed_at;
                let interval = Duration::from_millis(s.beat.interval_ms.max(100));
                let state = if age >= interval * dead_after {
                    NodeState::Dead
                } else if age >= interval * suspect_after {
                    NodeState::Suspect
                } else {
                    NodeState::Alive
                };
                NodeView {
                    beat: s.beat.clone(),
                    age,
                    state,
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.beat.node_id.cmp(&b.beat.node_id));
        if contents {
            self.nodes = nodes.clone();
            self.refreshed = Some(now);
        }
        Ok(nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meadow::encode_json;

    async fn beat(meadow: &Meadow, id: &str, seq: u64, beat_ms: u64) {
        let mut b = Heartbeat::new(id, id);
        b.interval_ms = 100;
        b.seq = seq;
        b.beat_ms = beat_ms;
        meadow
            .put(&heartbeat_path(id), encode_json(&b).unwrap())
            .await
            .unwrap();
    }

    fn state(nodes: &[NodeView], id: &str) -> NodeState {
        nodes.iter().find(|n| n.beat.node_id == id).unwrap().state
    }

    #[tokio::test(start_paused = true)]
    async fn age_is_judged_by_changes_seen_not_by_the_writers_clock() {
        let meadow = Meadow::open("memory://", &Default::default())
            .await
            .unwrap();
        let mut world = World::default();
        // One writer's clock is decades behind, the other's a day ahead.
        let day = 86_400_000;
        let ahead = crate::clock::now_ms() + day;
        beat(&meadow, "behind", 1, 0).await;
        beat(&meadow, "ahead", 1, ahead).await;
        let nodes = world.refresh(&meadow, 3, 10, true).await.unwrap();
        assert_eq!(state(&nodes, "behind"), NodeState::Alive);
        assert_eq!(state(&nodes, "ahead"), NodeState::Alive);
        // No change for 3 intervals: suspect, whatever the writer's clock said.
        tokio::time::sleep(Duration::from_millis(350)).await;
        beat(&meadow, "behind", 2, 0).await;
        let nodes = world.refresh(&meadow, 3, 10, true).await.unwrap();
        assert_eq!(state(&nodes, "behind"), NodeState::Alive, "it beat again");
        assert_eq!(state(&nodes, "ahead"), NodeState::Suspect);
        tokio::time::sleep(Duration::from_millis(700)).await;
        let nodes = world.refresh(&meadow, 3, 10, true).await.unwrap();
        assert_eq!(state(&nodes, "ahead"), NodeState::Dead);
        assert_eq!(state(&nodes, "behind"), NodeState::Suspect);
        // A removed heartbeat leaves the view; an unreadable one is skipped, not fatal.
        meadow.delete(&heartbeat_path("ahead")).await.unwrap();
        meadow
            .put(
                &heartbeat_path("junk"),
                bytes::Bytes::from_static(b"{not json"),
            )
            .await
            .unwrap();
        let nodes = world.refresh(&meadow, 3, 10, true).await.unwrap();
        let ids: Vec<&str> = nodes.iter().map(|n| n.beat.node_id.as_str()).collect();
        assert_eq!(ids, ["behind"]);
    }
}
