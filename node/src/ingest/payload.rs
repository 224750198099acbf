//! From message payloads to Arrow rows of a frame; bad payloads are named with a reason.

use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use serde_json::{Map, Value};

use super::route::Route;
use super::wal::Record;
use crate::config::PayloadFormat;
use crate::frames::{Column, ColumnType};

pub type Row = Map<String, Value>;

/// The rows one message carries (topic columns and receive time added), or why it has none.
pub fn rows(
    route: &Route,
    rec: &Record,
    max_payload: usize,
    csv_columns: &[String],
) -> Result<Vec<Row>, String> {
    if rec.payload.len() > max_payload {
        return Err(format!(
            "payload of {} bytes is over the limit of {max_payload} bytes (ingest.max_payload)",
            rec.payload.len()
        ));
    }
    let text =
        std::str::from_utf8(&rec.payload).map_err(|_| "payload is not UTF-8 text".to_string())?;
    let mut rows = match route.format {
        PayloadFormat::Json => vec![object(text)?],
        PayloadFormat::Jsonl => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(object)
            .collect::<Result<Vec<_>, _>>()?,
        PayloadFormat::Csv => vec![csv_row(text, csv_columns)?],
        PayloadFormat::Influx => text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(influx_row)
            .collect::<Result<Vec<_>, _>>()?,
    };
    if rows.is_empty() {
        return Err("payload has no rows".into());
    }
    let topic_cols = route.topic_columns(&rec.topic);
    let received = route.received_at.as_ref().map(|c| {
        let ts = chrono::DateTime::from_timestamp_millis(rec.received_ms).unwrap_or_default();
        (c.clone(), ts.to_rfc3339())
    });
    for row in &mut rows {
        for (c, v) in topic_cols.iter().chain(received.iter()) {
            row.insert(c.clone(), Value::String(v.clone()));
        }
    }
    Ok(rows)
}

/// Split at `sep` where it is neither escaped with `\\` nor inside double quotes.
fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One line of InfluxDB line protocol as a row.
fn influx_row(line: &str) -> Result<Row, String> {
    let shape = "expected InfluxDB line protocol `measurement[,tag=value...] field=value[,...] [timestamp]`";
    let parts: Vec<&str> = split_unescaped(line.trim(), ' ')
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(format!("{shape}, got {line:?}"));
    }
    let mut row = Row::new();
    let mut head = split_unescaped(parts[0], ',').into_iter();
    let measurement = unescape(head.next().unwrap_or(""));
    if measurement.is_empty() {
        return Err(format!("{shape}: no measurement in {line:?}"));
    }
    row.insert("measurement".into(), Value::String(measurement));
    let pair = |kv: &str| -> Result<(String, String), String> {
        let p = split_unescaped(kv, '=');
        match p.as_slice() {
            [k, v] if !k.is_empty() && !v.is_empty() => Ok((unescape(k), v.to_string())),
            _ => Err(format!("{shape}: bad key=value {kv:?}")),
        }
    };
    for tag in head {
        let (k, v) = pair(tag)?;
        row.insert(k, Value::String(unescape(&v)));
    }
    for field in split_unescaped(parts[1], ',') {
        let (k, v) = pair(field)?;
        let value = if let Some(s) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Value::String(unescape(s))
        } else if let Some(n) = v.strip_suffix('i').or_else(|| v.strip_suffix('u')) {
            Value::from(
                n.parse::<i64>()
                    .map_err(|_| format!("field {k}: bad integer {v:?}"))?,
            )
        } else if ["t", "T", "true", "True", "TRUE"].contains(&v.as_str()) {
            Value::Bool(true)
        } else if ["f", "F", "false", "False", "FALSE"].contains(&v.as_str()) {
            Value::Bool(false)
        } else {
            let f: f64 = v
                .parse()
                .map_err(|_| format!("field {k}: bad value {v:?}"))?;
            serde_json::Number::from_f64(f)
                .map(Value::Number)
                .ok_or_else(|| format!("field {k}: {v} is not a finite number"))?
        };
        row.insert(k, value);
    }
    if let Some(ts) = parts.get(2) {
        let ns: i64 = ts
            .parse()
            .map_err(|_| format!("bad timestamp {ts:?}: nanoseconds since the epoch"))?;
        let t = chrono::DateTime::from_timestamp_nanos(ns);
        row.insert(
            "time".into(),
            Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)),
        );
    }
    Ok(row)
}

fn object(text: &str) -> Result<Row, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(format!(
            "payload is JSON but not an object: {}",
            kind(&other)
        )),
        Err(e) => Err(format!("payload is not JSON: {e}")),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One CSV line, fields in `columns` order (double quotes allowed around fields).
fn csv_row(line: &str, columns: &[String]) -> Result<Row, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    if quoted {
        return Err("CSV line has an unclosed quote".into());
    }
    fields.push(cur);
    if fields.len() != columns.len() {
        return Err(format!(
            "CSV line has {} fields for {} columns",
            fields.len(),
            columns.len()
        ));
    }
    Ok(columns
        .iter()
        .zip(fields)
        .map(|(c, f)| {
            (
                c.clone(),
                if f.is_empty() {
                    Value::Null
                } else {
                    Value::String(f)
                },
            )
        })
        .collect())
}

/// Decode rows into a batch of `schema`; partition columns must have values.
pub fn decode(
    schema: &SchemaRef,
    partition_by: &[String],
    rows: &[&Row],
) -> Result<RecordBatch, String> {
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.len().max(1))
        .build_decoder()
        .map_err(|e| e.to_string())?;
    decoder.serialize(rows).map_err(|e| e.to_string())?;
    let batch = decoder
        .flush()
        .map_err(|e| e.to_string())?
        .unwrap_or_else(|| RecordBatch::new_empty(schema.clone()));
    for p in partition_by {
        if let Ok(i) = schema.index_of(p)
            && batch.column(i).null_count() > 0
        {
            return Err(format!("missing value for partition column {p}"));
        }
    }
    Ok(batch)
}

/// Decode what decodes; name the rows that do not (the slow path runs only when a batch
/// holds a bad row).
pub fn decode_each(
    schema: &SchemaRef,
    partition_by: &[String],
    rows: &[(usize, Row)],
) -> (Option<RecordBatch>, Vec<(usize, String)>) {
    let all: Vec<&Row> = rows.iter().map(|(_, r)| r).collect();
    if let Ok(b) = decode(schema, partition_by, &all) {
        return (Some(b), vec![]);
    }
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (i, row) in rows {
        match decode(schema, partition_by, &[row]) {
            Ok(_) => good.push(row),
            Err(e) => bad.push((*i, e)),
        }
    }
    let batch = if good.is_empty() {
        None
    } else {
        decode(schema, partition_by, &good).ok()
    };
    (batch, bad)
}

/// Column types for a frame made from the first messages: JSON's own types, text for
/// topic columns, a timestamp for the receive time.
pub fn infer_columns(route: &Route, rows: &[Row]) -> Result<Vec<Column>, String> {
    let schema = arrow::json::reader::infer_json_schema_from_iterator(
        rows.iter().map(|r| Ok(Value::Object(r.clone()))),
    )
    .map_err(|e| e.to_string())?;
    let mut cols: Vec<Column> = schema
        .fields()
        .iter()
        .map(|f| {
            let name = f.name().clone();
            let influx_time = route.format == PayloadFormat::Influx && name == "time";
            let t = if route.received_at.as_deref() == Some(name.as_str()) || influx_time {
                ColumnType::Timestamp
            } else if route.columns.contains_key(&name) {
                ColumnType::Utf8
            } else {
                match f.data_type() {
                    DataType::Int64 => ColumnType::Int64,
                    DataType::Float64 => ColumnType::Float64,
                    DataType::Boolean => ColumnType::Boolean,
                    _ => ColumnType::Utf8,
                }
            };
            Column::of(&name, t)
        })
        .collect();
    cols.sort_by_key(|c| route.received_at.as_deref() == Some(c.name.as_str()));
    if cols.is_empty() {
        return Err("cannot infer columns from empty objects".into());
    }
    Ok(cols)
}

/// The schema of a rejects frame.
pub fn rejects_columns() -> Vec<Column> {
    vec![
        Column::of("topic", ColumnType::Utf8),
        Column::of("payload", ColumnType::Binary),
        Column::of("error", ColumnType::Utf8),
        Column::of("received_at", ColumnType::Timestamp),
    ]
}

/// A batch of rejected messages for the rejects frame.
pub fn rejects_batch(rejects: &[(&Record, String)]) -> RecordBatch {
    use arrow::array::{BinaryArray, StringArray, TimestampMicrosecondArray};
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("topic", DataType::Utf8, true),
        arrow::datatypes::Field::new("payload", DataType::Binary, true),
        arrow::datatypes::Field::new("error", DataType::Utf8, true),
        arrow::datatypes::Field::new(
            "received_at",
            DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(
                rejects.iter().map(|(r, _)| &*r.topic),
            )),
            Arc::new(BinaryArray::from_iter_values(
                rejects.iter().map(|(r, _)| r.payload.as_ref()),
            )),
            Arc::new(StringArray::from_iter_values(
                rejects.iter().map(|(_, e)| e.as_str()),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    rejects.iter().map(|(r, _)| r.received_ms * 1000),
                )
                .with_timezone("UTC"),
            ),
        ],
    )
    .expect("columns match the schema")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec(payload: &str) -> Record {
        Record {
            seq: 1,
            route: 0,
            received_ms: 1_764_000_000_000,
            pkid: 1,
            session: Arc::from(""),
            topic: "apiary/h/b/f".into(),
            payload: Bytes::from(payload.to_string()),
        }
    }

    #[test]
    fn json_rows_get_the_receive_time() {
        let r = Route::default_route();
        let rows = rows(&r, &rec(r#"{"t": 21.5, "id": 3}"#), 1024, &[]).unwrap();
        assert_eq!(rows[0]["t"], 21.5);
        assert!(
            rows[0]["received_at"]
                .as_str()
                .unwrap()
                .starts_with("2025-")
        );
    }

    #[test]
    fn bad_payloads_have_reasons() {
        let r = Route::default_route();
        for (p, want) in [
            ("not json", "not JSON"),
            ("[1,2]", "not an object"),
            ("\u{0}\u{1}", "not JSON"),
        ] {
            assert!(
                rows(&r, &rec(p), 1024, &[]).unwrap_err().contains(want),
                "{p}"
            );
        }
        assert!(
            rows(&r, &rec(&"x".repeat(2000)), 1024, &[])
                .unwrap_err()
                .contains("over the limit")
        );
    }

    #[test]
    fn csv_lines_follow_the_column_order() {
        let mut r = Route::default_route();
        r.format = PayloadFormat::Csv;
        r.received_at = None;
        let cols = vec!["a".to_string(), "b".to_string()];
        let row = &rows(&r, &rec("1,\"x, \"\"y\"\"\""), 1024, &cols).unwrap()[0];
        assert_eq!(row["b"], "x, \"y\"");
        assert!(
            rows(&r, &rec("1,2,3"), 1024, &cols)
                .unwrap_err()
                .contains("3 fields for 2")
        );
    }

    #[test]
    fn decode_each_splits_good_from_bad() {
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("id", DataType::Int64, true),
            arrow::datatypes::Field::new("p", DataType::Utf8, true),
        ]));
        let row = |s: &str| serde_json::from_str::<Row>(s).unwrap();
        let rows = vec![
            (0, row(r#"{"id": 1, "p": "a"}"#)),
            (1, row(r#"{"id": "one", "p": "a"}"#)),
            (2, row(r#"{"id": 3}"#)),
            (3, row(r#"{"id": 4, "p": "b"}"#)),
        ];
        let (batch, bad) = decode_each(&schema, &["p".to_string()], &rows);
        assert_eq!(batch.unwrap().num_rows(), 2);
        let idx: Vec<usize> = bad.iter().map(|b| b.0).collect();
        assert_eq!(idx, vec![1, 2]);
        assert!(bad[1].1.contains("partition column p"));
    }

    #[test]
    fn influx_line_protocol() {
        let row = influx_row(
            r#"air\ quality,site=green\,house,room=1 temp=21.5,n=3i,ok=t,note="a \"b\"" 1764000000123456789"#,
        )
        .unwrap();
        assert_eq!(row["measurement"], "air quality");
        assert_eq!(row["site"], "green,house");
        assert_eq!(row["room"], "1");
        assert_eq!(row["temp"], 21.5);
        assert_eq!(row["n"], 3);
        assert_eq!(row["ok"], true);
        assert_eq!(row["note"], "a \"b\"");
        assert_eq!(row["time"], "2025-11-24T16:00:00.123456789Z");
        let no_ts = influx_row("cpu load=0.5").unwrap();
        assert!(!no_ts.contains_key("time"));
        for (bad, says) in [
            ("cpu", "expected InfluxDB line protocol"),
            ("cpu load=", "bad key=value"),
            (",t=1 x=1", "no measurement"),
            ("cpu x=1 notatime", "bad timestamp"),
            ("cpu x=12zi", "bad integer"),
            ("cpu x=abc", "bad value"),
            ("cpu x=1 2 3", "expected InfluxDB line protocol"),
        ] {
            let e = influx_row(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let mut r = Route::default_route();
        r.format = PayloadFormat::Influx;
        let two = rows(&r, &rec("# comment\ncpu a=1\n\ncpu a=2 5\n"), 1024, &[]).unwrap();
        assert_eq!(two.len(), 2);
        let cols = infer_columns(&r, &two).unwrap();
        assert!(
            cols.contains(&Column::of("time", ColumnType::Timestamp)),
            "{cols:?}"
        );
    }
}
