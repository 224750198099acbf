//! Heartbeats and the world view. Every node writes `_apiary/swarm/nodes/<id>.json` each
//! interval; a reader lists them and judges each node by how long ago its heartbeat last
//! changed. A change is timed by the reader's own clock when it has looked before, so a
//! writer whose clock is off is judged by what others see, not by what it claims; on a first
//! look the store's modification time stands in (the store's clock, not the writer's).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cache::CacheSummary;
use crate::error::Result;
use crate::meadow::{FORMAT_VERSION, Meadow, decode_versioned_json};

pub const NODES: &str = "_apiary/swarm/nodes";

pub fn heartbeat_path(node_id: &str) -> String {
    format!("{NODES}/{node_id}.json")
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
            format_version: FORMAT_VERSION,
            node_id: node_id.into(),
            name: name.into(),
            version: env!("CARGO_PKG_VERSION").into(),
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
    e_tag: String,
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

    /// Look at the heartbeats again: one listing, and a read of each one that changed.
    pub async fn refresh(
        &mut self,
        meadow: &Meadow,
        suspect_after: u32,
        dead_after: u32,
    ) -> Result<Vec<NodeView>> {
        let listed = meadow.list_meta(NODES).await?;
        let now = Instant::now();
        let wall = chrono::Utc::now();
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
            if self.seen.get(id).is_some_and(|s| s.e_tag == e_tag) {
                continue;
            }
            let Some(doc) = meadow.get(&heartbeat_path(id)).await? else {
                continue; // removed since the listing
            };
            let beat: Heartbeat = match decode_versioned_json(&doc.value) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(node = id, error = %e, "unreadable heartbeat skipped");
                    continue;
                }
            };
            // By the store's clock against ours; never older than our last look.
            let store_age = (wall - l.last_modified).to_std().unwrap_or_default();
            let age = match self.seen.get(id) {
                Some(s) => store_age.min(now - s.looked_at),
                None => store_age,
            };
            self.seen.insert(
                id.to_string(),
                Seen {
                    e_tag,
                    changed_at: now.checked_sub(age).unwrap_or(now),
                    looked_at: now,
                    beat,
                },
            );
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
        self.nodes = nodes.clone();
        self.refreshed = Some(now);
        Ok(nodes)
    }
}
