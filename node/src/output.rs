//! Query results as bytes, batch by batch: Arrow IPC stream, CSV with a header, or a JSON
//! array of row objects. The CLI prints with it and the HTTP API streams with it, so both give
//! the same bytes for the same result.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::StreamWriter;

use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Arrow,
    Csv,
    Json,
}

impl Format {
    pub const ARROW_MIME: &'static str = "application/vnd.apache.arrow.stream";

    pub fn mime(self) -> &'static str {
        match self {
            Format::Arrow => Self::ARROW_MIME,
            Format::Csv => "text/csv; charset=utf-8",
            Format::Json => "application/json",
        }
    }

    /// The format an HTTP `Accept` header asks for: the first listed type we can produce
    /// (JSON for none or `*/*`); `None` when it lists only types we cannot.
    pub fn from_accept(accept: Option<&str>) -> Option<Format> {
        let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
            return Some(Format::Json);
        };
        accept.split(',').find_map(|item| {
            let mime = item.split(';').next().unwrap_or("").trim();
            match mime.to_ascii_lowercase().as_str() {
                Self::ARROW_MIME => Some(Format::Arrow),
                "text/csv" => Some(Format::Csv),
                "application/json" | "*/*" | "application/*" => Some(Format::Json),
                _ => None,
            }
        })
    }
}

/// Encodes one result set.
pub struct Encoder {
    kind: Kind,
}

enum Kind {
    Arrow(Box<StreamWriter<Vec<u8>>>),
    Csv { header: bool },
    Json { rows_before: bool },
}

impl Encoder {
    /// Start a result: the encoder and the bytes that open it.
    pub fn begin(format: Format, schema: &SchemaRef) -> Result<(Encoder, Vec<u8>)> {
        let (kind, head) = match format {
            Format::Arrow => {
                let mut w = StreamWriter::try_new(Vec::new(), schema)?;
                let head = std::mem::take(w.get_mut());
                (Kind::Arrow(Box::new(w)), head)
            }
            Format::Csv => (Kind::Csv { header: true }, Vec::new()),
            Format::Json => (Kind::Json { rows_before: false }, b"[".to_vec()),
        };
        Ok((Encoder { kind }, head))
    }

    pub fn batch(&mut self, batch: &RecordBatch) -> Result<Vec<u8>> {
        match &mut self.kind {
            Kind::Arrow(w) => {
                w.write(batch)?;
                Ok(std::mem::take(w.get_mut()))
            }
            Kind::Csv { header } => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(std::mem::take(header))
                    .build(Vec::new());
                w.write(batch)?;
                Ok(w.into_inner())
            }
            Kind::Json { rows_before } => {
                if batch.num_rows() == 0 {
                    return Ok(Vec::new());
                }
                let mut w = arrow::json::ArrayWriter::new(Vec::new());
                w.write(batch)?;
                w.finish()?;
                // One batch as `[{..},{..}]`: keep the rows, joined to the earlier ones.
                let bytes = w.into_inner();
                let rows = &bytes[1..bytes.len() - 1];
                let mut out = Vec::with_capacity(rows.len() + 1);
                if std::mem::replace(rows_before, true) {
                    out.push(b',');
                }
                out.extend_from_slice(rows);
                Ok(out)
            }
        }
    }

    /// The bytes that close the result.
    pub fn finish(self) -> Result<Vec<u8>> {
        match self.kind {
            Kind::Arrow(mut w) => {
                w.finish()?;
                Ok(w.into_inner()?)
            }
            Kind::Csv { .. } => Ok(Vec::new()),
            Kind::Json { .. } => Ok(b"]\n".to_vec()),
        }
    }
}

/// A whole result in one buffer.
pub fn encode(format: Format, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let (mut enc, mut out) = Encoder::begin(format, schema)?;
    for b in batches {
        out.extend(enc.batch(b)?);
    }
    out.extend(enc.finish()?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batches() -> (SchemaRef, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let b = |ids: Vec<i64>, s: Vec<&str>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(ids)),
                    Arc::new(StringArray::from(s)),
                ],
            )
            .unwrap()
        };
        let batches = vec![
            b(vec![1, 2], vec!["a", "b,c"]),
            b(vec![], vec![]),
            b(vec![3], vec!["d"]),
        ];
        (schema, batches)
    }

    #[test]
    fn batch_by_batch_equals_whole() {
        let (schema, batches) = batches();
        let json = encode(Format::Json, &schema, &batches).unwrap();
        let rows: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(rows.as_array().unwrap().len(), 3);
        assert_eq!(rows[1]["s"], "b,c");
        let empty = encode(Format::Json, &schema, &[]).unwrap();
        assert_eq!(empty, b"[]\n");
        let csv = String::from_utf8(encode(Format::Csv, &schema, &batches).unwrap()).unwrap();
        assert_eq!(csv, "id,s\n1,a\n2,\"b,c\"\n3,d\n");
        let ipc = encode(Format::Arrow, &schema, &batches).unwrap();
        let reader = arrow::ipc::reader::StreamReader::try_new(&ipc[..], None).unwrap();
        let n: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(n, 3);
    }

    #[test]
    fn accept_headers() {
        assert_eq!(Format::from_accept(None), Some(Format::Json));
        assert_eq!(Format::from_accept(Some("*/*")), Some(Format::Json));
        assert_eq!(Format::from_accept(Some("text/csv")), Some(Format::Csv));
        assert_eq!(
            Format::from_accept(Some("image/png, application/vnd.apache.arrow.stream;q=0.9")),
            Some(Format::Arrow)
        );
        assert_eq!(Format::from_accept(Some("image/png")), None);
    }
}
