//! The coordinator's side of a shared stage. A stage (a chain of per-partition operators over
//! one big scan, see `sql::fragment`) becomes a [`SwarmExec`]: its cells are split between
//! this node and others with free bees (cells a node has cached go to it; the rest by free
//! capacity and temperature), each other node gets a task in the meadow, and the plan above
//! merges the tasks' outputs as it would merge its own partitions. A task that is not
//! claimed, fails, runs past its deadline or whose worker dies is given out again; after its
//! trials the coordinator runs it itself.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use bytes::Bytes;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::execution::context::SessionState;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};

use super::world::{NodeState, NodeView};
use super::{Manifest, StatusDoc, Swarm, TaskDoc, TaskState, delete_all, now_ms};
use crate::error::{Error, Result};
use crate::frames::Cell;
use crate::layout::{Attempt, Dir, Key};
use crate::meadow::{encode_json, format_version};
use crate::sql::fragment::{self, ScanSpec, Stage};

/// Replace the plan's big stages by swarm stages when other nodes can take a share.
pub async fn distribute(
    swarm: &Swarm,
    plan: Arc<dyn ExecutionPlan>,
    state: &SessionState,
    udfs: &[String],
) -> Result<Arc<dyn ExecutionPlan>> {
    let min = swarm.inner.config.distribute_min_bytes.0;
    let big: Vec<Stage> = fragment::stages(&plan)
        .into_iter()
        .filter(|s| s.scan.cells.len() >= 2 && s.scan.bytes() >= min)
        .collect();
    if big.is_empty() {
        return Ok(plan);
    }
    let mut nodes = swarm.view(swarm.inner.interval).await?;
    if !nodes.iter().any(|n| n.beat.node_id == swarm.inner.node_id) {
        nodes.push(swarm.me()); // a coordinator that is not in the swarm takes a share too
    }
    let candidates = candidates(&nodes, &swarm.inner.node_id);
    if !candidates.iter().any(|c| !c.local) {
        return Ok(plan); // a swarm of one, or nobody with free bees
    }
    let mut replacements = HashMap::new();
    for stage in big {
        let bytes = match stage.encode() {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %e, "stage kept on this node");
                continue;
            }
        };
        let tasks = assign(&stage.scan.cells, &candidates);
        if tasks.len() < 2 {
            continue;
        }
        let exec: Arc<dyn ExecutionPlan> = Arc::new(SwarmExec::new(
            swarm.clone(),
            &stage,
            bytes,
            tasks,
            state.clone(),
            udfs,
        ));
        // The plan above may rely on the stage being one partition (a sort over all rows).
        let exec = if stage.target.output_partitioning().partition_count() == 1 {
            fragment::single_partition(exec)
        } else {
            exec
        };
        replacements.insert(fragment::stage_id(&stage), exec);
    }
    if replacements.is_empty() {
        return Ok(plan);
    }
    fragment::replace_stages(plan, replacements)
}

/// Remove the objects of every stage of `plan` that are still in the meadow.
pub async fn finish(plan: &Arc<dyn ExecutionPlan>) {
    let mut shared = Vec::new();
    let _ = plan.apply(|n| {
        if let Some(s) = n.downcast_ref::<SwarmExec>() {
            shared.push((s.swarm.clone(), s.query_id.clone(), s.shared.clone()));
        }
        Ok(TreeNodeRecursion::Continue)
    });
    for (swarm, query, state) in shared {
        remove_query(&swarm, &query, &state).await;
    }
}

/// Remove a shared stage's objects, once (and only if it was launched).
async fn remove_query(swarm: &Swarm, query: &str, shared: &Shared) {
    if shared.launched.get().is_none() || shared.removed.load(Ordering::SeqCst) {
        return;
    }
    let meadow = &swarm.inner.meadow;
    let dir = Dir::Query(query.to_string()).to_string();
    // A listing can fail while a worker replaces a file in it, and a worker may write
    // once more after it: look again until nothing is left.
    let mut last = None;
    for _ in 0..10 {
        let removed = async {
            let paths = meadow.list_all(&dir).await?;
            let empty = paths.is_empty();
            delete_all(meadow, paths).await?;
            Ok::<_, Error>(empty)
        };
        match removed.await {
            Ok(true) => {
                shared.removed.store(true, Ordering::SeqCst);
                return;
            }
            Ok(false) => last = None,
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    if let Some(e) = last {
        tracing::warn!(query, error = %e, "query objects left for the clean-up chore");
    }
}

/// A node that may take a share, and how much.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub node: String,
    pub local: bool,
    pub weight: f64,
    pub cached: HashSet<String>,
}

/// Alive nodes of this node's format that accept tasks (not hot); this node always.
pub fn candidates(nodes: &[NodeView], me: &str) -> Vec<Candidate> {
    nodes
        .iter()
        .filter(|n| n.state == NodeState::Alive && n.beat.left_out().is_none())
        .filter_map(|n| {
            let b = &n.beat;
            let local = b.node_id == me;
            if !local && (!b.accepts_tasks || b.bees == 0) {
                return None;
            }
            // Idle bees count most; a node busy when it last beat may well be free by now.
            // The coordinator runs its share in the bee its query already holds.
            let free = if local {
                b.idle_bees.max(1) as f64
            } else {
                b.idle_bees as f64 + 0.5
            };
            Some(Candidate {
                node: b.node_id.clone(),
                local,
                weight: free * (1.0 - b.temperature).max(0.1),
                cached: b.cache.keys.iter().cloned().collect(),
            })
        })
        .collect()
}

/// One node's share of a stage.
#[derive(Debug, Clone)]
pub struct Assigned {
    pub node: String,
    pub local: bool,
    pub cells: Vec<Cell>,
    /// How many of them it has cached.
    pub cached: usize,
}

/// Split cells between candidates: each gets a share of the bytes by its weight; a cell a
/// node has cached goes to it while it is within a quarter above its share, the rest to
/// whoever is furthest below theirs. Deterministic for the same inputs.
pub fn assign(cells: &[Cell], candidates: &[Candidate]) -> Vec<Assigned> {
    let total: u64 = cells.iter().map(|c| c.bytes.max(1)).sum();
    let weights: f64 = candidates.iter().map(|c| c.weight).sum();
    let share: Vec<f64> = candidates
        .iter()
        .map(|c| total as f64 * c.weight / weights)
        .collect();
    let mut load = vec![0u64; candidates.len()];
    let mut out: Vec<Assigned> = candidates
        .iter()
        .map(|c| Assigned {
            node: c.node.clone(),
            local: c.local,
            cells: vec![],
            cached: 0,
        })
        .collect();
    // Cached cells first, so they find their holders before others fill them up; big first.
    let is_cached = |c: &Cell| candidates.iter().any(|n| n.cached.contains(&c.key));
    let mut order: Vec<&Cell> = cells.iter().collect();
    order.sort_by(|a, b| {
        is_cached(b)
            .cmp(&is_cached(a))
            .then(b.bytes.cmp(&a.bytes))
            .then_with(|| a.path.cmp(&b.path))
    });
    let fill = |i: usize, load: &[u64], size: u64| (load[i] + size) as f64 / share[i];
    for cell in order {
        let size = cell.bytes.max(1);
        let holder = (0..candidates.len())
            .filter(|&i| candidates[i].cached.contains(&cell.key))
            .filter(|&i| load[i] == 0 || fill(i, &load, size) <= 1.25)
            .min_by(|&a, &b| fill(a, &load, size).total_cmp(&fill(b, &load, size)));
        let i = holder.unwrap_or_else(|| {
            (0..candidates.len())
                .min_by(|&a, &b| fill(a, &load, size).total_cmp(&fill(b, &load, size)))
                .expect("at least one candidate")
        });
        load[i] += size;
        out[i].cached += usize::from(holder.is_some());
        out[i].cells.push(cell.clone());
    }
    out.retain(|a| !a.cells.is_empty());
    out
}

/// A stage run across the swarm: one output partition per share.
pub struct SwarmExec {
    swarm: Swarm,
    query_id: String,
    stage: Bytes,
    chain: String,
    scan: ScanSpec,
    udfs: Vec<String>,
    tasks: Vec<Assigned>,
    state: SessionState,
    properties: Arc<PlanProperties>,
    shared: Arc<Shared>,
}

/// What the partitions of one `SwarmExec` share.
struct Shared {
    launched: tokio::sync::OnceCell<()>,
    removed: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for SwarmExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwarmExec")
            .field("query_id", &self.query_id)
            .field("tasks", &self.tasks)
            .finish()
    }
}

impl SwarmExec {
    fn new(
        swarm: Swarm,
        stage: &Stage,
        bytes: Bytes,
        tasks: Vec<Assigned>,
        state: SessionState,
        udfs: &[String],
    ) -> SwarmExec {
        let root = &stage.root;
        let properties = Arc::new(PlanProperties::new(
            root.equivalence_properties().clone(),
            Partitioning::UnknownPartitioning(tasks.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        let mut chain = Vec::new();
        let _ = root.apply(|n| {
            chain.push(n.name().to_string());
            Ok(if n.name() == "CellScan" {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        });
        SwarmExec {
            swarm,
            query_id: format!("q-{}", uuid::Uuid::new_v4().simple()),
            stage: bytes,
            chain: chain.join(" ← "),
            scan: stage.scan.spec.clone(),
            udfs: udfs.to_vec(),
            tasks,
            state,
            properties,
            shared: Arc::new(Shared {
                launched: tokio::sync::OnceCell::new(),
                removed: Default::default(),
            }),
        }
    }
}

impl DisplayAs for SwarmExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "SwarmExec: {} v{} [{}]",
            self.scan.frame, self.scan.version, self.chain
        )?;
        for t in &self.tasks {
            let bytes: u64 = t.cells.iter().map(|c| c.bytes).sum();
            write!(
                f,
                "; {}{}: {} cells ({} cached), {} bytes",
                t.node,
                if t.local { " (here)" } else { "" },
                t.cells.len(),
                t.cached,
                bytes
            )?;
        }
        Ok(())
    }
}

impl ExecutionPlan for SwarmExec {
    fn name(&self) -> &str {
        "SwarmExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let task = self
            .tasks
            .get(partition)
            .cloned()
            .ok_or_else(|| DataFusionError::Internal(format!("no swarm task {partition}")))?;
        let run = Run {
            swarm: self.swarm.clone(),
            query_id: self.query_id.clone(),
            stage: self.stage.clone(),
            scan: self.scan.clone(),
            udfs: self.udfs.clone(),
            tasks: self.tasks.clone(),
            state: self.state.clone(),
            shared: self.shared.clone(),
            schema: self.schema(),
        };
        let schema = self.schema();
        // The query's objects are removed when the query is over (`finish`), not here: a
        // partition's stream may be dropped before its end (a merge with a limit).
        let stream =
            futures::stream::once(async move { run.task(partition as u32, task, context).await })
                .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

type Batches = futures::stream::BoxStream<'static, DfResult<RecordBatch>>;

/// One partition's run.
struct Run {
    swarm: Swarm,
    query_id: String,
    stage: Bytes,
    scan: ScanSpec,
    udfs: Vec<String>,
    tasks: Vec<Assigned>,
    state: SessionState,
    shared: Arc<Shared>,
    schema: arrow::datatypes::SchemaRef,
}

/// How a task ended up being answered.
enum Answer {
    Parts { attempt: u32, parts: u32 },
    Here,
}

impl Run {
    fn attempt_status(&self, task: u32, attempt: u32) -> String {
        Key::Status {
            query: self.query_id.clone(),
            attempt: Attempt { task, attempt },
        }
        .to_string()
    }

    async fn task(&self, n: u32, task: Assigned, ctx: Arc<TaskContext>) -> DfResult<Batches> {
        let answer = if task.local {
            Answer::Here
        } else {
            self.shared
                .launched
                .get_or_try_init(|| self.launch())
                .await
                .map_err(to_df)?;
            self.await_task(n, &task).await.map_err(to_df)?
        };
        match answer {
            Answer::Here => {
                let paths: Vec<String> = task.cells.iter().map(|c| c.path.clone()).collect();
                let scan =
                    fragment::scan(&self.swarm.inner.frames, &self.state, &self.scan, &paths)
                        .await
                        .map_err(to_df)?;
                let plan = fragment::decode(&self.stage, scan, &ctx).map_err(to_df)?;
                Ok(plan.execute(0, ctx)?.boxed())
            }
            Answer::Parts { attempt, parts } => {
                let meadow = self.swarm.inner.meadow.clone();
                let query = self.query_id.clone();
                let schema = self.schema.clone();
                Ok(futures::stream::iter(0..parts)
                    .then(move |part| {
                        let meadow = meadow.clone();
                        let path = Key::ResultPart {
                            query: query.clone(),
                            attempt: Attempt { task: n, attempt },
                            part,
                        }
                        .to_string();
                        let schema = schema.clone();
                        async move { read_part(&meadow, &path, &schema).await.map_err(to_df) }
                    })
                    .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
                    .try_flatten()
                    .boxed())
            }
        }
    }

    /// Write the stage, its manifest and the first attempt of every other node's task.
    async fn launch(&self) -> Result<()> {
        let i = &self.swarm.inner;
        let deadline = i.task_timeout * (i.config.task_trials + 1);
        let manifest = Manifest {
            format_version: format_version(),
            query_id: self.query_id.clone(),
            coordinator: i.node_id.clone(),
            created_ms: now_ms(),
            deadline_ms: now_ms() + deadline.as_millis() as u64,
            scan: self.scan.clone(),
            udfs: self.udfs.clone(),
        };
        i.meadow
            .put(
                &Key::Manifest(self.query_id.clone()).to_string(),
                encode_json(&manifest)?,
            )
            .await?;
        i.meadow
            .put(
                &Key::Stage(self.query_id.clone()).to_string(),
                self.stage.clone(),
            )
            .await?;
        i.counters.stages_shared.fetch_add(1, Ordering::Relaxed);
        for (n, t) in self.tasks.iter().enumerate().filter(|(_, t)| !t.local) {
            self.post(n as u32, 1, &t.node, &t.cells).await?;
        }
        tracing::debug!(query = %self.query_id, tasks = self.tasks.len(), "stage shared");
        Ok(())
    }

    async fn post(&self, n: u32, attempt: u32, node: &str, cells: &[Cell]) -> Result<()> {
        let doc = TaskDoc {
            format_version: format_version(),
            task: n,
            attempt,
            node: node.into(),
            cells: cells.iter().map(|c| c.path.clone()).collect(),
        };
        self.swarm
            .inner
            .meadow
            .put(
                &Key::Task {
                    query: self.query_id.clone(),
                    attempt: Attempt { task: n, attempt },
                    node: node.into(),
                }
                .to_string(),
                encode_json(&doc)?,
            )
            .await
    }

    /// Wait for a task's answer, giving it out again when it is not claimed in time, fails,
    /// runs past its deadline or its worker dies; after its trials, answer it here.
    async fn await_task(&self, n: u32, task: &Assigned) -> Result<Answer> {
        let i = &self.swarm.inner;
        // Two polls at the slowest pace, and some slack for a busy node.
        let claim_timeout = i.config.forage_max.0 * 2 + i.interval * 4;
        let mut attempt = 1;
        let mut node = task.node.clone();
        let mut tried = HashSet::from([node.clone()]);
        let mut posted = Instant::now();
        let mut claimed: Option<Instant> = None;
        let mut checked = Instant::now();
        let mut poll = Duration::from_millis(10);
        loop {
            let status = i
                .meadow
                .get_json::<StatusDoc>(&self.attempt_status(n, attempt))
                .await?
                .map(|v| v.value);
            let why = match status {
                Some(s) if s.state == TaskState::Done => {
                    return Ok(Answer::Parts {
                        attempt,
                        parts: s.parts,
                    });
                }
                Some(s) if s.state == TaskState::Failed => Some(format!(
                    "failed on {}: {}",
                    s.node,
                    s.error.unwrap_or_default()
                )),
                Some(_) => {
                    let since = *claimed.get_or_insert_with(Instant::now);
                    if since.elapsed() > i.task_timeout {
                        Some(format!("{node} ran past the task deadline"))
                    } else if checked.elapsed() >= i.interval {
                        checked = Instant::now();
                        let view = self.swarm.view(i.interval).await?;
                        let gone = view
                            .iter()
                            .find(|v| v.beat.node_id == node)
                            .is_none_or(|v| v.state == NodeState::Dead);
                        gone.then(|| format!("{node} died"))
                    } else {
                        None
                    }
                }
                None if posted.elapsed() > claim_timeout => {
                    Some(format!("{node} did not claim it"))
                }
                None => None,
            };
            if let Some(why) = why {
                i.counters.tasks_reclaimed.fetch_add(1, Ordering::Relaxed);
                let next = if attempt < i.config.task_trials {
                    let view = self.swarm.view(i.interval).await?;
                    candidates(&view, &i.node_id)
                        .into_iter()
                        .filter(|c| !c.local && !tried.contains(&c.node))
                        .max_by(|a, b| a.weight.total_cmp(&b.weight))
                } else {
                    None
                };
                let Some(next) = next else {
                    tracing::warn!(query = %self.query_id, task = n, attempt, reason = %why, "swarm task abandoned: running it here");
                    i.counters.tasks_abandoned.fetch_add(1, Ordering::Relaxed);
                    return Ok(Answer::Here);
                };
                tracing::info!(query = %self.query_id, task = n, attempt, reason = %why, to = %next.node, "swarm task given out again");
                attempt += 1;
                node = next.node;
                tried.insert(node.clone());
                self.post(n, attempt, &node, &task.cells).await?;
                posted = Instant::now();
                claimed = None;
                poll = Duration::from_millis(10);
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 3 / 2).min(Duration::from_millis(100));
        }
    }
}

async fn read_part(
    meadow: &crate::meadow::Meadow,
    path: &str,
    schema: &arrow::datatypes::SchemaRef,
) -> Result<Vec<RecordBatch>> {
    let bytes = meadow
        .get(path)
        .await?
        .ok_or_else(|| Error::not_found(format!("swarm result {path} is missing")))?
        .value;
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    reader
        .map(|b| {
            let b = b?;
            // The plan's own schema (names and nullability as the coordinator planned them).
            Ok(RecordBatch::try_new(schema.clone(), b.columns().to_vec())?)
        })
        .collect()
}

fn to_df(e: Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[cfg(test)]
mod tests;
