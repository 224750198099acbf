//! The Apiary handle: one opened node (meadow, frames, resources). The CLI, the daemon and
//! the Python package all go through it.

use std::time::SystemTime;

use serde::Serialize;

use arrow::array::RecordBatch;

use crate::bees::{BeePool, BeeStatus, ColonyStatus, PoolConfig, Resources};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::frames::{Frames, WriteCtx, WriteMode, WriteReport};
use crate::meadow::Meadow;
use crate::names::FrameRef;
use crate::release::follow::UpdateStatus;
use crate::sql::{Distribute, QueryResult, Session};
use crate::swarm::Swarm;
use crate::swarm::world::NodeView;
use crate::udf::Udfs;

const MIB: u64 = 1 << 20;

pub struct Apiary {
    config: Config,
    name: String,
    node_id: String,
    meadow: Meadow,
    pool: BeePool,
    frames: Frames,
    udfs: Udfs,
    resources: Resources,
    started_at: SystemTime,
    cache: Option<std::sync::Arc<crate::cache::CellCache>>,
    swarm: Option<Swarm>,
    /// Kept by the release follower of a running node.
    update: std::sync::Arc<std::sync::Mutex<Option<UpdateStatus>>>,
}

/// The figures `apiary status` (and Python's `status()`) report.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub name: String,
    pub node_id: String,
    /// The release it runs (the package's version when installed from it).
    pub version: &'static str,
    pub cores: usize,
    pub memory_gb: f64,
    pub bees: usize,
    pub storage: &'static str,
    pub storage_uri: String,
    pub memory_per_bee_mb: u64,
    pub target_cell_size_mb: u64,
    pub state: &'static str,
    /// Following a release channel: what was found or done last.
    pub update: Option<UpdateStatus>,
}

/// One node as the swarm sees it.
#[derive(Debug, Clone, Serialize)]
pub struct SwarmNode {
    pub node_id: String,
    pub name: String,
    /// alive, suspect or dead
    pub state: &'static str,
    /// The apiary release it runs and the meadow format it writes.
    pub version: String,
    pub format_version: u32,
    /// Why it and this node share no swarm work (another format); null when they do.
    pub left_out: Option<String>,
    pub bees: usize,
    pub idle_bees: usize,
    /// Memory reserved in its chambers / their budgets, 0..1.
    pub memory_pressure: f64,
    pub colony_temperature: f64,
    pub band: String,
    /// Seconds since its heartbeat last changed.
    pub age_s: f64,
    /// Swarm tasks of other nodes' queries it ran.
    pub tasks_done: u64,
    pub tasks_failed: u64,
    pub cached_cells: u64,
    pub cached_bytes: u64,
}

/// The swarm: this node and the others beating into the same meadow; totals over alive nodes.
#[derive(Debug, Clone, Serialize)]
pub struct SwarmStatus {
    pub nodes: Vec<SwarmNode>,
    pub alive: usize,
    pub total_bees: usize,
    pub total_idle_bees: usize,
}

/// A frame and its figures at its latest version.
#[derive(Debug, Clone, Serialize)]
pub struct FrameSummary {
    pub hive: String,
    #[serde(rename = "box")]
    pub box_name: String,
    pub frame: String,
    pub version: i64,
    pub rows: u64,
    pub cells: u64,
    pub bytes: u64,
}

impl Apiary {
    /// Open the meadow (refusing one without conditional writes) and size the bees.
    pub async fn open(config: Config) -> Result<Apiary> {
        config.validate()?;
        let meadow = Meadow::open(&config.meadow_uri(), &config.meadow.options).await?;
        let cache = open_cache(&config, &meadow)?;
        let meadow = match &cache {
            Some(c) => meadow.wrapped(|inner| {
                std::sync::Arc::new(crate::cache::CachedStore {
                    inner,
                    cache: c.clone(),
                })
            }),
            None => meadow,
        };
        let resources = Resources::detect(&config.bees);
        let frames = Frames::new(meadow.clone(), resources.target_cell_size());
        let name = config.node.name.clone().unwrap_or_else(host_name);
        let node_id = node_id(&config)?;
        let pool = BeePool::new(
            &resources,
            PoolConfig {
                task_timeout: config.bees.task_timeout.0,
                queue_limit: config.bees.queue_limit,
                colony: config.colony.clone(),
            },
            &config.node.state_dir,
        )?;
        // Queries read cells through the meadow's store (cache, request counts), also where
        // DataFusion has a store of its own for the scheme (file://).
        pool.object_stores()
            .register_store(meadow.root_url(), meadow.store());
        let udfs = Udfs::new(meadow.clone(), &config.node.state_dir, config.udf.timeout.0)?;
        let swarm = config.swarm.enabled.then(|| {
            Swarm::new(crate::swarm::SwarmParts {
                meadow: meadow.clone(),
                frames: frames.clone(),
                pool: pool.clone(),
                udfs: udfs.clone(),
                node_id: node_id.clone(),
                name: name.clone(),
                config: config.swarm.clone(),
                task_timeout: config.bees.task_timeout.0,
                cache: cache.clone(),
                session_config: session_config(&resources),
            })
        });
        Ok(Apiary {
            config,
            name,
            node_id,
            meadow,
            pool,
            frames,
            udfs,
            resources,
            started_at: crate::clock::now(),
            cache,
            swarm,
            update: Default::default(),
        })
    }

    /// Where a running node's release follower says what it did last.
    pub fn update_status(&self) -> std::sync::Arc<std::sync::Mutex<Option<UpdateStatus>>> {
        self.update.clone()
    }

    pub fn swarm(&self) -> Option<&Swarm> {
        self.swarm.as_ref()
    }

    pub fn cache(&self) -> Option<&std::sync::Arc<crate::cache::CellCache>> {
        self.cache.as_ref()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn frames(&self) -> &Frames {
        &self.frames
    }

    pub fn meadow(&self) -> &Meadow {
        &self.meadow
    }

    pub fn udfs(&self) -> &Udfs {
        &self.udfs
    }

    pub fn pool(&self) -> &BeePool {
        &self.pool
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn resources(&self) -> Resources {
        self.resources
    }

    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// A new SQL session (its own USE scope).
    pub fn session(&self) -> Session {
        Session::new(
            self.frames.clone(),
            self.pool.clone(),
            self.udfs.clone(),
            session_config(&self.resources),
        )
        .with_distribute(
            self.swarm
                .clone()
                .map(|s| std::sync::Arc::new(s) as std::sync::Arc<dyn Distribute>),
        )
    }

    /// The one write path (CLI, SQL's caller-side writes, Python): append or replace rows
    /// inside a chamber, so the Delta writer's memory counts against the bee's budget.
    pub async fn write(
        &self,
        frame: &FrameRef,
        batches: Vec<RecordBatch>,
        mode: WriteMode,
    ) -> Result<WriteReport> {
        self.pool
            .run(&format!("write {frame}"), async |chamber| {
                let ctx = WriteCtx {
                    txn: None,
                    session: Some(crate::frames::write_session(chamber.runtime_env())),
                };
                self.frames.write(frame, batches, mode, ctx).await
            })
            .await
    }

    pub fn bee_status(&self) -> Vec<BeeStatus> {
        self.pool.bee_status()
    }

    pub fn colony_status(&self) -> ColonyStatus {
        self.pool.colony_status()
    }

    /// Run a `;`-separated script in a fresh session; one result per statement.
    pub async fn sql(&self, sql: &str) -> Result<Vec<QueryResult>> {
        self.session().run_script(sql).await
    }

    /// The swarm as this node sees it (heartbeats looked at again if older than one
    /// interval); a swarm of one when the swarm is off.
    pub async fn swarm_status(&self) -> Result<SwarmStatus> {
        let Some(swarm) = &self.swarm else {
            return Ok(self.lone_status());
        };
        let nodes = swarm.view(swarm.interval()).await?;
        Ok(swarm_status(&nodes))
    }

    /// The swarm of one this node is without heartbeats.
    fn lone_status(&self) -> SwarmStatus {
        let bees = self.bee_status();
        let me = SwarmNode {
            node_id: self.node_id.clone(),
            name: self.name.clone(),
            state: "alive",
            version: crate::release::running_version().into(),
            format_version: crate::meadow::format_version(),
            left_out: None,
            bees: bees.len(),
            idle_bees: bees
                .iter()
                .filter(|b| b.state == crate::bees::BeeState::Idle)
                .count(),
            memory_pressure: pressure(
                bees.iter().map(|b| b.memory_used).sum(),
                bees.iter().map(|b| b.memory_budget).sum(),
            ),
            colony_temperature: self.colony_status().temperature,
            band: self.pool.band().as_str().into(),
            age_s: 0.0,
            tasks_done: 0,
            tasks_failed: 0,
            cached_cells: 0,
            cached_bytes: 0,
        };
        SwarmStatus {
            alive: 1,
            total_bees: me.bees,
            total_idle_bees: me.idle_bees,
            nodes: vec![me],
        }
    }

    /// Every frame of every hive and box, with its figures.
    pub async fn frame_list(&self) -> Result<Vec<FrameSummary>> {
        let reg = self.frames.registry();
        let mut out = Vec::new();
        for h in reg.list_hives().await? {
            for b in reg.list_boxes(&h).await? {
                for f in reg.list_frames(&h, &b).await? {
                    let info = match self.frames.info(&FrameRef::new(&h, &b, &f)?).await {
                        Ok(i) => i,
                        // Dropped while we listed: not there any more.
                        Err(e) if e.kind == crate::error::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    };
                    out.push(FrameSummary {
                        hive: h.clone(),
                        box_name: b.clone(),
                        frame: f,
                        version: info.version,
                        rows: info.row_count,
                        cells: info.cell_count,
                        bytes: info.total_bytes,
                    });
                }
            }
        }
        Ok(out)
    }

    pub fn status(&self) -> Status {
        let r = self.resources;
        Status {
            name: self.name.clone(),
            node_id: self.node_id.clone(),
            version: crate::release::running_version(),
            cores: r.cores,
            memory_gb: (r.memory_bytes as f64 / (1u64 << 30) as f64 * 100.0).round() / 100.0,
            bees: r.bees,
            storage: self.meadow.kind().as_str(),
            storage_uri: self.meadow.root_url().to_string(),
            memory_per_bee_mb: r.memory_per_bee / MIB,
            target_cell_size_mb: r.target_cell_size() / MIB,
            state: "running",
            update: self.update.lock().expect("update status").clone(),
        }
    }
}

fn pressure(used: u64, budget: u64) -> f64 {
    if budget == 0 {
        0.0
    } else {
        used as f64 / budget as f64
    }
}

/// The swarm's figures from a world view; totals over alive nodes.
fn swarm_status(nodes: &[NodeView]) -> SwarmStatus {
    let nodes: Vec<SwarmNode> = nodes
        .iter()
        .map(|n| {
            let b = &n.beat;
            SwarmNode {
                node_id: b.node_id.clone(),
                name: b.name.clone(),
                state: n.state.as_str(),
                version: b.version.clone(),
                format_version: b.format_version,
                left_out: b.left_out(),
                bees: b.bees,
                idle_bees: b.idle_bees,
                memory_pressure: pressure(b.memory_used, b.memory_budget),
                colony_temperature: b.temperature,
                band: b.band.clone(),
                age_s: (n.age.as_secs_f64() * 10.0).round() / 10.0,
                tasks_done: b.tasks_done,
                tasks_failed: b.tasks_failed,
                cached_cells: b.cache.cells,
                cached_bytes: b.cache.bytes,
            }
        })
        .collect();
    let alive: Vec<&SwarmNode> = nodes.iter().filter(|n| n.state == "alive").collect();
    SwarmStatus {
        alive: alive.len(),
        total_bees: alive.iter().map(|n| n.bees).sum(),
        total_idle_bees: alive.iter().map(|n| n.idle_bees).sum(),
        nodes,
    }
}

fn session_config(resources: &Resources) -> datafusion::prelude::SessionConfig {
    datafusion::prelude::SessionConfig::new().with_target_partitions(resources.bees.max(1))
}

/// The cell cache: on for S3 meadows by default, off for local and memory ones (their cells
/// are on this machine already) unless `cache.max_bytes` is set; `0` turns it off.
fn open_cache(
    config: &Config,
    meadow: &Meadow,
) -> Result<Option<std::sync::Arc<crate::cache::CellCache>>> {
    use crate::meadow::MeadowKind;
    let max = match config.cache.max_bytes {
        Some(b) if b.0 == 0 => return Ok(None),
        Some(b) => Some(b.0),
        None if matches!(meadow.kind(), MeadowKind::S3 | MeadowKind::CloudS3) => None,
        None => return Ok(None),
    };
    let dir = config
        .cache
        .dir
        .clone()
        .unwrap_or_else(|| config.node.state_dir.join("cache"));
    crate::cache::CellCache::open(&dir, max).map(Some)
}

/// The node id: configured, else kept in `<state_dir>/node_id` (made on first start).
fn node_id(config: &Config) -> Result<String> {
    if let Some(id) = &config.node.node_id {
        crate::names::validate_name("node id", id)?;
        return Ok(id.clone());
    }
    let dir = &config.node.state_dir;
    let path = dir.join("node_id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_string();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::storage(format!("cannot create state dir {}: {e}", dir.display())))?;
    let id = format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    crate::secret::write_private(&path, id.as_bytes())?;
    Ok(id)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "apiary".into())
}
