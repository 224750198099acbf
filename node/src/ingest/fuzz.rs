//! Entry points for fuzzing what ingestion parses from the outside: payloads in every format
//! (rows, inferred columns, Arrow decoding into a fixed schema) and MQTT packets as the
//! listener reads them. Used by the cargo-fuzz targets under `fuzz/` and by the test that
//! replays their corpus; each must return, never panic, for any input.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use bytes::BytesMut;

use super::listener::packet::{self, Version};
use super::payload;
use super::route::Route;
use super::wal::Record;
use crate::config::PayloadFormat;

/// Bytes as a payload: the first byte picks JSON, JSON lines, a CSV line or Influx line
/// protocol for the rest.
pub fn payload_any(data: &[u8]) {
    if let Some((&pick, bytes)) = data.split_first() {
        let format = match pick % 4 {
            0 => PayloadFormat::Json,
            1 => PayloadFormat::Jsonl,
            2 => PayloadFormat::Csv,
            _ => PayloadFormat::Influx,
        };
        payload(format, bytes);
    }
}

/// Bytes as a payload in `format` on a route with a topic column and the receive time.
pub fn payload(format: PayloadFormat, bytes: &[u8]) {
    let mut route = Route::default_route();
    route.format = format;
    route.columns.insert("device".into(), 1);
    let rec = Record {
        seq: 1,
        route: 0,
        received_ms: 1_764_000_000_000,
        pkid: 1,
        session: "fuzz".into(),
        topic: "apiary/fuzz/s/readings".into(),
        payload: bytes::Bytes::copy_from_slice(bytes),
    };
    let csv_columns = ["id".to_string(), "temp".to_string(), "site".to_string()];
    let Ok(rows) = payload::rows(&route, &rec, 1 << 20, &csv_columns) else {
        return;
    };
    let _ = payload::infer_columns(&route, &rows);
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("temp", DataType::Float64, true),
        Field::new("site", DataType::Utf8, true),
        Field::new("device", DataType::Utf8, true),
        Field::new(
            "received_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ]));
    let indexed: Vec<(usize, payload::Row)> = rows.into_iter().enumerate().collect();
    let _ = payload::decode_each(&schema, &["site".to_string()], &indexed);
}

/// Bytes as what a client sends the listener: the first byte picks the protocol version
/// the connection is read as; packets are read until the buffer is used up or bad.
pub fn mqtt_packets(bytes: &[u8]) {
    let Some((&pick, rest)) = bytes.split_first() else {
        return;
    };
    let _ = packet::connect_version(rest);
    let version = if pick & 1 == 0 {
        Version::V4
    } else {
        Version::V5
    };
    let mut buf = BytesMut::from(rest);
    let _ = packet::read_connect(version, &mut BytesMut::from(rest), 1 << 16);
    // Each read takes a packet off the front or stops: at most one packet per byte.
    for _ in 0..=rest.len() {
        match packet::read(version, &mut buf, 1 << 16) {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
}
