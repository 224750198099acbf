//! Chamber overhead: the same small query through an Apiary session (statement parsing, a
//! bee from the pool, the chamber's runtime) against a bare DataFusion `SessionContext`, in
//! the same run. Prints a Markdown report with the ratio (goal ≤ 1.05).
//!
//!   cargo bench --bench bees            (or scripts/bench)

use std::time::{Duration, Instant};

use apiary::Apiary;
use apiary::config::Config;
use datafusion::prelude::{SessionConfig, SessionContext};

const QUERY: &str = "SELECT count(*), sum(value), max(value % 97) FROM generate_series(1, 100000)";
const ROUNDS: usize = 20;
const PER_ROUND: usize = 25;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.node.state_dir = dir.path().join("state");
    config.meadow.uri = Some(dir.path().join("meadow").display().to_string());
    let apiary = Apiary::open(config).await.unwrap();
    let bees = apiary.pool().bees();
    let bare = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(bees));

    // Like the bare context, one session serves every query (a shell, a Python handle);
    // `apiary.sql()` below adds making a session per call (the CLI's one-shot path).
    let mut session = apiary.session();
    // Warm up every path.
    for _ in 0..PER_ROUND {
        session.run(QUERY).await.unwrap();
        apiary.sql(QUERY).await.unwrap();
        bare.sql(QUERY).await.unwrap().collect().await.unwrap();
    }
    let (mut chamber, mut one_shot, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    // Interleave rounds so drift on a noisy machine hits both sides alike.
    for _ in 0..ROUNDS {
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            session.run(QUERY).await.unwrap();
            chamber.push(t.elapsed());
        }
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            apiary.sql(QUERY).await.unwrap();
            one_shot.push(t.elapsed());
        }
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            bare.sql(QUERY).await.unwrap().collect().await.unwrap();
            plain.push(t.elapsed());
        }
    }
    let (c, o, p) = (median(chamber), median(one_shot), median(plain));
    let ratio = c.as_secs_f64() / p.as_secs_f64();
    println!("## bees: chamber overhead\n");
    println!(
        "query: `{QUERY}`, {} runs each, {bees} bees\n",
        ROUNDS * PER_ROUND
    );
    println!("| path | median |");
    println!("|---|---|");
    println!(
        "| an Apiary session, each query in a chamber | {:.3} ms |",
        c.as_secs_f64() * 1e3
    );
    println!(
        "| a new session per query (`Apiary::sql`) in a chamber | {:.3} ms |",
        o.as_secs_f64() * 1e3
    );
    println!(
        "| bare DataFusion SessionContext | {:.3} ms |",
        p.as_secs_f64() * 1e3
    );
    println!("\nratio chamber / bare: **{ratio:.3}** (goal ≤ 1.05)");
    println!(
        "ratio new session per query / bare: {:.3}",
        o.as_secs_f64() / p.as_secs_f64()
    );
}
