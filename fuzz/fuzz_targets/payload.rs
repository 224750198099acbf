//! A payload in every format ingestion takes: the first byte picks JSON, JSON lines, a CSV
//! line or Influx line protocol.
#![no_main]

use apiary::config::PayloadFormat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&pick, payload)) = data.split_first() {
        let format = match pick % 4 {
            0 => PayloadFormat::Json,
            1 => PayloadFormat::Jsonl,
            2 => PayloadFormat::Csv,
            _ => PayloadFormat::Influx,
        };
        apiary::ingest::fuzz::payload(format, payload);
    }
});
