//! Hostile UDFs (the udf-sdk examples) against their limits: each fails its own query, named,
//! within its limit; a normal query next to it succeeds; the process's memory comes back.
//! Its own test binary, so no other test's allocations show in the RSS it measures.

mod common;

use std::time::{Duration, Instant};

use apiary::{Apiary, ErrorKind};
use arrow::array::AsArray;
use arrow::datatypes::Float64Type;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

const NORMAL: &str =
    "SELECT sum(celsius_to_f(CAST(value AS DOUBLE))) FROM generate_series(1, 200000)";

async fn normal_query(ap: &Apiary) {
    let r = ap.sql(NORMAL).await.unwrap();
    let sum = r[0].batches[0]
        .column(0)
        .as_primitive::<Float64Type>()
        .value(0);
    let want = 1.8 * 200_000.0 * 200_001.0 / 2.0 + 32.0 * 200_000.0;
    assert!((sum - want).abs() < 1e-6 * want, "{sum} vs {want}");
}

/// Each hostile example fails its own query with the limit it hit, named; a normal query
/// running next to it succeeds; memory comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_udfs_fail_at_their_limits_while_other_queries_carry_on() {
    apiary::bees::return_freed_memory(); // as the node binary does at start
    let m = common::local();
    let mut c = m.config();
    c.bees.count = Some(2);
    c.bees.memory_per_bee = Some("64MiB".parse().unwrap());
    c.udf.timeout = "1s".parse().unwrap();
    let ap = Apiary::open(c).await.unwrap();
    for name in [
        "celsius_to_f",
        "infinite_loop",
        "memory_bomb",
        "trap",
        "oversized_output",
    ] {
        ap.udfs()
            .add(name, common::udf_wasm(name), false)
            .await
            .unwrap();
    }

    let hostile = [
        ("infinite_loop", ErrorKind::Timeout, "time limit of 1s"),
        ("memory_bomb", ErrorKind::ResourcesExhausted, "memory limit"),
        ("trap", ErrorKind::InvalidInput, "trap example: refusing"),
        (
            "oversized_output",
            ErrorKind::InvalidInput,
            "returned 1048576 values for a batch of",
        ),
    ];
    let round = async || {
        for (name, kind, says) in hostile {
            let q = format!("SELECT {name}(value) FROM generate_series(1, 100)");
            let started = Instant::now();
            let (bad, ()) = tokio::join!(ap.sql(&q), normal_query(&ap));
            let took = started.elapsed();
            let e = bad.unwrap_err();
            assert_eq!(e.kind, kind, "{name}: {e}");
            assert!(
                e.message.contains(&format!("UDF {name}")) && e.message.contains(says),
                "{name}: {e}"
            );
            assert!(took < Duration::from_secs(5), "{name} took {took:?}");
        }
    };
    // Once to compile and warm up, then measure.
    round().await;
    normal_query(&ap).await;
    let before = rss_bytes();
    for _ in 0..3 {
        round().await;
        eprintln!("RSS {} MiB", rss_bytes() >> 20);
    }
    normal_query(&ap).await;
    let after = rss_bytes();
    assert!(
        after <= before + (16 << 20),
        "RSS grew from {} MiB to {} MiB over three hostile rounds",
        before >> 20,
        after >> 20
    );
    for bee in ap.bee_status() {
        assert_eq!(bee.memory_used, 0, "{} gave its memory back", bee.bee_id);
    }
}
