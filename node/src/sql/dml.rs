//! The statements that change a frame's rows: INSERT (a write of a query's rows), DELETE and
//! UPDATE (Delta's operations). A DELETE's or UPDATE's SQL is planned first as the query it
//! implies, so a bad column, type or function is the error a query gives; the change then runs
//! with that planner's functions, in the chamber's memory.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::{RecordBatch, UInt64Array};
use arrow::datatypes::{Field, Schema};
use datafusion::sql::sqlparser::ast;

use super::statement::{Name, Statement};
use super::{QueryResult, Session};
use crate::bees::Chamber;
use crate::error::{Error, Result};
use crate::frames::{ChangeReport, WriteCtx, WriteMode};
use crate::names::FrameRef;

impl Session {
    pub(super) async fn insert(
        &mut self,
        chamber: &Chamber<'_>,
        name: &Name,
        columns: Vec<String>,
        source: Box<ast::Query>,
        overwrite: bool,
    ) -> Result<QueryResult> {
        let frame = self.resolve(name)?;
        let def = self.frames.registry().frame(&frame).await?;
        let rows = self.query(chamber, &ast::Statement::Query(source)).await?;
        let targets: Vec<String> = if columns.is_empty() {
            def.columns.iter().map(|c| c.name.clone()).collect()
        } else {
            columns
        };
        if rows.schema.fields().len() != targets.len() {
            return Err(Error::invalid(format!(
                "INSERT into {frame}: {} values per row for {} columns ({})",
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
        let mode = if overwrite {
            WriteMode::Overwrite
        } else {
            WriteMode::Append
        };
        let report = self.frames.write(&frame, batches, mode, ctx).await?;
        QueryResult::single(vec![(
            "count",
            Arc::new(UInt64Array::from(vec![report.rows_written])),
        )])
    }

    pub(super) async fn delete(
        &mut self,
        chamber: &Chamber<'_>,
        name: &Name,
        predicate: Option<ast::Expr>,
    ) -> Result<QueryResult> {
        let frame = self.resolve(name)?;
        let session = self
            .plan_change(chamber, &frame, &[], predicate.as_ref())
            .await?;
        let report = self
            .frames
            .delete(&frame, predicate.map(|p| p.to_string()), session)
            .await?;
        changed(report)
    }

    pub(super) async fn update(
        &mut self,
        chamber: &Chamber<'_>,
        name: &Name,
        assignments: Vec<(String, ast::Expr)>,
        predicate: Option<ast::Expr>,
    ) -> Result<QueryResult> {
        let frame = self.resolve(name)?;
        let def = self.frames.registry().frame(&frame).await?;
        if let Some((c, _)) = assignments
            .iter()
            .find(|(c, _)| !def.columns.iter().any(|d| d.name == *c))
        {
            return Err(Error::invalid(format!("UPDATE {frame}: no column {c}")));
        }
        let values: Vec<&ast::Expr> = assignments.iter().map(|(_, v)| v).collect();
        let session = self
            .plan_change(chamber, &frame, &values, predicate.as_ref())
            .await?;
        let assignments = assignments
            .into_iter()
            .map(|(c, v)| (c, v.to_string()))
            .collect();
        let report = self
            .frames
            .update(
                &frame,
                assignments,
                predicate.map(|p| p.to_string()),
                session,
            )
            .await?;
        changed(report)
    }

    /// Plan `SELECT values FROM frame WHERE predicate`: the change's expressions checked as a
    /// query's would be. The session to run the change in (`frames::change_session`).
    async fn plan_change(
        &mut self,
        chamber: &Chamber<'_>,
        frame: &FrameRef,
        values: &[&ast::Expr],
        predicate: Option<&ast::Expr>,
    ) -> Result<Arc<dyn datafusion::catalog::Session>> {
        let subquery = |e: &ast::Expr| {
            ast::visit_expressions(e, |e| match e {
                ast::Expr::Subquery(_)
                | ast::Expr::InSubquery { .. }
                | ast::Expr::Exists { .. } => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            })
            .is_break()
        };
        if values.iter().copied().chain(predicate).any(subquery) {
            return Err(Error::unsupported(format!(
                "changing {frame}: a subquery in DELETE or UPDATE is not supported; use \
                 INSERT OVERWRITE with a SELECT"
            )));
        }
        let select = if values.is_empty() {
            "1".to_string()
        } else {
            values
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let quoted: Vec<String> = frame
            .parts()
            .iter()
            .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
            .collect();
        let filter = predicate.map(|p| format!(" WHERE {p}")).unwrap_or_default();
        let sql = format!("SELECT {select} FROM {}{filter}", quoted.join("."));
        let Statement::Query(query) = super::statement::parse(&sql)? else {
            return Err(Error::internal(format!("not a query: {sql}")));
        };
        let (_, _, state, _) = self.plan_query(chamber, &query).await?;
        crate::frames::change_session(chamber.runtime_env(), &state)
    }
}

/// The rows a change touched, as INSERT reports the rows it wrote.
fn changed(report: ChangeReport) -> Result<QueryResult> {
    QueryResult::single(vec![(
        "count",
        Arc::new(UInt64Array::from(vec![report.rows])),
    )])
}
