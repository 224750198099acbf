//! SQL: Apiary's statements are handled here; everything else is DataFusion SQL over a
//! catalog where hives are catalogs, boxes are schemas and frames are tables.

mod catalog;
pub mod fragment;
mod join_order;
pub mod statement;

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::TableReference;
use datafusion::config::Dialect;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::context::SessionState;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::tokenizer::{Token, Word};
use futures::StreamExt;
use tokio::sync::mpsc;

use self::catalog::{Bound, FRAME_AT, FrameAt, HiveList, TableKey};
use self::statement::{Name, Statement};
use crate::bees::{BeePool, Chamber};
use crate::error::{Error, ErrorKind, Result};
use crate::frames::{FrameDef, Frames, WriteCtx};
use crate::udf::Udfs;

/// The result of one statement: a schema and its batches (none for DDL).
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// Bytes the query's operators spilled to the chamber's scratch dir.
    pub spilled_bytes: u64,
}

impl QueryResult {
    fn empty() -> Self {
        QueryResult {
            schema: Arc::new(Schema::empty()),
            batches: vec![],
            spilled_bytes: 0,
        }
    }

    fn single(columns: Vec<(&str, ArrayRef)>) -> Result<Self> {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let batch =
            RecordBatch::try_new(schema.clone(), columns.into_iter().map(|c| c.1).collect())?;
        Ok(QueryResult {
            schema,
            batches: vec![batch],
            spilled_bytes: 0,
        })
    }

    fn names(column: &str, names: Vec<String>) -> Result<Self> {
        Self::single(vec![(column, Arc::new(StringArray::from(names)))])
    }

    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// What shares a query's work with other nodes (the swarm). Given a physical plan, it
/// returns the plan to run: the same, or with stages ([`fragment::stages`]) replaced by nodes
/// that run them across the swarm.
#[async_trait::async_trait]
pub trait Distribute: Send + Sync + std::fmt::Debug {
    async fn distribute(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        state: &SessionState,
        udfs: &[String],
    ) -> Result<Arc<dyn ExecutionPlan>>;

    /// The query of `plan` is over (finished, failed or stopped early): remove what it left
    /// in the meadow.
    async fn finish(&self, plan: &Arc<dyn ExecutionPlan>);
}

/// One piece of a streamed result (`Session::run_streamed`).
#[derive(Debug)]
pub enum Output {
    Schema(SchemaRef),
    Batch(RecordBatch),
}

/// The query of `EXPLAIN <query>` (not `EXPLAIN ANALYZE`/`VERBOSE`, which DataFusion runs).
fn explained(sql: &str) -> Option<&str> {
    let t = sql.trim_start();
    let rest = t.get(..8).filter(|p| p.eq_ignore_ascii_case("explain "))?;
    let inner = t[rest.len()..].trim_start();
    let word = inner.split_whitespace().next()?.to_ascii_lowercase();
    (!matches!(word.as_str(), "analyze" | "verbose" | "format")).then_some(inner)
}

/// The bytes a finished plan spilled to the chamber's scratch dir (logged when any).
fn log_spill(chamber: &Chamber<'_>, physical: &dyn ExecutionPlan) -> u64 {
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

/// A SQL session: the current hive and box (`USE`) persist across its statements. Each
/// statement runs as one task in a bee chamber.
pub struct Session {
    frames: Frames,
    pool: BeePool,
    ctx: SessionContext,
    /// The session's state rebuilt on each bee's runtime, kept until the session changes
    /// (building one re-registers every function: too slow to do per statement).
    states: std::sync::Mutex<std::collections::HashMap<String, SessionState>>,
    bound: Arc<Bound>,
    udfs: Udfs,
    distribute: Option<Arc<dyn Distribute>>,
    hive: Option<String>,
    box_name: Option<String>,
}

impl Session {
    /// `config` is the DataFusion configuration (e.g. target partitions); planning uses a
    /// runtime that shares the pool's object stores, execution the chamber's runtime.
    pub fn new(frames: Frames, pool: BeePool, udfs: Udfs, config: SessionConfig) -> Session {
        let bound = Arc::new(Bound::default());
        let config = config
            .with_information_schema(false)
            .with_create_default_catalog_and_schema(false);
        let runtime = RuntimeEnvBuilder::new()
            .with_object_store_registry(pool.object_stores())
            .build_arc()
            .expect("a runtime with default settings builds");
        let mut rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
        let at = rules
            .iter()
            .position(|r| r.name() == join_order::AFTER)
            .map_or(0, |i| i + 1);
        rules.insert(at, Arc::new(join_order::SmallerBuildSide));
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_physical_optimizer_rules(rules)
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.register_catalog_list(Arc::new(HiveList {
            bound: bound.clone(),
        }));
        ctx.register_udtf(
            FRAME_AT,
            Arc::new(FrameAt {
                bound: bound.clone(),
            }),
        );
        Session {
            frames,
            pool,
            udfs,
            ctx,
            states: Default::default(),
            bound,
            distribute: None,
            hive: None,
            box_name: None,
        }
    }

    /// Let `d` share this session's queries with the swarm.
    pub fn with_distribute(mut self, d: Option<Arc<dyn Distribute>>) -> Session {
        self.distribute = d;
        self
    }

    /// The state a swarm stage runs in on this node: a chamber's runtime and the named UDFs.
    pub async fn stage_state(
        &self,
        chamber: &Chamber<'_>,
        udfs: &[String],
    ) -> Result<SessionState> {
        let mut state = self.state_in(chamber);
        for name in udfs {
            let manifest = self.udfs.get(name).await?.ok_or_else(|| {
                Error::not_found(format!("function {name} (used by a swarm task) is gone"))
            })?;
            self.register_udf(&mut state, &manifest, chamber).await?;
        }
        Ok(state)
    }

    pub fn frames(&self) -> &Frames {
        &self.frames
    }

    pub fn hive(&self) -> Option<&str> {
        self.hive.as_deref()
    }

    pub fn box_name(&self) -> Option<&str> {
        self.box_name.as_deref()
    }

    /// Run `;`-separated statements in order; one result per statement.
    pub async fn run_script(&mut self, sql: &str) -> Result<Vec<QueryResult>> {
        let statements = statement::split(sql)?;
        if statements.is_empty() {
            return Err(Error::invalid("no SQL statement given"));
        }
        // Check the syntax of every statement before running any, so a typo at the end of
        // a script does not leave its first statements committed. (A single statement is
        // checked when it runs.)
        for s in statements.iter().filter(|_| statements.len() > 1) {
            if let Statement::Query(q) = statement::parse(s)? {
                // Names are not resolved yet (an earlier USE may change them): keep them as written.
                let (q, _) = rewrite_time_travel(&q, |parts| {
                    let mut p = parts.to_vec();
                    while p.len() < 3 {
                        p.insert(0, "_".into());
                    }
                    Ok((p[0].clone(), p[1].clone(), p[2].clone()))
                })?;
                self.ctx.state().sql_to_statement(&q, &Dialect::Generic)?;
            }
        }
        let mut results = Vec::with_capacity(statements.len());
        for s in statements {
            results.push(self.run(&s).await?);
        }
        Ok(results)
    }

    /// Run one statement in a chamber.
    pub async fn run(&mut self, sql: &str) -> Result<QueryResult> {
        let pool = self.pool.clone();
        let result = pool
            .run(sql, async |chamber| self.run_inner(chamber, sql).await)
            .await;
        self.bound.clear();
        result
    }

    /// The session's DataFusion state running on a chamber's runtime (memory pool, scratch).
    fn state_in(&self, chamber: &Chamber<'_>) -> SessionState {
        let mut states = self.states.lock().expect("session states");
        states
            .entry(chamber.bee_id())
            .or_insert_with(|| {
                SessionStateBuilder::new_from_existing(self.ctx.state())
                    .with_runtime_env(chamber.runtime_env())
                    .build()
            })
            .clone()
    }

    /// Run one statement and send its result to `out` as it is produced: the schema, then
    /// each batch. A query's batches are computed as the receiver takes them (the channel's
    /// bound is the memory a slow reader can hold up); the chamber stays busy until the last
    /// one, and a receiver that goes away stops the query.
    pub async fn run_streamed(&mut self, sql: &str, out: mpsc::Sender<Output>) -> Result<()> {
        let pool = self.pool.clone();
        let result = pool
            .run(sql, async |chamber| {
                let statement = statement::parse(sql)?;
                let Statement::Query(q) = statement else {
                    let r = self.run_statement(chamber, statement).await?;
                    if out.send(Output::Schema(r.schema)).await.is_ok() {
                        for b in r.batches {
                            if out.send(Output::Batch(b)).await.is_err() {
                                break;
                            }
                        }
                    }
                    return Ok(());
                };
                let (schema, physical, state) = self.plan(chamber, &q).await?;
                if out.send(Output::Schema(schema)).await.is_err() {
                    return Ok(());
                }
                let streamed = async {
                    let mut stream = datafusion::physical_plan::execute_stream(
                        physical.clone(),
                        state.task_ctx(),
                    )?;
                    while let Some(batch) = stream.next().await {
                        if out.send(Output::Batch(batch?)).await.is_err() {
                            return Ok(()); // the receiver left: dropping the stream stops the query
                        }
                    }
                    log_spill(chamber, physical.as_ref());
                    Ok(())
                }
                .await;
                self.finish(&physical).await;
                streamed
            })
            .await;
        self.bound.clear();
        result
    }

    /// After a query ran (to its end or not): let the swarm tidy up what it shared.
    async fn finish(&self, physical: &Arc<dyn ExecutionPlan>) {
        if let Some(d) = &self.distribute {
            d.finish(physical).await;
        }
    }

    /// Set the current hive and box as `USE` would (both checked to exist).
    pub async fn use_scope(
        &mut self,
        hive: Option<String>,
        box_name: Option<String>,
    ) -> Result<()> {
        let registry = self.frames.registry();
        match (&hive, &box_name) {
            (Some(h), Some(b)) => registry.require_box(h, b).await?,
            (Some(h), None) => registry.require_hive(h).await?,
            (None, Some(b)) => {
                return Err(Error::invalid(format!("box {b} given without its hive")));
            }
            (None, None) => return Ok(()),
        }
        self.set_scope(hive, box_name);
        Ok(())
    }

    async fn run_inner(&mut self, chamber: &Chamber<'_>, sql: &str) -> Result<QueryResult> {
        let statement = statement::parse(sql)?;
        self.run_statement(chamber, statement).await
    }

    async fn run_statement(
        &mut self,
        chamber: &Chamber<'_>,
        statement: Statement,
    ) -> Result<QueryResult> {
        match statement {
            Statement::Query(q) => self.query(chamber, &q).await,
            Statement::UseHive(h) => {
                self.frames.registry().require_hive(&h).await?;
                self.set_scope(Some(h), None);
                Ok(QueryResult::empty())
            }
            Statement::UseBox(name) => {
                let (h, b) = self.resolve_box(&name)?;
                self.frames.registry().require_box(&h, &b).await?;
                self.set_scope(Some(h), Some(b));
                Ok(QueryResult::empty())
            }
            Statement::ShowHives => {
                QueryResult::names("hive", self.frames.registry().list_hives().await?)
            }
            Statement::ShowBoxes(h) => {
                let h = match h {
                    Some(h) => h,
                    None => self.current_hive()?,
                };
                QueryResult::names("box", self.frames.registry().list_boxes(&h).await?)
            }
            Statement::ShowFrames(name) => {
                let (h, b) = match name {
                    Some(n) => self.resolve_box(&n)?,
                    None => (self.current_hive()?, self.current_box()?),
                };
                QueryResult::names("frame", self.frames.registry().list_frames(&h, &b).await?)
            }
            Statement::Describe(name) => {
                let (h, b, f) = self.resolve(&name)?;
                describe(&self.frames.info(&h, &b, &f).await?)
            }
            Statement::CreateHive {
                name,
                if_not_exists,
            } => {
                let created = self.frames.registry().create_hive(&name).await?;
                if !created && !if_not_exists {
                    return Err(Error::already_exists(format!(
                        "hive already exists: {name}"
                    )));
                }
                Ok(QueryResult::empty())
            }
            Statement::CreateBox {
                name,
                if_not_exists,
            } => {
                let (h, b) = self.resolve_box(&name)?;
                let created = self.frames.registry().create_box(&h, &b).await?;
                if !created && !if_not_exists {
                    return Err(Error::already_exists(format!(
                        "box already exists: {h}.{b}"
                    )));
                }
                Ok(QueryResult::empty())
            }
            Statement::CreateFrame {
                name,
                columns,
                partition_by,
                if_not_exists,
            } => {
                let (h, b, f) = self.resolve(&name)?;
                let def = FrameDef::new(&h, &b, &f, columns, partition_by)?;
                let created = self.frames.create_frame(&def).await?;
                if !created && !if_not_exists {
                    return Err(Error::already_exists(format!(
                        "frame already exists: {h}.{b}.{f}"
                    )));
                }
                Ok(QueryResult::empty())
            }
            Statement::DropFrame { name, if_exists } => {
                let (h, b, f) = self.resolve(&name)?;
                match self.frames.drop_frame(&h, &b, &f).await {
                    Err(e) if e.kind == ErrorKind::NotFound && if_exists => {
                        Ok(QueryResult::empty())
                    }
                    other => other.map(|_| QueryResult::empty()),
                }
            }
            Statement::CreateFunction {
                name,
                source,
                replace,
            } => {
                let path = source.strip_prefix("file://").unwrap_or(&source);
                if path.contains("://") {
                    return Err(Error::unsupported(format!(
                        "CREATE FUNCTION {name}: {source} is not a local path; give a path (or file:// URI) on this node, or upload with `apiary udf add`"
                    )));
                }
                let wasm = tokio::fs::read(path).await.map_err(|e| {
                    Error::invalid(format!("CREATE FUNCTION {name}: cannot read {path}: {e}"))
                })?;
                self.udfs.add(&name, wasm.into(), replace).await?;
                Ok(QueryResult::empty())
            }
            Statement::DropFunction { name, if_exists } => match self.udfs.remove(&name).await {
                Err(e) if e.kind == ErrorKind::NotFound && if_exists => Ok(QueryResult::empty()),
                other => other.map(|_| QueryResult::empty()),
            },
            Statement::Insert {
                name,
                columns,
                source,
                overwrite,
            } => {
                self.insert(chamber, &name, columns, &source, overwrite)
                    .await
            }
        }
    }

    fn set_scope(&mut self, hive: Option<String>, box_name: Option<String>) {
        // DataFusion resolves one- and two-part names against its default catalog and schema.
        self.states.lock().expect("session states").clear();
        let state = self.ctx.state_ref();
        let mut state = state.write();
        let opts = &mut state.config_mut().options_mut().catalog;
        if let Some(h) = &hive {
            opts.default_catalog = h.clone();
        }
        if let Some(b) = &box_name {
            opts.default_schema = b.clone();
        }
        if hive.as_deref() != self.hive.as_deref() && box_name.is_none() {
            self.box_name = None;
        }
        self.hive = hive.or(self.hive.take());
        if box_name.is_some() {
            self.box_name = box_name;
        }
    }

    fn current_hive(&self) -> Result<String> {
        self.hive.clone().ok_or_else(|| {
            Error::invalid("no hive selected: name it (hive.box) or run USE HIVE <hive> first")
        })
    }

    fn current_box(&self) -> Result<String> {
        self.box_name.clone().ok_or_else(|| {
            Error::invalid("no box selected: name it (hive.box.frame) or run USE BOX <box> first")
        })
    }

    fn resolve_box(&self, name: &[String]) -> Result<(String, String)> {
        match name {
            [b] => Ok((self.current_hive()?, b.clone())),
            [h, b] => Ok((h.clone(), b.clone())),
            _ => Err(Error::invalid(format!(
                "bad box name {}: use box or hive.box",
                name.join(".")
            ))),
        }
    }

    /// Complete a frame name with the current hive and box.
    pub fn resolve(&self, name: &[String]) -> Result<(String, String, String)> {
        let missing = |what: &str| {
            Error::invalid(format!(
                "frame name {} needs a {what}: write hive.box.frame, or USE HIVE and USE BOX first",
                name.join(".")
            ))
        };
        match name {
            [f] => Ok((
                self.hive.clone().ok_or_else(|| missing("hive and box"))?,
                self.box_name.clone().ok_or_else(|| missing("box"))?,
                f.clone(),
            )),
            [b, f] => Ok((
                self.hive.clone().ok_or_else(|| missing("hive"))?,
                b.clone(),
                f.clone(),
            )),
            [h, b, f] => Ok((h.clone(), b.clone(), f.clone())),
            _ => Err(Error::invalid(format!("bad frame name {}", name.join(".")))),
        }
    }

    /// Run a query through DataFusion in the chamber and collect its result.
    async fn query(&mut self, chamber: &Chamber<'_>, sql: &str) -> Result<QueryResult> {
        let (schema, physical, state) = self.plan(chamber, sql).await?;
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
    async fn plan(
        &mut self,
        chamber: &Chamber<'_>,
        sql: &str,
    ) -> Result<(SchemaRef, Arc<dyn ExecutionPlan>, SessionState)> {
        let Some(inner) = explained(sql) else {
            let (schema, physical, state, _) = self.plan_query(chamber, sql).await?;
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
    async fn plan_query(
        &mut self,
        chamber: &Chamber<'_>,
        sql: &str,
    ) -> Result<(
        SchemaRef,
        Arc<dyn ExecutionPlan>,
        SessionState,
        datafusion::logical_expr::LogicalPlan,
    )> {
        let (sql, versions) = rewrite_time_travel(sql, |parts| self.resolve(parts))?;
        for (h, b, f, v) in versions {
            self.bind((h, b, f, Some(v))).await?;
        }
        let mut state = self.state_in(chamber);
        let stmt = state.sql_to_statement(&sql, &Dialect::Generic)?;
        let udfs = self.register_udfs(&mut state, &stmt, chamber).await?;
        let udtfs = state.table_functions();
        for reference in state.resolve_table_references(&stmt)? {
            if let TableReference::Bare { table } = &reference
                && udtfs.contains_key(table.as_ref())
            {
                continue;
            }
            let parts: Vec<String> = reference.to_vec();
            let (h, b, f) = self.resolve(&parts)?;
            self.bind((h, b, f, None)).await?;
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
    async fn register_udfs(
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
    async fn register_udf(
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
    async fn bind(&self, key: TableKey) -> Result<()> {
        if self.bound.contains(&key) {
            return Ok(());
        }
        let (h, b, f, v) = &key;
        let frame = self.frames.open(h, b, f, *v).await?;
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
            hive: h.clone(),
            box_name: b.clone(),
            frame: f.clone(),
            version: frame.version(),
            cells,
            inner: provider,
        };
        self.bound.insert(key, Arc::new(table));
        Ok(())
    }

    async fn insert(
        &mut self,
        chamber: &Chamber<'_>,
        name: &Name,
        columns: Vec<String>,
        source: &str,
        overwrite: bool,
    ) -> Result<QueryResult> {
        let (h, b, f) = self.resolve(name)?;
        let def = self.frames.registry().frame(&h, &b, &f).await?;
        let rows = self.query(chamber, source).await?;
        let targets: Vec<String> = if columns.is_empty() {
            def.columns.iter().map(|c| c.name.clone()).collect()
        } else {
            columns
        };
        if rows.schema.fields().len() != targets.len() {
            return Err(Error::invalid(format!(
                "INSERT into {h}.{b}.{f}: {} values per row for {} columns ({})",
                rows.schema.fields().len(),
                targets.len(),
                targets.join(", ")
            )));
        }
        let schema = Arc::new(Schema::new(
            rows.schema
                .fields()
                .iter()
                .zip(&targets)
                .map(|(fl, n)| Field::new(n, fl.data_type().clone(), true))
                .collect::<Vec<_>>(),
        ));
        let batches = rows
            .batches
            .into_iter()
            .map(|batch| RecordBatch::try_new(schema.clone(), batch.columns().to_vec()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let ctx = WriteCtx {
            txn: None,
            session: Some(crate::frames::write_session(chamber.runtime_env())),
        };
        let report = if overwrite {
            self.frames.overwrite(&h, &b, &f, batches, ctx).await?
        } else {
            self.frames.append(&h, &b, &f, batches, ctx).await?
        };
        QueryResult::single(vec![(
            "count",
            Arc::new(UInt64Array::from(vec![report.rows_written])),
        )])
    }
}

fn spilled_bytes(plan: &dyn ExecutionPlan) -> usize {
    let own = plan.metrics().and_then(|m| m.spilled_bytes()).unwrap_or(0);
    own + plan
        .children()
        .iter()
        .map(|c| spilled_bytes(c.as_ref()))
        .sum::<usize>()
}

fn describe(info: &crate::frames::FrameInfo) -> Result<QueryResult> {
    let def = &info.def;
    let n = def.columns.len();
    let types: Vec<String> = def
        .columns
        .iter()
        .map(|c| crate::frames::types::canonical(&c.type_name).map(str::to_string))
        .collect::<Result<_>>()?;
    QueryResult::single(vec![
        (
            "column_name",
            Arc::new(StringArray::from_iter_values(
                def.columns.iter().map(|c| &c.name),
            )),
        ),
        ("data_type", Arc::new(StringArray::from(types))),
        (
            "partition",
            Arc::new(BooleanArray::from_iter(
                def.columns.iter().map(|c| Some(def.is_partition(&c.name))),
            )),
        ),
        (
            "cells",
            Arc::new(UInt64Array::from(vec![info.cell_count; n])),
        ),
        ("rows", Arc::new(UInt64Array::from(vec![info.row_count; n]))),
        (
            "bytes",
            Arc::new(UInt64Array::from(vec![info.total_bytes; n])),
        ),
        ("version", Arc::new(Int64Array::from(vec![info.version; n]))),
    ])
}

/// `h.b.f VERSION AS OF n` becomes `frame_at('h.b.f', n)`, and names inside `frame_at`
/// are completed with the current hive and box. Returns the versions to bind.
type Resolved = (String, String, String);
/// A frame at a version: hive, box, frame, version.
type TableKeyAt = (String, String, String, i64);

fn rewrite_time_travel(
    sql: &str,
    resolve: impl Fn(&[String]) -> Result<Resolved>,
) -> Result<(String, Vec<TableKeyAt>)> {
    let lower = sql.to_ascii_lowercase();
    if !lower.contains("version") && !lower.contains(FRAME_AT) {
        return Ok((sql.to_string(), Vec::new()));
    }
    let toks = statement::tokenize(sql)?;
    let sig: Vec<usize> = (0..toks.len())
        .filter(|&i| !matches!(toks[i], Token::Whitespace(_)))
        .collect();
    let word = |i: usize, kw: &str| matches!(&toks[i], Token::Word(Word { value, quote_style: None, .. }) if value.eq_ignore_ascii_case(kw));
    let ident = |t: &Token| match t {
        Token::Word(w) if w.quote_style.is_some() => Some(w.value.clone()),
        Token::Word(w) => Some(w.value.to_ascii_lowercase()),
        _ => None,
    };
    let number = |t: &Token| match t {
        Token::Number(n, _) => n.parse::<i64>().ok(),
        _ => None,
    };
    let mut out: Vec<String> = toks.iter().map(|t| t.to_string()).collect();
    let mut versions = Vec::new();
    let mut k = 0;
    while k < sig.len() {
        // name VERSION AS OF n
        if k + 3 < sig.len()
            && word(sig[k], "VERSION")
            && word(sig[k + 1], "AS")
            && word(sig[k + 2], "OF")
        {
            let version = number(&toks[sig[k + 3]])
                .ok_or_else(|| Error::invalid("VERSION AS OF takes a whole number"))?;
            // Walk back over `part(.part)*` before VERSION.
            let mut first = k;
            let mut parts = Vec::new();
            loop {
                if first == 0 {
                    break;
                }
                let Some(p) = ident(&toks[sig[first - 1]]) else {
                    break;
                };
                parts.insert(0, p);
                first -= 1;
                if first > 0 && toks[sig[first - 1]] == Token::Period {
                    first -= 1;
                } else {
                    break;
                }
            }
            if parts.is_empty() {
                return Err(Error::invalid("VERSION AS OF must follow a frame name"));
            }
            let (h, b, f) = resolve(&parts)?;
            for slot in &mut out[sig[first]..=sig[k + 3]] {
                slot.clear();
            }
            out[sig[first]] = format!("{FRAME_AT}('{h}.{b}.{f}', {version})");
            versions.push((h, b, f, version));
            k += 4;
            continue;
        }
        // frame_at('name', n)
        if k + 5 < sig.len()
            && word(sig[k], FRAME_AT)
            && toks[sig[k + 1]] == Token::LParen
            && toks[sig[k + 3]] == Token::Comma
            && toks[sig[k + 5]] == Token::RParen
            && let Token::SingleQuotedString(name) = &toks[sig[k + 2]]
            && let Some(version) = number(&toks[sig[k + 4]])
        {
            let parts: Vec<String> = name.split('.').map(str::to_string).collect();
            let (h, b, f) = resolve(&parts)?;
            out[sig[k + 2]] = format!("'{h}.{b}.{f}'");
            versions.push((h, b, f, version));
            k += 6;
            continue;
        }
        k += 1;
    }
    Ok((out.concat(), versions))
}
