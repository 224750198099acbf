//! The statements that change a frame's rows, read from sqlparser's AST: INSERT, DELETE and
//! UPDATE on one frame, without the dialect extras Delta has no counterpart for.

use datafusion::sql::sqlparser::ast::{self, TableFactor, TableObject};

use super::{Name, Statement};
use crate::error::{Error, Result};

/// An identifier as DataFusion reads it: unquoted folds to lower case, quoted keeps its case.
fn ident(i: &ast::Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_ascii_lowercase()
    }
}

fn frame_name(table: &ast::ObjectName) -> Result<Name> {
    let name: Name = table
        .0
        .iter()
        .map(|p| {
            p.as_ident()
                .map(ident)
                .ok_or_else(|| Error::invalid(format!("bad frame name {table}")))
        })
        .collect::<Result<_>>()?;
    if name.len() > 3 {
        return Err(Error::invalid("a frame name has at most three parts"));
    }
    Ok(name)
}

fn column_name(c: &ast::ObjectName) -> Result<String> {
    match c.0.as_slice() {
        [p] => p
            .as_ident()
            .map(ident)
            .ok_or_else(|| Error::invalid(format!("bad column name {c}"))),
        _ => Err(Error::invalid(format!(
            "bad column name {c}: name the frame's column alone"
        ))),
    }
}

/// The one frame a DELETE or UPDATE names, without alias or joins.
fn single_frame(tables: &[ast::TableWithJoins], what: &str) -> Result<Name> {
    match tables {
        [t] if t.joins.is_empty() => match &t.relation {
            TableFactor::Table {
                name, alias: None, ..
            } => frame_name(name),
            other => Err(Error::unsupported(format!(
                "{what} takes a frame name, not {other}"
            ))),
        },
        _ => Err(Error::unsupported(format!(
            "{what} changes one frame at a time"
        ))),
    }
}

pub(super) fn parse_insert(statement: ast::Statement) -> Result<Statement> {
    let ast::Statement::Insert(insert) = statement else {
        return Err(Error::invalid("expected one INSERT statement"));
    };
    let TableObject::TableName(table) = &insert.table else {
        return Err(Error::unsupported(
            "INSERT INTO a table function is not supported",
        ));
    };
    let name = frame_name(table)?;
    let columns = insert
        .columns
        .iter()
        .map(column_name)
        .collect::<Result<Vec<_>>>()?;
    let Some(source) = &insert.source else {
        return Err(Error::invalid("INSERT needs VALUES or a SELECT"));
    };
    if insert.on.is_some() || insert.returning.is_some() {
        return Err(Error::unsupported(
            "INSERT ... ON CONFLICT / RETURNING is not supported",
        ));
    }
    Ok(Statement::Insert {
        name,
        columns,
        source: source.clone(),
        overwrite: insert.overwrite,
    })
}

pub(super) fn parse_delete(statement: ast::Statement) -> Result<Statement> {
    let ast::Statement::Delete(d) = statement else {
        return Err(Error::invalid("expected one DELETE statement"));
    };
    if !d.tables.is_empty()
        || d.using.is_some()
        || d.returning.is_some()
        || d.output.is_some()
        || !d.order_by.is_empty()
        || d.limit.is_some()
    {
        return Err(Error::unsupported(
            "DELETE takes FROM <frame> [WHERE <condition>]: no USING, RETURNING, ORDER BY or LIMIT",
        ));
    }
    let (ast::FromTable::WithFromKeyword(from) | ast::FromTable::WithoutKeyword(from)) = &d.from;
    Ok(Statement::Delete {
        name: single_frame(from, "DELETE")?,
        predicate: d.selection,
    })
}

pub(super) fn parse_update(statement: ast::Statement) -> Result<Statement> {
    let ast::Statement::Update(u) = statement else {
        return Err(Error::invalid("expected one UPDATE statement"));
    };
    if u.from.is_some()
        || u.returning.is_some()
        || u.output.is_some()
        || u.or.is_some()
        || !u.order_by.is_empty()
        || u.limit.is_some()
    {
        return Err(Error::unsupported(
            "UPDATE takes <frame> SET <column> = <value>, ... [WHERE <condition>]: no FROM, \
             RETURNING, ORDER BY or LIMIT",
        ));
    }
    let name = single_frame(std::slice::from_ref(&u.table), "UPDATE")?;
    let mut assignments = Vec::with_capacity(u.assignments.len());
    for a in u.assignments {
        let ast::AssignmentTarget::ColumnName(c) = &a.target else {
            return Err(Error::unsupported(
                "UPDATE sets one column per assignment: SET a = 1, b = 2",
            ));
        };
        let column = column_name(c)?;
        if assignments.iter().any(|(n, _)| *n == column) {
            return Err(Error::invalid(format!("UPDATE sets column {column} twice")));
        }
        assignments.push((column, a.value));
    }
    Ok(Statement::Update {
        name,
        assignments,
        predicate: u.selection,
    })
}
