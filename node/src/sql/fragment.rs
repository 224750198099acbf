//! Plan fragments for the swarm. A frame's scan is a [`CellScan`]: the Delta scan plus what
//! is needed to make the same scan over a subset of its cells on another node (frame,
//! version, projection, filters, limit). [`stages`] finds the parts of a physical plan that can
//! run on any subset of a scan's cells and be merged by the plan above them: the chain of
//! per-partition operators (filters, projections, partial aggregates, partial top-k) over one
//! scan, up to the exchange below the final step. A stage's chain is serialised with
//! `datafusion-proto`, the scan replaced by a marker that the receiving node fills with its
//! own scan of the cells it was given.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session as DfSession;
use datafusion::common::Statistics;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};
use datafusion_proto::bytes::Serializeable;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::frames::{Cell, Frames};
use crate::names::FrameRef;

/// A scan of a frame at a version, as another node can repeat it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanSpec {
    #[serde(flatten)]
    pub frame: FrameRef,
    pub version: i64,
    pub projection: Option<Vec<usize>>,
    /// Filters handed to the scan, as `datafusion-proto` expressions (base64).
    pub filters: Vec<String>,
    pub limit: Option<usize>,
}

/// A frame as DataFusion sees it: the Delta table, whose scans become [`CellScan`]s.
#[derive(Debug)]
pub struct FrameTable {
    pub frame: FrameRef,
    pub version: i64,
    /// Every cell of the frame at `version`.
    pub cells: Arc<Vec<Cell>>,
    pub inner: Arc<dyn TableProvider>,
}

#[async_trait]
impl TableProvider for FrameTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let inner = self.inner.scan(state, projection, filters, limit).await?;
        // The cells the scan reads once partitions and statistics pruned the rest.
        let read = scanned_keys(&inner);
        let cells = match read {
            Some(keys) => Arc::new(
                self.cells
                    .iter()
                    .filter(|c| keys.contains(&c.key))
                    .cloned()
                    .collect(),
            ),
            None => self.cells.clone(),
        };
        // A filter that cannot be written down keeps the scan on this node.
        let encoded: Option<Vec<String>> = filters
            .iter()
            .map(|f| {
                f.to_bytes()
                    .ok()
                    .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
            })
            .collect();
        Ok(Arc::new(CellScan {
            shareable: encoded.is_some(),
            spec: ScanSpec {
                frame: self.frame.clone(),
                version: self.version,
                projection: projection.cloned(),
                filters: encoded.unwrap_or_default(),
                limit,
            },
            cells,
            inner,
        }))
    }
}

/// Cache keys of the files a scan plan reads (its Parquet sources' file groups); `None`
/// when it has no file source to tell.
fn scanned_keys(plan: &Arc<dyn ExecutionPlan>) -> Option<std::collections::HashSet<String>> {
    use datafusion::datasource::physical_plan::FileScanConfig;
    use datafusion::datasource::source::DataSourceExec;
    let mut keys = std::collections::HashSet::new();
    let mut found = false;
    let _ = plan.apply(|n| {
        if let Some(config) = n
            .downcast_ref::<DataSourceExec>()
            .and_then(|d| d.data_source().downcast_ref::<FileScanConfig>())
        {
            found = true;
            for group in &config.file_groups {
                for file in group.iter() {
                    keys.insert(crate::cache::key(file.object_meta.location.as_ref()));
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found.then_some(keys)
}

/// The scan of a frame's cells: runs the Delta scan below it and remembers how to repeat it.
#[derive(Debug, Clone)]
pub struct CellScan {
    pub spec: ScanSpec,
    pub cells: Arc<Vec<Cell>>,
    /// Whether the scan can be described to another node.
    pub shareable: bool,
    inner: Arc<dyn ExecutionPlan>,
}

impl CellScan {
    pub fn bytes(&self) -> u64 {
        self.cells.iter().map(|c| c.bytes).sum()
    }
}

impl DisplayAs for CellScan {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "CellScan: {} v{}, {} cells",
            self.spec.frame,
            self.spec.version,
            self.cells.len()
        )
    }
}

impl ExecutionPlan for CellScan {
    fn name(&self) -> &str {
        "CellScan"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.inner.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.inner]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    // The scan's statistics are its Delta scan's: the planner sizes joins by them.
    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> DfResult<Arc<Statistics>> {
        Ok(input_stats
            .first()
            .cloned()
            .unwrap_or_else(|| Arc::new(Statistics::new_unknown(&self.schema()))))
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let inner = children.pop().ok_or_else(|| {
            DataFusionError::Internal("CellScan needs its scan as a child".into())
        })?;
        Ok(Arc::new(CellScan {
            inner,
            ..(*self).clone()
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        self.inner.execute(partition, context)
    }
}

/// Where a serialised stage's scan goes: filled in by the node that runs it.
#[derive(Debug)]
struct ScanSlot {
    properties: Arc<PlanProperties>,
}

impl DisplayAs for ScanSlot {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ScanSlot")
    }
}

impl ExecutionPlan for ScanSlot {
    fn name(&self) -> &str {
        "ScanSlot"
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

    fn execute(&self, _: usize, _: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        Err(DataFusionError::Internal(
            "a stage's scan slot was not filled".into(),
        ))
    }
}

/// Encodes the scan slot; decodes it as the scan the receiving node prepared.
#[derive(Debug)]
struct SlotCodec {
    scan: Option<Arc<dyn ExecutionPlan>>,
}

const SLOT_TAG: &[u8] = b"apiary-scan-slot";

impl PhysicalExtensionCodec for SlotCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        _inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match (&self.scan, buf == SLOT_TAG) {
            (Some(scan), true) => Ok(scan.clone()),
            _ => Err(DataFusionError::Internal(
                "unknown node in a swarm stage".into(),
            )),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        if node.downcast_ref::<ScanSlot>().is_some() {
            buf.extend_from_slice(SLOT_TAG);
            Ok(())
        } else {
            Err(DataFusionError::NotImplemented(format!(
                "{} cannot run on another node",
                node.name()
            )))
        }
    }
}

/// A part of a plan that can run on any subset of its scan's cells.
#[derive(Debug, Clone)]
pub struct Stage {
    /// What runs on the nodes: the chain, maybe with a partial top-k added on top.
    pub root: Arc<dyn ExecutionPlan>,
    /// The node of the plan the swarm's node for the stage replaces (the chain's top).
    pub target: Arc<dyn ExecutionPlan>,
    pub scan: CellScan,
}

impl Stage {
    /// The chain, serialised, with its scan as a slot.
    pub fn encode(&self) -> Result<Bytes> {
        let slotted = self
            .root
            .clone()
            .transform_down(|n| {
                if n.downcast_ref::<CellScan>().is_some() {
                    let slot: Arc<dyn ExecutionPlan> = Arc::new(ScanSlot {
                        properties: n.properties().clone(),
                    });
                    Ok(Transformed::new(slot, true, TreeNodeRecursion::Jump))
                } else {
                    Ok(Transformed::no(n))
                }
            })
            .data()?;
        Ok(
            datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec(
                slotted,
                &SlotCodec { scan: None },
            )?,
        )
    }
}

/// Operators that work on each input partition alone, so their output over all cells is
/// the union of their outputs over any split of the cells.
fn per_partition(plan: &dyn ExecutionPlan) -> bool {
    if let Some(a) = plan.downcast_ref::<AggregateExec>() {
        return *a.mode() == AggregateMode::Partial;
    }
    if let Some(s) = plan.downcast_ref::<SortExec>() {
        return s.preserve_partitioning();
    }
    if let Some(r) = plan.downcast_ref::<RepartitionExec>() {
        return matches!(r.partitioning(), Partitioning::RoundRobinBatch(_));
    }
    matches!(
        plan.name(),
        "FilterExec" | "ProjectionExec" | "CoalesceBatchesExec" | "LocalLimitExec"
    )
}

/// The scan at the bottom of a chain of per-partition operators, if `plan` is one.
fn chain_scan(plan: &Arc<dyn ExecutionPlan>) -> Option<CellScan> {
    if let Some(scan) = plan.downcast_ref::<CellScan>() {
        return scan.shareable.then(|| scan.clone());
    }
    let children = plan.children();
    if per_partition(plan.as_ref()) && children.len() == 1 {
        return chain_scan(children[0]);
    }
    None
}

/// The stages of a plan: the longest chains over a scan (top-down, so a chain is taken
/// whole, never its lower part alone).
pub fn stages(plan: &Arc<dyn ExecutionPlan>) -> Vec<Stage> {
    let mut out = Vec::new();
    let _ = plan.apply(|n| {
        // A top-k over all rows: each node keeps its own top k, the plan's sort the rest.
        if let Some(sort) = n.downcast_ref::<SortExec>()
            && let Some(fetch) = sort.fetch()
            && !sort.preserve_partitioning()
            && let Some(scan) = chain_scan(sort.input())
        {
            let partial = SortExec::new(sort.expr().clone(), sort.input().clone())
                .with_fetch(Some(fetch))
                .with_preserve_partitioning(true);
            out.push(Stage {
                root: Arc::new(partial),
                target: sort.input().clone(),
                scan,
            });
            return Ok(TreeNodeRecursion::Jump);
        }
        if let Some(scan) = chain_scan(n) {
            out.push(Stage {
                root: n.clone(),
                target: n.clone(),
                scan,
            });
            return Ok(TreeNodeRecursion::Jump);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// The scan of `spec` over `cells`, planned in `state` as the coordinator planned it.
pub async fn scan(
    frames: &Frames,
    state: &datafusion::execution::context::SessionState,
    spec: &ScanSpec,
    cells: &[String],
) -> Result<Arc<dyn ExecutionPlan>> {
    // Usually the version is the latest, which this node keeps (and brings forward from
    // the log's newest entries); an older one is loaded from the log.
    let latest = frames.open(&spec.frame, None).await?;
    let frame = if latest.version() == spec.version {
        latest
    } else {
        frames.open(&spec.frame, Some(spec.version)).await?
    };
    frame.table.update_datafusion_session(state)?;
    let provider = frame
        .table
        .table_provider()
        .with_session(Arc::new(state.clone()))
        .with_file_paths(cells.iter().cloned())
        .await?;
    let task = state.task_ctx();
    let filters = spec
        .filters
        .iter()
        .map(|f| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(f)
                .map_err(|e| Error::invalid(format!("bad filter in a swarm task: {e}")))?;
            Ok(Expr::from_bytes_with_ctx(&bytes, &task)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(provider
        .scan(state, spec.projection.as_ref(), &filters, spec.limit)
        .await?)
}

/// Rebuild a stage from its bytes over `scan` (from [`scan`]), as one output partition
/// (keeping its order when it has one).
pub fn decode(
    bytes: &[u8],
    scan: Arc<dyn ExecutionPlan>,
    task: &TaskContext,
) -> Result<Arc<dyn ExecutionPlan>> {
    let plan = datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec(
        bytes,
        task,
        &SlotCodec { scan: Some(scan) },
    )?;
    Ok(single_partition(plan))
}

/// `plan` as one output partition, merged in order when it is ordered.
pub fn single_partition(plan: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    if plan.output_partitioning().partition_count() <= 1 {
        return plan;
    }
    match plan.output_ordering() {
        Some(order) => {
            let fetch = plan.fetch();
            Arc::new(SortPreservingMergeExec::new(order.clone(), plan).with_fetch(fetch))
        }
        None => Arc::new(CoalescePartitionsExec::new(plan)),
    }
}

/// Replace each stage's root in `plan` by what `replace` makes of it.
pub fn replace_stages(
    plan: Arc<dyn ExecutionPlan>,
    mut replacements: HashMap<usize, Arc<dyn ExecutionPlan>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    // Stages are identified by the address of the plan node they replace.
    Ok(plan
        .transform_down(|n| match replacements.remove(&node_id(&n)) {
            Some(r) => Ok(Transformed::new(r, true, TreeNodeRecursion::Jump)),
            None => Ok(Transformed::no(n)),
        })
        .data()?)
}

/// The identity [`replace_stages`] uses for a stage.
pub fn stage_id(stage: &Stage) -> usize {
    node_id(&stage.target)
}

fn node_id(node: &Arc<dyn ExecutionPlan>) -> usize {
    Arc::as_ptr(node) as *const () as usize
}
