//! A query past its deadline is cancelled: the caller gets a timeout, the bee is idle
//! again within a second, and the CPU work really stops. (Its own test binary, so no other
//! test's work shows in the process's CPU time.)

mod common;

use std::time::{Duration, Instant};

use apiary::ErrorKind;

/// CPU seconds this process has used (user + system).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_deadline_is_cancelled_and_stops_using_cpu() {
    let m = common::local();
    let mut c = m.config();
    c.bees.count = Some(1);
    c.bees.task_timeout = "1s".parse().unwrap();
    let ap = apiary::Apiary::open(c).await.unwrap();

    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let e = ap
        .sql("SELECT count(*) FROM generate_series(1, 100000000000) WHERE value % 7 = 3")
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert!(e.message.contains("deadline of 1 s"), "{e}");
    assert!(
        took < Duration::from_millis(2500),
        "cancelled at the deadline, took {took:?}"
    );
    let busy_cpu = cpu_seconds() - cpu0;
    assert!(
        busy_cpu > 0.5,
        "the query did work while it ran ({busy_cpu:.2} s CPU)"
    );

    let end = Instant::now() + Duration::from_secs(1);
    while ap.bee_status()[0].state != apiary::bees::BeeState::Idle {
        assert!(Instant::now() < end, "the bee is idle within 1 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Give stragglers a moment to notice, then measure a quiet second.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu1 = cpu_seconds();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_cpu = cpu_seconds() - cpu1;
    assert!(
        idle_cpu < 0.2,
        "the work stopped: {idle_cpu:.2} s CPU in the second after the deadline"
    );
}
