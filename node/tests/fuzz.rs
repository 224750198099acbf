//! The fuzz targets' short run in the test command (stable Rust, no libFuzzer): every input
//! of `fuzz/corpus/` and a few thousand random mutations of each through the same entry
//! points as `fuzz/fuzz_targets/`. A panic fails the test. The long, coverage-guided run is
//! `scripts/fuzz` (cargo-fuzz on nightly).

use std::path::PathBuf;

use apiary::ingest::fuzz;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MUTATIONS: usize = 50_000;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no corpus in {}", dir.display());
    inputs
}

/// A random edit: flip bits, drop, duplicate or insert bytes, or splice another input in.
fn mutate(rng: &mut StdRng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = if v.is_empty() {
            0
        } else {
            rng.random_range(0..v.len())
        };
        match rng.random_range(0..6) {
            0 if !v.is_empty() => v[at] ^= 1 << rng.random_range(0..8),
            1 if !v.is_empty() => {
                let end = (at + rng.random_range(1..16)).min(v.len());
                v.drain(at..end);
            }
            2 => v.insert(at, rng.random()),
            3 if !v.is_empty() => {
                let end = (at + rng.random_range(1..32)).min(v.len());
                let chunk = v[at..end].to_vec();
                v.splice(at..at, chunk);
            }
            4 => {
                let from = rng.random_range(0..=other.len());
                v.splice(at..at, other[from..].iter().copied().take(64));
            }
            _ => v.truncate(at),
        }
    }
    v
}

fn run(target: &str, each: impl Fn(&[u8])) {
    let inputs = corpus(target);
    for input in &inputs {
        each(input);
    }
    let seed = std::env::var("APIARY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("{target}: seed {seed} (APIARY_TEST_SEED repeats it)");
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..MUTATIONS {
        let a = &inputs[rng.random_range(0..inputs.len())];
        let b = &inputs[rng.random_range(0..inputs.len())];
        let input = mutate(&mut rng, a, b);
        each(&input);
    }
}

#[test]
fn payload_decoders_take_any_bytes() {
    run("payload", fuzz::payload_any);
}

#[test]
fn the_mqtt_packet_reader_takes_any_bytes() {
    run("mqtt_packet", fuzz::mqtt_packets);
}
