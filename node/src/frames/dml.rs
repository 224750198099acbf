//! DELETE and UPDATE on a frame: Delta's own operations, which rewrite only the cells holding
//! matching rows and commit with Delta's conflict checks (a concurrent append to other cells
//! goes through; a change that touched what this one read makes it fail as a conflict).

use std::sync::Arc;

use datafusion::execution::FunctionRegistry as _;
use datafusion::execution::context::SessionState;
use datafusion::execution::runtime_env::RuntimeEnv;
use deltalake::kernel::transaction::CommitProperties;

use super::{COMMIT_RETRIES, Frames, writer_properties};
use crate::error::{Error, Result};
use crate::names::FrameRef;

/// What a DELETE or UPDATE did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeReport {
    /// Delta version of the commit.
    pub version: i64,
    /// Rows deleted or updated; `None` when whole cells went and their row count was not known.
    pub rows: Option<u64>,
}

/// The session a DELETE or UPDATE runs in: Delta's planner on the chamber's runtime, with the
/// functions of the session that checked the statement (the WASM UDFs it calls among them).
pub fn change_session(
    runtime: Arc<RuntimeEnv>,
    checked: &SessionState,
) -> Result<Arc<dyn datafusion::catalog::Session>> {
    let mut state =
        deltalake::delta_datafusion::DeltaSessionContext::with_runtime_env(runtime).state();
    for f in checked.scalar_functions().values() {
        if !state.scalar_functions().contains_key(f.name()) {
            state.register_udf(f.clone())?;
        }
    }
    Ok(Arc::new(state))
}

impl Frames {
    /// Delete the rows `predicate` (SQL over the frame's columns) matches, all without one,
    /// in one commit. `session` parses and runs it (the caller's functions and memory pool).
    pub async fn delete(
        &self,
        name: &FrameRef,
        predicate: Option<String>,
        session: Arc<dyn datafusion::catalog::Session>,
    ) -> Result<ChangeReport> {
        let frame = self.open(name, None).await?;
        let mut op = frame
            .table
            .delete()
            .with_session_state(session)
            .with_writer_properties(writer_properties())
            .with_commit_properties(CommitProperties::default().with_max_retries(COMMIT_RETRIES));
        if let Some(p) = predicate {
            op = op.with_predicate(p);
        }
        let (table, metrics) = op
            .await
            .map_err(|e| Error::from(e).context(format!("deleting from {name}")))?;
        Ok(ChangeReport {
            version: table.version().unwrap_or(0) as i64,
            rows: metrics.num_deleted_rows.map(|n| n as u64),
        })
    }

    /// Set `assignments` (column, SQL value) on the rows `predicate` matches, all without one,
    /// in one commit.
    pub async fn update(
        &self,
        name: &FrameRef,
        assignments: Vec<(String, String)>,
        predicate: Option<String>,
        session: Arc<dyn datafusion::catalog::Session>,
    ) -> Result<ChangeReport> {
        let frame = self.open(name, None).await?;
        let mut op = frame
            .table
            .update()
            .with_session_state(session)
            .with_writer_properties(writer_properties())
            .with_commit_properties(CommitProperties::default().with_max_retries(COMMIT_RETRIES));
        for (column, value) in assignments {
            op = op.with_update(column, value);
        }
        if let Some(p) = predicate {
            op = op.with_predicate(p);
        }
        let (table, metrics) = op
            .await
            .map_err(|e| Error::from(e).context(format!("updating {name}")))?;
        Ok(ChangeReport {
            version: table.version().unwrap_or(0) as i64,
            rows: Some(metrics.num_updated_rows as u64),
        })
    }
}
