//! Bytes a client sends the embedded MQTT listener (the first byte picks 3.1.1 or 5).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| apiary::ingest::fuzz::mqtt_packets(data));
