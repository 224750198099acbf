//! Chambers enforce their budgets, the pool runs one task per bee and refuses past its
//! queue, and the colony's temperature acts.

mod common;

use std::time::{Duration, Instant};

use apiary::bees::Band;
use apiary::bees::BeeState;
use common::TestMeadow;

/// A grouped aggregate with 2M groups: about 250 MB of hash table without a budget.
const BIG_GROUP_BY: &str = "SELECT count(*) FROM (SELECT value % 2000000 AS k, count(*) AS c FROM generate_series(1, 5000000) GROUP BY 1)";
/// Runs for minutes unless cancelled.
const ENDLESS: &str = "SELECT count(*) FROM generate_series(1, 100000000000) WHERE value % 7 = 3";

/// Run the CLI and return (exit ok, stderr, peak RSS of that child in KiB).
#[allow(clippy::zombie_processes)] // reaped by wait4 below, which also gives its rusage
fn run_measured(m: &TestMeadow, env: &[(&str, &str)], sql: &str) -> (bool, String, i64) {
    let child = m
        .cli()
        .envs(env.iter().copied())
        .args(["sql", sql])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut stderr = child.stderr.unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).unwrap();
        s
    });
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // wait4 gives this child's own peak RSS (ru_maxrss, KiB on Linux).
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid);
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (ok, reader.join().unwrap(), usage.ru_maxrss)
}

#[test]
fn memory_budget_is_enforced_by_spilling_or_a_clear_error() {
    let m = common::local();
    let budget = [
        ("APIARY_MEMORY_PER_BEE", "8MiB"),
        ("APIARY_LOG", "apiary=info"),
    ];
    let (ok, err, peak_budgeted) = run_measured(&m, &budget, BIG_GROUP_BY);
    assert!(ok, "{err}");
    assert!(
        err.contains("query spilled to the bee's scratch dir"),
        "the aggregate spilled: {err}"
    );
    assert!(
        peak_budgeted < 256 * 1024,
        "peak RSS {peak_budgeted} KiB under 256 MiB"
    );

    let (ok, err, peak_free) = run_measured(&m, &[("APIARY_LOG", "apiary=info")], BIG_GROUP_BY);
    assert!(ok, "{err}");
    assert!(
        !err.contains("spilled"),
        "no spill without a tight budget: {err}"
    );
    assert!(
        peak_free > peak_budgeted + 32 * 1024,
        "the budget is what kept memory down: {peak_free} KiB free vs {peak_budgeted} KiB budgeted"
    );

    // An operator that cannot spill fails with resources exhausted, naming the budget.
    let top_k = "SELECT sum(v) FROM (SELECT value AS v FROM generate_series(1, 3000000) ORDER BY random() LIMIT 2000000)";
    let (ok, err, peak) = run_measured(&m, &budget, top_k);
    assert!(!ok);
    assert!(
        err.contains("ran out of its memory budget of 8 MiB")
            && err.contains("Resources exhausted"),
        "{err}"
    );
    assert!(peak < 256 * 1024, "{peak} KiB");
    // The scratch dirs of finished processes are gone.
    let scratch = std::env::temp_dir().join("apiary-test-cli").join("scratch");
    let leftovers = std::fs::read_dir(&scratch).map(|d| d.count()).unwrap_or(0);
    assert!(
        leftovers <= 4,
        "scratch dirs are removed on exit ({leftovers} left; other tests may be running)"
    );
}

fn config_with(m: &TestMeadow, bees: usize, queue: usize) -> apiary::config::Config {
    let mut c = m.config();
    c.bees.count = Some(bees);
    c.bees.queue_limit = Some(queue);
    c.colony.cooling_secs = 0.5;
    c
}

async fn wait_until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn n_bees_run_n_queries_the_next_waits_then_busy() {
    let m = common::local();
    let ap = std::sync::Arc::new(apiary::Apiary::open(config_with(&m, 2, 1)).await.unwrap());
    let spawn =
        |ap: std::sync::Arc<apiary::Apiary>| tokio::spawn(async move { ap.sql(ENDLESS).await });
    let running: Vec<_> = (0..3).map(|_| spawn(ap.clone())).collect();
    wait_until(
        "two bees busy and one query queued",
        Duration::from_secs(10),
        || {
            ap.pool().waiting() == 1
                && ap
                    .bee_status()
                    .iter()
                    .filter(|b| b.state == BeeState::Busy)
                    .count()
                    == 2
        },
    )
    .await;
    // Both bees show the SQL they run.
    assert!(
        ap.bee_status()
            .iter()
            .all(|b| b.task.as_deref() == Some(ENDLESS))
    );
    let e = ap.sql("SELECT 1").await.unwrap_err();
    assert!(e.kind.is_busy(), "{e}");
    assert!(e.retry_after_ms().unwrap() > 0);
    for h in &running {
        h.abort();
    }
    wait_until("bees idle again", Duration::from_secs(5), || {
        ap.pool().waiting() == 0 && ap.bee_status().iter().all(|b| b.state == BeeState::Idle)
    })
    .await;
    assert_eq!(common::scalar(&ap, "SELECT 41 + 1").await, 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn temperature_rises_under_load_acts_and_falls_when_idle() {
    let m = common::local();
    let mut c = config_with(&m, 1, 2);
    // One busy bee and a full queue (0.35 + 0.3) is critical here.
    c.colony.hot = 0.5;
    c.colony.critical = 0.6;
    let ap = std::sync::Arc::new(apiary::Apiary::open(c).await.unwrap());
    assert_eq!(ap.pool().band(), Band::Cold);
    assert!(ap.pool().accepts_swarm_tasks() && ap.pool().acks_ingest());
    let running: Vec<_> = (0..3)
        .map(|_| {
            let ap = ap.clone();
            tokio::spawn(async move { ap.sql(ENDLESS).await })
        })
        .collect();
    wait_until("the node turns critical", Duration::from_secs(10), || {
        ap.pool().band() == Band::Critical
    })
    .await;
    let status = ap.colony_status();
    assert!(status.temperature >= 0.6, "{status:?}");
    assert!(
        !ap.pool().accepts_swarm_tasks(),
        "hot or worse takes no swarm tasks"
    );
    assert!(!ap.pool().acks_ingest(), "critical stops acking ingest");
    let e = ap.sql("SELECT 1").await.unwrap_err();
    assert!(e.kind.is_busy(), "{e}");
    assert!(e.message.contains("critical"), "{e}");
    for h in &running {
        h.abort();
    }
    wait_until("the node cools down", Duration::from_secs(10), || {
        ap.pool().band() == Band::Cold
    })
    .await;
    assert!(ap.pool().acks_ingest() && ap.pool().accepts_swarm_tasks());
    assert_eq!(common::scalar(&ap, "SELECT 1").await, 1);
}
