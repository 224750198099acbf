//! Reading files into record batches for `apiary write`: CSV with a header, JSON lines,
//! Parquet. Values are cast to the frame's schema later (`frames::conform`).

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    Csv,
    Jsonl,
    Parquet,
}

impl InputFormat {
    /// From a file name's extension.
    pub fn from_path(path: &str) -> Option<InputFormat> {
        let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(InputFormat::Csv),
            "json" | "jsonl" | "ndjson" => Some(InputFormat::Jsonl),
            "parquet" | "pq" => Some(InputFormat::Parquet),
            _ => None,
        }
    }

    /// From the first bytes of the data (for stdin).
    pub fn sniff(head: &[u8]) -> InputFormat {
        if head.starts_with(b"PAR1") {
            InputFormat::Parquet
        } else if head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            InputFormat::Jsonl
        } else {
            InputFormat::Csv
        }
    }
}

const BATCH_ROWS: usize = 64 * 1024;

/// Read all of `input` as `format`. JSON lines are decoded straight into `schema` (unknown
/// fields are an error); CSV columns come in as text named by the header.
pub fn read_batches(
    mut input: impl Read,
    format: InputFormat,
    schema: SchemaRef,
) -> Result<Vec<RecordBatch>> {
    match format {
        InputFormat::Csv => {
            let mut reader = BufReader::new(input);
            let mut header = String::new();
            reader.read_line(&mut header)?;
            let names: Vec<String> = csv_header(&header)?;
            let text_schema = Arc::new(Schema::new(
                names
                    .iter()
                    .map(|n| Field::new(n, DataType::Utf8, true))
                    .collect::<Vec<_>>(),
            ));
            let null = regex::Regex::new("^$").expect("static regex");
            let format = arrow::csv::reader::Format::default()
                .with_header(false)
                .with_null_regex(null);
            let csv = arrow::csv::ReaderBuilder::new(text_schema)
                .with_format(format)
                .with_batch_size(BATCH_ROWS)
                .build(reader)?;
            csv.map(|b| b.map_err(|e| Error::invalid(format!("CSV: {e}"))))
                .collect()
        }
        InputFormat::Jsonl => {
            let json = arrow::json::ReaderBuilder::new(schema)
                .with_strict_mode(true)
                .with_batch_size(BATCH_ROWS)
                .build(BufReader::new(input))?;
            json.map(|b| b.map_err(|e| Error::invalid(format!("JSON lines: {e}"))))
                .collect()
        }
        InputFormat::Parquet => {
            let mut buf = Vec::new();
            input.read_to_end(&mut buf)?;
            let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                Bytes::from(buf),
            )
            .map_err(|e| Error::invalid(format!("Parquet: {e}")))?;
            let reader = builder
                .with_batch_size(BATCH_ROWS)
                .build()
                .map_err(|e| Error::invalid(format!("Parquet: {e}")))?;
            reader
                .map(|b| b.map_err(|e| Error::invalid(format!("Parquet: {e}"))))
                .collect()
        }
    }
}

fn csv_header(line: &str) -> Result<Vec<String>> {
    let line = line.trim_end_matches(['\n', '\r']);
    if line.trim().is_empty() {
        return Err(Error::invalid(
            "CSV: the first line must be a header naming the columns",
        ));
    }
    let rdr = arrow::csv::reader::Format::default()
        .with_header(true)
        .infer_schema(line.as_bytes(), Some(1))
        .map_err(|e| Error::invalid(format!("CSV header: {e}")))?;
    Ok(rdr
        .0
        .fields
        .iter()
        .map(|f| f.name().trim().to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_from_names_and_bytes() {
        assert_eq!(InputFormat::from_path("a.CSV"), Some(InputFormat::Csv));
        assert_eq!(InputFormat::from_path("a.ndjson"), Some(InputFormat::Jsonl));
        assert_eq!(InputFormat::from_path("a"), None);
        assert_eq!(InputFormat::sniff(b"PAR1...."), InputFormat::Parquet);
        assert_eq!(InputFormat::sniff(b"  {\"a\":1}"), InputFormat::Jsonl);
        assert_eq!(InputFormat::sniff(b"a,b\n1,2"), InputFormat::Csv);
    }

    #[test]
    fn csv_reads_text_columns_with_empty_as_null() {
        let schema = Arc::new(Schema::empty());
        let b = read_batches("id, name\n1,x\n2,\n".as_bytes(), InputFormat::Csv, schema).unwrap();
        assert_eq!(b[0].num_rows(), 2);
        assert_eq!(b[0].schema().field(1).name(), "name");
        assert_eq!(b[0].column(1).null_count(), 1);
    }

    #[test]
    fn malformed_input_is_an_error() {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        assert!(read_batches("".as_bytes(), InputFormat::Csv, schema.clone()).is_err());
        let e = read_batches(
            "{\"b\": 1}\n".as_bytes(),
            InputFormat::Jsonl,
            schema.clone(),
        )
        .unwrap_err();
        assert!(e.message.contains("JSON"), "{e}");
        assert!(read_batches("{not json".as_bytes(), InputFormat::Jsonl, schema.clone()).is_err());
        assert!(read_batches("PAR1garbage".as_bytes(), InputFormat::Parquet, schema).is_err());
    }
}
