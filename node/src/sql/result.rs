//! What a statement gives back: a schema and its batches, whole (`QueryResult`) or as a
//! stream (`Output`), and the tables Apiary's own statements answer with.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{Field, Schema, SchemaRef};

use crate::error::Result;

/// The result of one statement: a schema and its batches (none for DDL).
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// Bytes the query's operators spilled to the chamber's scratch dir.
    pub spilled_bytes: u64,
}

impl QueryResult {
    pub(super) fn empty() -> Self {
        QueryResult {
            schema: Arc::new(Schema::empty()),
            batches: vec![],
            spilled_bytes: 0,
        }
    }

    pub(super) fn single(columns: Vec<(&str, ArrayRef)>) -> Result<Self> {
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

    pub(super) fn names(column: &str, names: Vec<String>) -> Result<Self> {
        Self::single(vec![(column, Arc::new(StringArray::from(names)))])
    }

    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// One piece of a streamed result (`Session::run_streamed`).
#[derive(Debug)]
pub enum Output {
    Schema(SchemaRef),
    Batch(RecordBatch),
}

pub(super) fn describe(info: &crate::frames::FrameInfo) -> Result<QueryResult> {
    let def = &info.def;
    let n = def.columns.len();
    let types: Vec<&str> = def.columns.iter().map(|c| c.ty.name()).collect();
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
