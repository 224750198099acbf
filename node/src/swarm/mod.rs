//! The swarm: nodes that share a meadow and nothing else. Each beats its heart into the
//! meadow, keeps a view of the others, shares big scans with them (coordinator side in
//! `stage`), and takes on the tasks others give it (`worker`). One node at a time, the holder
//! of the clean-up lease, removes dead nodes' heartbeats and abandoned queries' objects.

pub mod stage;
mod worker;
pub mod world;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use self::world::{Heartbeat, NodeState, NodeView, World};
use crate::bees::BeePool;
use crate::cache::CellCache;
use crate::clock::now_ms;
use crate::config::SwarmConfig;
use crate::error::Result;
use crate::frames::Frames;
use crate::layout::{self, Dir, Key};
use crate::meadow::{Meadow, MeadowKind, encode_json, format_version};
use crate::sql::fragment::ScanSpec;
use crate::udf::Udfs;

const CLEANUP_LEASE: &str = "swarm-cleanup";

/// What a coordinator writes for one shared stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    format_version: u32,
    query_id: String,
    coordinator: String,
    created_ms: u64,
    /// After this (coordinator's clock) the query's objects are abandoned.
    deadline_ms: u64,
    scan: ScanSpec,
    udfs: Vec<String>,
}

/// One attempt of one task: which cells, for which node. Named
/// `tasks/<task>-<attempt>-<node>.json` so a listing tells workers what is theirs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TaskDoc {
    format_version: u32,
    task: u32,
    attempt: u32,
    node: String,
    cells: Vec<String>,
}

/// An attempt's progress, `status/<task>-<attempt>.json`: made by the claim (put-if-absent),
/// then replaced by the worker when done or failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StatusDoc {
    format_version: u32,
    node: String,
    state: TaskState,
    /// Result parts written (`results/<task>-<attempt>/<k>.arrow`).
    parts: u32,
    rows: u64,
    error: Option<String>,
    at_ms: u64,
}

/// Where an attempt of a swarm task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TaskState {
    Claimed,
    Done,
    Failed,
}

impl StatusDoc {
    fn new(node: &str, state: TaskState) -> StatusDoc {
        StatusDoc {
            format_version: format_version(),
            node: node.into(),
            state,
            parts: 0,
            rows: 0,
            error: None,
            at_ms: now_ms(),
        }
    }
}

/// Counters shown in status and heartbeats.
#[derive(Debug, Default)]
pub struct Counters {
    /// Tasks of other nodes' queries this node ran, and those that failed.
    pub tasks_done: AtomicU64,
    pub tasks_failed: AtomicU64,
    /// Stages this node shared as coordinator, their tasks given out again (late, failed
    /// or dead worker) and those it ran itself after their trials.
    pub stages_shared: AtomicU64,
    pub tasks_reclaimed: AtomicU64,
    pub tasks_abandoned: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CounterValues {
    pub tasks_done: u64,
    pub tasks_failed: u64,
    pub stages_shared: u64,
    pub tasks_reclaimed: u64,
    pub tasks_abandoned: u64,
}

impl Counters {
    pub fn values(&self) -> CounterValues {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterValues {
            tasks_done: r(&self.tasks_done),
            tasks_failed: r(&self.tasks_failed),
            stages_shared: r(&self.stages_shared),
            tasks_reclaimed: r(&self.tasks_reclaimed),
            tasks_abandoned: r(&self.tasks_abandoned),
        }
    }
}

pub struct SwarmParts {
    pub meadow: Meadow,
    pub frames: Frames,
    pub pool: BeePool,
    pub udfs: Udfs,
    pub node_id: String,
    pub name: String,
    pub config: SwarmConfig,
    pub task_timeout: Duration,
    pub cache: Option<Arc<CellCache>>,
    pub session_config: datafusion::prelude::SessionConfig,
}

struct Inner {
    meadow: Meadow,
    frames: Frames,
    pool: BeePool,
    udfs: Udfs,
    node_id: String,
    name: String,
    config: SwarmConfig,
    interval: Duration,
    task_timeout: Duration,
    cache: Option<Arc<CellCache>>,
    session_config: datafusion::prelude::SessionConfig,
    started_at_ms: u64,
    /// Beating (a daemon); a one-shot CLI only coordinates and is not in the view.
    started: std::sync::atomic::AtomicBool,
    world: tokio::sync::Mutex<World>,
    counters: Counters,
    /// Cancelled by `shutdown`: every loop ends at its next await.
    cancel: CancellationToken,
    loops: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Query dirs without a manifest seen by the last chore (removed if still so next time).
    strays: Mutex<HashSet<String>>,
    /// The forager's last listing of the queries (the chore reuses it when fresh).
    listing: Mutex<Option<(std::time::Instant, Vec<String>)>>,
    /// Queries whose tasks for this node it will not run (another format), said once each.
    refused: Mutex<HashSet<String>>,
}

/// This node's part in the swarm. Cheap to clone.
#[derive(Clone)]
pub struct Swarm {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Swarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swarm")
            .field("node_id", &self.inner.node_id)
            .finish()
    }
}

impl Swarm {
    pub fn new(p: SwarmParts) -> Swarm {
        let interval = p.config.heartbeat_interval.map(|d| d.0).unwrap_or(
            if p.meadow.kind() == MeadowKind::CloudS3 {
                Duration::from_secs(5)
            } else {
                Duration::from_secs(2)
            },
        );
        // Every attempt and the coordinator's own run fit in the query's deadline.
        let task_timeout = p
            .config
            .task_timeout
            .map_or(p.task_timeout / (p.config.task_trials + 1), |d| d.0);
        Swarm {
            inner: Arc::new(Inner {
                meadow: p.meadow,
                frames: p.frames,
                pool: p.pool,
                udfs: p.udfs,
                node_id: p.node_id,
                name: p.name,
                config: p.config,
                interval,
                task_timeout,
                cache: p.cache,
                session_config: p.session_config,
                started_at_ms: now_ms(),
                started: Default::default(),
                world: Default::default(),
                counters: Counters::default(),
                cancel: CancellationToken::new(),
                loops: Mutex::new(Vec::new()),
                strays: Mutex::new(HashSet::new()),
                listing: Mutex::new(None),
                refused: Mutex::new(HashSet::new()),
            }),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    pub fn interval(&self) -> Duration {
        self.inner.interval
    }

    pub fn counters(&self) -> CounterValues {
        self.inner.counters.values()
    }

    /// Start beating, foraging for tasks and doing the clean-up chore. The first heartbeat is
    /// written before this returns, so the node is in the swarm once it says it is ready.
    pub async fn start(&self) -> Result<()> {
        let mut seq = 0;
        self.beat(&mut seq).await?;
        self.inner.started.store(true, Ordering::SeqCst);
        let me = self.clone();
        let beats = tokio::spawn(async move {
            let cancel = me.inner.cancel.clone();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(me.inner.interval) => {}
                    _ = cancel.cancelled() => return,
                }
                // A beat is not cut short: a put cancelled mid-way could still land after
                // shutdown removed the heartbeat.
                if let Err(e) = me.beat(&mut seq).await {
                    tracing::warn!(error = %e, "heartbeat not written; trying again next interval");
                }
                // As often as a node can die: every `dead_after` beats.
                if seq % u64::from(me.inner.config.dead_after) == 0 {
                    tokio::select! {
                        done = me.chores() => if let Err(e) = done {
                            tracing::warn!(error = %e, "swarm clean-up chore failed");
                        },
                        _ = cancel.cancelled() => return,
                    }
                }
            }
        });
        let me = self.clone();
        let forage = tokio::spawn(async move { worker::forage(me).await });
        self.inner
            .loops
            .lock()
            .expect("swarm loops")
            .extend([beats, forage]);
        tracing::info!(
            node_id = %self.inner.node_id,
            interval_ms = self.inner.interval.as_millis() as u64,
            "joined the swarm"
        );
        Ok(())
    }

    /// Stop the loops and take this node's heartbeat out of the meadow, so the others see it
    /// gone at once; all by `deadline`. Loops still running shortly before it are aborted.
    pub async fn shutdown(&self, deadline: tokio::time::Instant) {
        self.inner.cancel.cancel();
        self.inner.started.store(false, Ordering::SeqCst);
        let loops: Vec<_> = std::mem::take(&mut *self.inner.loops.lock().expect("swarm loops"));
        // Keep a little of the time for removing the heartbeat.
        let reserve = deadline.saturating_duration_since(tokio::time::Instant::now()) / 4;
        for mut l in loops {
            if tokio::time::timeout_at(deadline - reserve, &mut l)
                .await
                .is_err()
            {
                tracing::warn!("a swarm loop did not stop in time; aborting it");
                l.abort();
            }
        }
        let path = world::heartbeat_path(&self.inner.node_id);
        match tokio::time::timeout_at(deadline, self.inner.meadow.delete(&path)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not remove this node's heartbeat"),
            Err(_) => {
                tracing::warn!("removing this node's heartbeat ran past the shutdown deadline")
            }
        }
    }

    fn heartbeat(&self, seq: u64) -> Heartbeat {
        let i = &self.inner;
        let bees = i.pool.bee_status();
        let mut b = Heartbeat::new(&i.node_id, &i.name);
        b.interval_ms = i.interval.as_millis() as u64;
        b.bees = bees.len();
        b.idle_bees = bees
            .iter()
            .filter(|b| b.state == crate::bees::BeeState::Idle)
            .count();
        b.memory_budget = bees.iter().map(|b| b.memory_budget).sum();
        b.memory_used = bees.iter().map(|b| b.memory_used).sum();
        b.temperature = i.pool.temperature();
        b.band = i.pool.band().as_str().into();
        b.accepts_tasks = i.pool.accepts_swarm_tasks();
        b.cache = i.cache.as_ref().map(|c| c.summary()).unwrap_or_default();
        b.tasks_done = i.counters.tasks_done.load(Ordering::Relaxed);
        b.tasks_failed = i.counters.tasks_failed.load(Ordering::Relaxed);
        b.started_at_ms = i.started_at_ms;
        b.beat_ms = now_ms();
        b.seq = seq;
        b
    }

    async fn beat(&self, seq: &mut u64) -> Result<()> {
        *seq += 1;
        let body = encode_json(&self.heartbeat(*seq))?;
        self.inner
            .meadow
            .put(&world::heartbeat_path(&self.inner.node_id), body)
            .await
    }

    /// The swarm as this node sees it, looked at again when the last look is older than
    /// `max_age`. This node is in it, as it is now, while it is in the swarm.
    pub async fn view(&self, max_age: Duration) -> Result<Vec<NodeView>> {
        let mut nodes = self.others(max_age).await?;
        if self.inner.started.load(Ordering::SeqCst) {
            nodes.push(self.me());
            nodes.sort_by(|a, b| a.beat.node_id.cmp(&b.beat.node_id));
        }
        Ok(nodes)
    }

    /// This node as others see it.
    pub fn me(&self) -> NodeView {
        NodeView {
            beat: self.heartbeat(0),
            age: Duration::ZERO,
            state: NodeState::Alive,
        }
    }

    async fn others(&self, max_age: Duration) -> Result<Vec<NodeView>> {
        let i = &self.inner;
        let mut world = i.world.lock().await;
        let mut nodes = match world.fresh(max_age) {
            Some(n) => n,
            None => {
                world
                    .refresh(&i.meadow, i.config.suspect_after, i.config.dead_after, true)
                    .await?
            }
        };
        drop(world);
        nodes.retain(|n| n.beat.node_id != i.node_id);
        Ok(nodes)
    }

    /// The clean-up chore, on the holder of the clean-up lease: remove heartbeats of dead
    /// nodes and the objects of queries whose coordinator is dead or whose deadline passed.
    async fn chores(&self) -> Result<()> {
        let i = &self.inner;
        let period = i.interval * i.config.dead_after;
        if !crate::meadow::lease::acquire(&i.meadow, CLEANUP_LEASE, &i.node_id, period * 3).await? {
            return Ok(());
        }
        // Who is alive needs the listing only, not every heartbeat read again.
        let nodes = i
            .world
            .lock()
            .await
            .refresh(
                &i.meadow,
                i.config.suspect_after,
                i.config.dead_after,
                false,
            )
            .await?;
        for n in nodes.iter().filter(|n| n.state == NodeState::Dead) {
            tracing::info!(node = %n.beat.node_id, age_s = n.age.as_secs(), "removing a dead node's heartbeat");
            i.meadow
                .delete(&world::heartbeat_path(&n.beat.node_id))
                .await?;
        }
        let dead: HashSet<&str> = nodes
            .iter()
            .filter(|n| n.state == NodeState::Dead)
            .map(|n| n.beat.node_id.as_str())
            .collect();
        let mut by_query: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        let recent = i
            .listing
            .lock()
            .expect("listing")
            .clone()
            .filter(|(at, _)| at.elapsed() < period)
            .map(|(_, paths)| paths);
        let paths = match recent {
            Some(p) => p,
            None => i.meadow.list_all(&Dir::Queries.to_string()).await?,
        };
        for path in paths {
            if let Some(q) = layout::query_of(&path) {
                by_query.entry(q.to_string()).or_default().push(path);
            }
        }
        let mut strays = HashSet::new();
        for (query, paths) in by_query {
            let manifest = match i
                .meadow
                .get_json::<Manifest>(&Key::Manifest(query.clone()).to_string())
                .await
            {
                Ok(m) => m.map(|v| v.value),
                // A broken manifest is judged like a missing one.
                Err(e) if e.kind == crate::error::ErrorKind::InvalidInput => None,
                // Another format's query (left to its nodes), or a failed read: not now.
                Err(_) => continue,
            };
            let orphan = match &manifest {
                // A coordinator without a heartbeat (a one-shot CLI) is judged by the
                // deadline alone.
                Some(m) => {
                    dead.contains(m.coordinator.as_str())
                        || now_ms() > m.deadline_ms + i.interval.as_millis() as u64 * 10
                }
                None => {
                    let seen_before = i.strays.lock().expect("strays").contains(&query);
                    strays.insert(query.clone());
                    seen_before
                }
            };
            if orphan {
                tracing::info!(query = %query, objects = paths.len(), "removing an abandoned query's objects");
                delete_all(&i.meadow, paths).await?;
                strays.remove(&query);
            }
        }
        *i.strays.lock().expect("strays") = strays;
        Ok(())
    }
}

/// Delete objects, the manifest last, so a half-deleted query is still recognisable.
async fn delete_all(meadow: &Meadow, mut paths: Vec<String>) -> Result<()> {
    paths.sort_by_key(|p| matches!(Key::parse(p), Some(Key::Manifest(_))));
    for p in paths {
        meadow.delete(&p).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl crate::sql::Distribute for Swarm {
    async fn distribute(
        &self,
        plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        state: &datafusion::execution::context::SessionState,
        udfs: &[String],
    ) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        stage::distribute(self, plan, state, udfs).await
    }

    async fn finish(&self, plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) {
        stage::finish(plan).await
    }
}
