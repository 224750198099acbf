//! SQL: Apiary's statements are handled here; everything else is DataFusion SQL over a
//! catalog where hives are catalogs, boxes are schemas and frames are tables.

mod catalog;
mod dml;
pub(crate) mod fragment;
mod join_order;
mod plan;
mod result;
pub mod statement;
mod time_travel;

use std::sync::Arc;

use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SessionState;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast;
use futures::StreamExt;
use tokio::sync::mpsc;

use self::catalog::{Bound, FRAME_AT, FrameAtFunction, HiveList};
use self::plan::log_spill;
use self::result::describe;
pub use self::result::{Output, QueryResult};
use self::statement::Statement;
use crate::bees::{BeePool, Chamber};
use crate::error::{Error, ErrorKind, Result};
use crate::frames::{Column, FrameDef, Frames};
use crate::names::FrameRef;
use crate::udf::Udfs;

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

/// The query of a plain `EXPLAIN <query>` (not `EXPLAIN ANALYZE`, `VERBOSE` or with a
/// format, which DataFusion answers itself).
pub(super) fn explained(stmt: &ast::Statement) -> Option<&ast::Statement> {
    match stmt {
        ast::Statement::Explain {
            describe_alias: ast::DescribeAlias::Explain,
            analyze: false,
            verbose: false,
            query_plan: false,
            estimate: false,
            statement,
            format: None,
            options: None,
        } => Some(statement),
        _ => None,
    }
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
            Arc::new(FrameAtFunction {
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

    /// Run `;`-separated statements in order; one result per statement. The whole script
    /// is parsed first, so a syntax error at its end runs none of it.
    pub async fn run_script(&mut self, sql: &str) -> Result<Vec<QueryResult>> {
        let statements = statement::parse_script(sql)?;
        if statements.is_empty() {
            return Err(Error::invalid("no SQL statement given"));
        }
        let mut results = Vec::with_capacity(statements.len());
        for s in statements {
            results.push(self.execute(s).await?);
        }
        Ok(results)
    }

    /// Run one statement (SQL text) in a chamber.
    pub async fn run(&mut self, sql: &str) -> Result<QueryResult> {
        self.execute(statement::parse(sql)?).await
    }

    /// Run one parsed statement in a chamber.
    pub async fn execute(&mut self, statement: Statement) -> Result<QueryResult> {
        let pool = self.pool.clone();
        let label = statement.to_string();
        let result = pool
            .run(&label, async |chamber| {
                self.run_statement(chamber, statement).await
            })
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
    pub async fn run_streamed(
        &mut self,
        statement: Statement,
        out: mpsc::Sender<Output>,
    ) -> Result<()> {
        let pool = self.pool.clone();
        let label = statement.to_string();
        let result = pool
            .run(&label, async |chamber| {
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
            Statement::Describe(name) => describe(&self.frames.info(&self.resolve(&name)?).await?),
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
                let frame = self.resolve(&name)?;
                let def = FrameDef::new(&frame, columns, partition_by)?;
                let created = self.frames.create_frame(&def).await?;
                if !created && !if_not_exists {
                    return Err(Error::already_exists(format!(
                        "frame already exists: {frame}"
                    )));
                }
                Ok(QueryResult::empty())
            }
            Statement::DropHive {
                name,
                if_exists,
                cascade,
            } => dropped(
                self.frames.registry().drop_hive(&name, cascade).await,
                if_exists,
            ),
            Statement::DropBox {
                name,
                if_exists,
                cascade,
            } => {
                let (h, b) = self.resolve_box(&name)?;
                dropped(
                    self.frames.registry().drop_box(&h, &b, cascade).await,
                    if_exists,
                )
            }
            Statement::DropFrame { name, if_exists } => dropped(
                self.frames.drop_frame(&self.resolve(&name)?).await,
                if_exists,
            ),
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
            Statement::DropFunction { name, if_exists } => {
                dropped(self.udfs.remove(&name).await, if_exists)
            }
            Statement::Insert {
                name,
                columns,
                source,
                overwrite,
            } => {
                self.insert(chamber, &name, columns, source, overwrite)
                    .await
            }
            Statement::AddColumns {
                name,
                columns,
                if_not_exists,
            } => {
                let frame = self.resolve(&name)?;
                let def = self.frames.registry().frame(&frame).await?;
                let present = |c: &&Column| def.columns.iter().any(|d| d.name == c.name);
                if let Some(c) = columns.iter().find(present)
                    && !if_not_exists
                {
                    return Err(Error::already_exists(format!(
                        "frame {frame} has a column {} already",
                        c.name
                    )));
                }
                // Old cells read the new columns as null; the next write adds them to the
                // Delta table's schema.
                self.frames.registry().add_columns(&frame, &columns).await?;
                Ok(QueryResult::empty())
            }
            Statement::Delete { name, predicate } => self.delete(chamber, &name, predicate).await,
            Statement::Update {
                name,
                assignments,
                predicate,
            } => self.update(chamber, &name, assignments, predicate).await,
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
    pub fn resolve(&self, name: &[String]) -> Result<FrameRef> {
        let missing = |what: &str| {
            Error::invalid(format!(
                "frame name {} needs a {what}: write hive.box.frame, or USE HIVE and USE BOX first",
                name.join(".")
            ))
        };
        match name {
            [f] => FrameRef::new(
                self.hive
                    .as_deref()
                    .ok_or_else(|| missing("hive and box"))?,
                self.box_name.as_deref().ok_or_else(|| missing("box"))?,
                f,
            ),
            [b, f] => FrameRef::new(self.hive.as_deref().ok_or_else(|| missing("hive"))?, b, f),
            [h, b, f] => FrameRef::new(h, b, f),
            _ => Err(Error::invalid(format!("bad frame name {}", name.join(".")))),
        }
    }
}

/// The result of a DROP: nothing to drop is fine with IF EXISTS.
fn dropped(result: Result<()>, if_exists: bool) -> Result<QueryResult> {
    match result {
        Err(e) if e.kind == ErrorKind::NotFound && if_exists => Ok(QueryResult::empty()),
        other => other.map(|_| QueryResult::empty()),
    }
}
