//! Planning a query: its time travel bound, its frames loaded and bound for the catalog,
//! its WASM UDFs registered, DataFusion's plan made and handed to the swarm when it is big.

use std::sync::Arc;

use arrow::array::StringArray;
use arrow::datatypes::SchemaRef;
use datafusion::common::TableReference;
use datafusion::execution::context::{SQLOptions, SessionState};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast;

use super::catalog::TableKey;
use super::time_travel::bind_versions;
use super::{QueryResult, Session, explained, fragment};
use crate::bees::Chamber;
use crate::error::{Error, Result};

impl Session {
    /// Run a query through DataFusion in the chamber and collect its result.
    pub(super) async fn query(
        &mut self,
        chamber: &Chamber<'_>,
        stmt: &ast::Statement,
    ) -> Result<QueryResult> {
        let (schema, physical, state) = self.plan(chamber, stmt).await?;
        let batches = datafusion::physical_plan::collect(physical.clone(), state.task_ctx()).await;
        self.finish(&physical).await;
        let batches = batches?;
        Ok(QueryResult {
            schema,
            batches,
            spilled_bytes: log_spill(chamber, physical.as_ref()),
        })
    }

    /// Plan a query: rewrite time travel, bind frames and UDFs, and make the physical plan
    /// that runs on the chamber's runtime.
    pub(super) async fn plan(
        &mut self,
        chamber: &Chamber<'_>,
        stmt: &ast::Statement,
    ) -> Result<(SchemaRef, Arc<dyn ExecutionPlan>, SessionState)> {
        let Some(inner) = explained(stmt) else {
            let (schema, physical, state, _) = self.plan_query(chamber, stmt).await?;
            return Ok((schema, physical, state));
        };
        // DataFusion's EXPLAIN prints the plan before the swarm shares it: print ours.
        let (_, physical, state, logical) = self.plan_query(chamber, inner).await?;
        let logical = state.optimize(&logical)?;
        let result = QueryResult::single(vec![
            (
                "plan_type",
                Arc::new(StringArray::from(vec!["logical_plan", "physical_plan"])),
            ),
            (
                "plan",
                Arc::new(StringArray::from(vec![
                    logical.display_indent().to_string(),
                    datafusion::physical_plan::displayable(physical.as_ref())
                        .indent(true)
                        .to_string(),
                ])),
            ),
        ])?;
        let rows = datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
            &[result.batches],
            result.schema.clone(),
            None,
        )?;
        Ok((result.schema, rows, state))
    }

    /// Plan a query (not an EXPLAIN): also its logical plan.
    pub(super) async fn plan_query(
        &mut self,
        chamber: &Chamber<'_>,
        stmt: &ast::Statement,
    ) -> Result<(
        SchemaRef,
        Arc<dyn ExecutionPlan>,
        SessionState,
        datafusion::logical_expr::LogicalPlan,
    )> {
        let mut stmt = stmt.clone();
        for at in bind_versions(&mut stmt, |parts| self.resolve(parts))? {
            self.bind(at).await?;
        }
        let mut state = self.state_in(chamber);
        let stmt = DFStatement::Statement(Box::new(stmt));
        let udfs = self.register_udfs(&mut state, &stmt, chamber).await?;
        let udtfs = state.table_functions();
        for reference in state.resolve_table_references(&stmt)? {
            if let TableReference::Bare { table } = &reference
                && udtfs.contains_key(table.as_ref())
            {
                continue;
            }
            let parts: Vec<String> = reference.to_vec();
            self.bind(self.resolve(&parts)?.at(None)).await?;
        }
        let plan = state.statement_to_plan(stmt).await?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .verify_plan(&plan)
            .map_err(|e| Error::unsupported(e.strip_backtrace()))?;
        let schema = Arc::new(plan.schema().as_arrow().clone());
        let mut physical = state.create_physical_plan(&plan).await?;
        if let Some(d) = &self.distribute {
            physical = d.distribute(physical, &state, &udfs).await?;
        }
        Ok((schema, physical, state, plan))
    }

    /// Make the meadow's UDFs that the statement calls known to its planner, bound to the
    /// chamber's memory pool and deadline. Their names.
    pub(super) async fn register_udfs(
        &self,
        state: &mut SessionState,
        stmt: &datafusion::sql::parser::Statement,
        chamber: &Chamber<'_>,
    ) -> Result<Vec<String>> {
        use datafusion::sql::sqlparser::ast::{Expr, ObjectNamePart, visit_expressions};
        use std::ops::ControlFlow;
        let datafusion::sql::parser::Statement::Statement(ast) = stmt else {
            return Ok(vec![]);
        };
        let mut registered = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        let _ = visit_expressions(ast.as_ref(), |e| {
            if let Expr::Function(f) = e
                && let [ObjectNamePart::Identifier(id)] = f.name.0.as_slice()
            {
                names.insert(match id.quote_style {
                    Some(_) => id.value.clone(),
                    None => id.value.to_ascii_lowercase(),
                });
            }
            ControlFlow::<()>::Continue(())
        });
        for name in names {
            if state.scalar_functions().contains_key(&name)
                || state.aggregate_functions().contains_key(&name)
                || state.window_functions().contains_key(&name)
            {
                continue;
            }
            if let Some(manifest) = self.udfs.get(&name).await? {
                self.register_udf(state, &manifest, chamber).await?;
                registered.push(name);
            }
        }
        Ok(registered)
    }

    /// A meadow UDF in `state`, bound to the chamber's memory pool and deadline.
    pub(super) async fn register_udf(
        &self,
        state: &mut SessionState,
        manifest: &crate::udf::UdfManifest,
        chamber: &Chamber<'_>,
    ) -> Result<()> {
        use datafusion::execution::FunctionRegistry;
        let udf = self
            .udfs
            .scalar(
                manifest,
                chamber.runtime_env().memory_pool.clone(),
                chamber.deadline(),
            )
            .await?;
        state.register_udf(Arc::new(udf))?;
        Ok(())
    }

    /// Load a frame (at a version) and make it visible to the planner.
    pub(super) async fn bind(&self, key: TableKey) -> Result<()> {
        if self.bound.contains(&key) {
            return Ok(());
        }
        let frame = self.frames.open(&key.frame, key.version).await?;
        let cells = Arc::new(self.frames.cells(&frame)?);
        frame.table.update_datafusion_session(&self.ctx.state())?;
        // Scan settings (e.g. Parquet filter pushdown) follow the session's, as for any
        // other DataFusion table; deltalake's own default pushes every filter into the
        // Parquet reader, which costs more than it saves on the usual wide filters.
        let provider = frame
            .table
            .table_provider()
            .with_session(Arc::new(self.ctx.state()))
            .await?;
        let table = fragment::FrameTable {
            frame: key.frame.clone(),
            version: frame.version(),
            cells,
            inner: provider,
        };
        self.bound.insert(key, Arc::new(table));
        Ok(())
    }
}

/// The bytes a finished plan spilled to the chamber's scratch dir (logged when any).
pub(super) fn log_spill(chamber: &Chamber<'_>, physical: &dyn ExecutionPlan) -> u64 {
    let spilled = spilled_bytes(physical);
    if spilled > 0 {
        tracing::info!(
            bee = %chamber.bee_id(),
            spilled_bytes = spilled,
            scratch = %chamber.scratch().display(),
            "query spilled to the bee's scratch dir"
        );
    }
    spilled as u64
}

fn spilled_bytes(plan: &dyn ExecutionPlan) -> usize {
    let own = plan.metrics().and_then(|m| m.spilled_bytes()).unwrap_or(0);
    own + plan
        .children()
        .iter()
        .map(|c| spilled_bytes(c.as_ref()))
        .sum::<usize>()
}
