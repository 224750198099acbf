//! A payload in every format ingestion takes: the first byte picks JSON, JSON lines, a CSV
//! line or Influx line protocol.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| apiary::ingest::fuzz::payload_any(data));
