//! A physical optimizer rule for star-schema joins. DataFusion puts the smaller input of a
//! hash join on its build side when it can estimate both sizes, but a join's own output
//! size is unknown without column statistics (which Delta scans give only for filtered
//! columns). So `fact ⋈ dim1 ⋈ dim2` keeps the first join's output, fact-sized, as the build
//! side of the second: a hash table of millions of rows instead of a filtered dimension.
//! Here a plan's size is bounded by what its scans say: a known row count, else the largest
//! of its inputs'; a join whose build side is bounded larger than its probe side is swapped.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::error::Result;
use datafusion::logical_expr::JoinType;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};

#[derive(Debug, Default)]
pub struct SmallerBuildSide;

/// The rule's name; it runs right after DataFusion's `join_selection`.
pub const AFTER: &str = "join_selection";

impl PhysicalOptimizerRule for SmallerBuildSide {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            if *join.partition_mode() != PartitionMode::CollectLeft
                || *join.join_type() != JoinType::Inner
            {
                return Ok(Transformed::no(node));
            }
            let stats = StatisticsContext::new();
            match (
                rows_bound(&stats, join.left()),
                rows_bound(&stats, join.right()),
            ) {
                (Some(build), Some(probe)) if build > probe => Ok(Transformed::yes(
                    join.swap_inputs(PartitionMode::CollectLeft)?,
                )),
                _ => Ok(Transformed::no(node)),
            }
        })
        .data()
    }

    fn name(&self) -> &str {
        "apiary_smaller_build_side"
    }

    fn schema_check(&self) -> bool {
        true // swap_inputs restores the column order with a projection
    }
}

/// Rows a plan produces: for plans without a join, as their statistics estimate; for a join,
/// at most its larger input's (a key join in a star schema yields at most its fact side's
/// rows; DataFusion's guess without column statistics can be as low as the smaller side's),
/// and the same for what sits on top of a join.
fn rows_bound(stats: &StatisticsContext, plan: &Arc<dyn ExecutionPlan>) -> Option<usize> {
    bound(stats, plan).0
}

/// (bound, whether there is a join below)
fn bound(stats: &StatisticsContext, plan: &Arc<dyn ExecutionPlan>) -> (Option<usize>, bool) {
    let children = plan.children();
    if children.len() > 1 {
        let max = children.iter().filter_map(|c| bound(stats, c).0).max();
        return (max, true);
    }
    let below = children.first().map(|c| bound(stats, c));
    if let Some((b, true)) = below {
        return (b, true);
    }
    let own = stats
        .compute(plan.as_ref(), &StatisticsArgs::new())
        .ok()
        .and_then(|s| s.num_rows.get_value().copied());
    (own.or(below.and_then(|b| b.0)), false)
}
