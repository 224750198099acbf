//! Time travel, on a statement's AST: `h.b.f VERSION AS OF n` and `frame_at('h.b.f', n)`
//! both become the `frame_at` table function with the frame's full name, and the versions
//! they name are returned for binding before the statement is planned.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, Ident, ObjectName, TableFactor, TableFunctionArgs,
    TableVersion, Value, VisitMut, VisitorMut,
};

use super::catalog::{FRAME_AT, TableKey};
use crate::error::{Error, Result};
use crate::names::FrameRef;

/// Rewrite every versioned frame in `stmt` to `frame_at('hive.box.frame', n)`, names
/// completed by `resolve`; the frames and versions to bind.
pub(super) fn bind_versions(
    stmt: &mut ast::Statement,
    resolve: impl Fn(&[String]) -> Result<FrameRef>,
) -> Result<Vec<TableKey>> {
    let mut v = Versions {
        resolve,
        found: Vec::new(),
    };
    match stmt.visit(&mut v) {
        ControlFlow::Continue(()) => Ok(v.found),
        ControlFlow::Break(e) => Err(e),
    }
}

struct Versions<F> {
    resolve: F,
    found: Vec<TableKey>,
}

impl<F: Fn(&[String]) -> Result<FrameRef>> VisitorMut for Versions<F> {
    type Break = Error;

    fn pre_visit_table_factor(&mut self, table: &mut TableFactor) -> ControlFlow<Error> {
        match self.rewrite(table) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(e),
        }
    }
}

impl<F: Fn(&[String]) -> Result<FrameRef>> Versions<F> {
    fn rewrite(&mut self, table: &mut TableFactor) -> Result<()> {
        let TableFactor::Table {
            name,
            args,
            version,
            ..
        } = table
        else {
            return Ok(());
        };
        let (frame, n) = match (version.take(), args.as_ref()) {
            (Some(TableVersion::VersionAsOf(e)), None) => {
                let parts = name_parts(name)?;
                ((self.resolve)(&parts)?, number(&e)?)
            }
            (Some(other), _) => {
                return Err(Error::unsupported(format!(
                    "{other} is not supported: a frame travels in time with VERSION AS OF <version>"
                )));
            }
            (None, Some(a)) if is_frame_at(name) => frame_at_args(&a.args, &self.resolve)?,
            (None, _) => return Ok(()),
        };
        let literal = |v: Value| FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v.into())));
        *name = ObjectName::from(vec![Ident::new(FRAME_AT)]);
        *args = Some(TableFunctionArgs {
            args: vec![
                literal(Value::SingleQuotedString(frame.to_string())),
                literal(Value::Number(n.to_string(), false)),
            ],
            settings: None,
        });
        self.found.push(frame.at(Some(n)));
        Ok(())
    }
}

/// A name's parts as SQL means them: unquoted ones folded to lower case.
fn name_parts(name: &ObjectName) -> Result<Vec<String>> {
    name.0
        .iter()
        .map(|p| {
            let id = p
                .as_ident()
                .ok_or_else(|| Error::invalid(format!("bad frame name {name}")))?;
            Ok(match id.quote_style {
                Some(_) => id.value.clone(),
                None => id.value.to_ascii_lowercase(),
            })
        })
        .collect()
}

fn is_frame_at(name: &ObjectName) -> bool {
    matches!(name.0.as_slice(), [p] if p.as_ident().is_some_and(|i| i.value.eq_ignore_ascii_case(FRAME_AT)))
}

fn number(e: &Expr) -> Result<i64> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        _ => None,
    }
    .ok_or_else(|| Error::invalid(format!("a frame version is a whole number, not {e}")))
}

/// `frame_at('name', n)`: the name completed, and the version.
fn frame_at_args(
    args: &[FunctionArg],
    resolve: &impl Fn(&[String]) -> Result<FrameRef>,
) -> Result<(FrameRef, i64)> {
    let usage = || {
        Error::invalid("frame_at takes a frame name and a version: frame_at('hive.box.frame', 3)")
    };
    let [
        FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(name))),
        FunctionArg::Unnamed(FunctionArgExpr::Expr(version)),
    ] = args
    else {
        return Err(usage());
    };
    let Value::SingleQuotedString(name) = &name.value else {
        return Err(usage());
    };
    let parts: Vec<String> = name.split('.').map(str::to_string).collect();
    Ok((resolve(&parts)?, number(version).map_err(|_| usage())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::statement::{Statement, parse};

    fn rewritten(sql: &str) -> Result<(String, Vec<TableKey>)> {
        let Statement::Query(mut q) = parse(sql)? else {
            panic!("{sql} is not a query")
        };
        let found = bind_versions(&mut q, |parts| match parts {
            [f] => FrameRef::new("h", "b", f),
            [h, b, f] => FrameRef::new(h, b, f),
            _ => Err(Error::invalid("bad name")),
        })?;
        Ok((q.to_string(), found))
    }

    #[test]
    fn versions_become_frame_at_with_full_names() {
        let (sql, found) = rewritten(
            "SELECT * FROM t VERSION AS OF 3 JOIN x.y.\"Z\" VERSION AS OF 1 ON true \
             WHERE k IN (SELECT k FROM frame_at('u', 2))",
        )
        .unwrap();
        assert!(sql.contains("frame_at('h.b.t', 3)"), "{sql}");
        assert!(sql.contains("frame_at('x.y.Z', 1)"), "{sql}");
        assert!(sql.contains("frame_at('h.b.u', 2)"), "{sql}");
        let keys: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            keys,
            [
                "h.b.t VERSION AS OF 3",
                "x.y.Z VERSION AS OF 1",
                "h.b.u VERSION AS OF 2"
            ]
        );
        let (plain, none) = rewritten("SELECT version FROM t AS version").unwrap();
        assert!(none.is_empty() && !plain.contains("frame_at"), "{plain}");
    }

    #[test]
    fn bad_time_travel_is_a_clear_error() {
        let e = rewritten("SELECT * FROM t TIMESTAMP AS OF '2026-01-01'").unwrap_err();
        assert!(e.message.contains("VERSION AS OF"), "{e}");
        let e = rewritten("SELECT * FROM frame_at('t')").unwrap_err();
        assert!(e.message.contains("frame_at takes"), "{e}");
    }
}
