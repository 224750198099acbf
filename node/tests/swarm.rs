//! The swarm with real node processes on one meadow: heartbeats and the world view (local
//! directory and the S3 server), distributed queries against single-node results, a worker
//! SIGKILLed mid-task, and cache-aware assignment after a restart.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiary::frames::WriteMode;
use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::{Node, TestMeadow, fr};

const INTERVAL_MS: u64 = 500;

/// A node (or CLI) config on `meadow` with fast heartbeats and every scan shared.
fn config(dir: &Path, meadow: &TestMeadow, id: &str, swarm: bool) -> PathBuf {
    let state = dir.join(id);
    let mut options = String::new();
    for (k, v) in &meadow.options {
        options.push_str(&format!("{k} = {v:?}\n"));
    }
    let body = format!(
        r#"[node]
state_dir = {state:?}
node_id = "{id}"
[meadow]
uri = {uri:?}
[meadow.options]
{options}
[http]
listen = "127.0.0.1:0"
[ingest]
enabled = false
[swarm]
enabled = {swarm}
heartbeat_interval = "{INTERVAL_MS}ms"
distribute_min_bytes = "1B"
forage_max = "500ms"
[cache]
max_bytes = "256MiB"
"#,
        uri = meadow.uri,
    );
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(&path, body).unwrap();
    path
}

fn start(dir: &Path, meadow: &TestMeadow, id: &str) -> Node {
    Node::start(
        &config(dir, meadow, id, true),
        &dir.join(format!("{id}.log")),
    )
}

fn cli(config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_apiary"));
    cmd.arg("--config").arg(config).env_remove("APIARY_STORAGE");
    cmd
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        eprintln!("{:?}: {err}", cmd.get_args().collect::<Vec<_>>());
    }
    assert!(
        out.status.success(),
        "{:?}: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// node id → state, as `apiary swarm` reports it.
fn swarm(config: &Path) -> (BTreeMap<String, serde_json::Value>, serde_json::Value) {
    let out = run(cli(config).arg("swarm"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let nodes = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node_id"].as_str().unwrap().to_string(), n.clone()))
        .collect();
    (nodes, v)
}

fn state_of(config: &Path, id: &str) -> Option<String> {
    swarm(config)
        .0
        .get(id)
        .map(|n| n["state"].as_str().unwrap().to_string())
}

fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn heartbeats_and_the_world_view(meadow: TestMeadow) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = start(d, &meadow, "node-a");
    let b = start(d, &meadow, "node-b");
    let c = start(d, &meadow, "node-c");
    // A one-shot CLI with its own id: it looks, it is not a member.
    let look = config(d, &meadow, "looker", true);
    let (nodes, all) = swarm(&look);
    let alive: Vec<&String> = nodes
        .iter()
        .filter(|(_, n)| n["state"] == "alive")
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        alive,
        ["node-a", "node-b", "node-c"],
        "{}: all three alive once ready: {all:#}",
        meadow.label
    );
    assert_eq!(all["alive"], 3);
    assert_eq!(
        all["total_bees"],
        nodes["node-a"]["bees"].as_u64().unwrap() * 3
    );

    // SIGKILL: suspect (3 intervals without a beat), then dead (10), then removed by the
    // holder of the clean-up lease.
    c.kill9();
    let mut seen = Vec::new();
    wait_for("node-c to be removed", Duration::from_secs(60), || {
        let s = state_of(&look, "node-c").unwrap_or_else(|| "gone".into());
        if seen.last() != Some(&s) {
            seen.push(s.clone());
        }
        s == "gone"
    });
    let suspect = seen.iter().position(|s| s == "suspect");
    let dead_or_gone = seen.iter().position(|s| s == "dead" || s == "gone");
    assert!(
        suspect.is_some() && suspect < dead_or_gone,
        "{}: states seen for the killed node: {seen:?}",
        meadow.label
    );
    assert!(
        seen.contains(&"dead".to_string()) || seen.len() >= 2,
        "{seen:?}"
    );
    assert_eq!(state_of(&look, "node-a").as_deref(), Some("alive"));

    // A graceful stop takes the heartbeat out at once.
    b.stop();
    assert_eq!(state_of(&look, "node-b"), None, "{}", meadow.label);
    assert_eq!(swarm(&look).1["alive"], 1);
    a.stop();
    assert!(swarm(&look).0.is_empty());
}

#[test]
fn nodes_are_alive_then_suspect_then_dead_then_gone_on_a_local_meadow() {
    heartbeats_and_the_world_view(common::local());
}

#[test]
fn nodes_are_alive_then_suspect_then_dead_then_gone_on_s3() {
    if let Some(m) = common::s3() {
        heartbeats_and_the_world_view(m);
    }
}

const CELLS: usize = 200;
const DAYS: usize = 4;
const ROWS: usize = 2000;

/// A frame of 200 cells, one write each, over four day partitions.
async fn two_hundred_cells(meadow: &TestMeadow) {
    let apiary = meadow.open().await;
    common::sql(
        &apiary,
        "CREATE HIVE h; CREATE BOX h.b; \
         CREATE FRAME h.b.t (k STRING, v BIGINT, s STRING, day STRING) PARTITION BY (day)",
    )
    .await;
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
        Field::new("s", DataType::Utf8, true),
        Field::new("day", DataType::Utf8, true),
    ]));
    for cell in 0..CELLS {
        let rows = 0..ROWS;
        let k: StringArray = rows
            .clone()
            .map(|r| Some(format!("k{}", (cell * 7 + r) % 23)))
            .collect();
        let v: Int64Array = rows
            .clone()
            .map(|r| Some((cell * ROWS + r) as i64))
            .collect();
        let s: StringArray = rows
            .clone()
            .map(|r| Some(format!("sensor-{cell}-{r}-{}", r * 31 % 977)))
            .collect();
        let day: StringArray = rows.map(|_| Some(format!("d{}", cell % DAYS))).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(k), Arc::new(v), Arc::new(s), Arc::new(day)],
        )
        .unwrap();
        apiary
            .write(&fr("h.b.t"), vec![batch], WriteMode::Append)
            .await
            .unwrap();
    }
    let info = apiary.frames().info(&fr("h.b.t")).await.unwrap();
    assert_eq!(info.cell_count, CELLS as u64);
}

/// The tasks each node ran for others, from `apiary swarm`.
fn tasks_done(look: &Path) -> BTreeMap<String, u64> {
    swarm(look)
        .0
        .into_iter()
        .map(|(id, n)| (id, n["tasks_done"].as_u64().unwrap()))
        .collect()
}

/// The shares in a `--explain-swarm` plan: node → (cells, cached).
fn shares(plan: &str) -> BTreeMap<String, (usize, usize)> {
    let line = plan
        .lines()
        .find(|l| l.contains("SwarmExec"))
        .unwrap_or_else(|| panic!("no swarm stage in:\n{plan}"));
    line.split("; ")
        .skip(1)
        .map(|share| {
            let (node, rest) = share.split_once(": ").unwrap();
            let node = node.trim_end_matches(" (here)").to_string();
            let cells: usize = rest.split(' ').next().unwrap().parse().unwrap();
            let cached: usize = rest
                .split_once('(')
                .unwrap()
                .1
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            (node, (cells, cached))
        })
        .collect()
}

/// Polls until the meadow holds no objects of swarm queries (the coordinator removes its
/// own; the clean-up chore what late workers wrote).
fn no_query_objects_left(dir: &Path) {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let left = files(dir);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < end, "query objects left behind: {left:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    entries
        .flatten()
        .flat_map(|e| {
            if e.file_type().unwrap().is_dir() {
                files(&e.path())
            } else {
                vec![e.path()]
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_shared_across_three_nodes_equal_single_node_results() {
    let meadow = common::local();
    two_hundred_cells(&meadow).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let coordinator = config(&d, &meadow, "coordinator", true);
    let solo = config(&d, &meadow, "solo", false);
    let look = config(&d, &meadow, "looker", true);

    // Node C alone (over its HTTP API) reads day d3: its cache then holds d3's cells.
    let c = start(&d, &meadow, "node-c");
    let token = Node::token(&d.join("node-c"));
    run(Command::new(env!("CARGO_BIN_EXE_apiary")).args([
        "--remote",
        &c.http_url(),
        "--token",
        &token,
        "sql",
        "SELECT sum(v) FROM h.b.t WHERE day = 'd3'",
    ]));
    // ... restarted (the cache is kept on disk) while A and B join.
    c.stop();
    let c = start(&d, &meadow, "node-c");
    let a = start(&d, &meadow, "node-a");
    let b = start(&d, &meadow, "node-b");
    let cached = swarm(&look).0["node-c"]["cached_cells"].as_u64().unwrap();
    assert_eq!(
        cached,
        (CELLS / DAYS) as u64,
        "node C's cache survived its restart"
    );

    // 4. The planner gives node C the cells it has cached.
    let whole = "SELECT k, sum(v) FROM h.b.t GROUP BY k";
    let plan = run(cli(&coordinator).args(["sql", "--explain-swarm", "--format", "csv", whole]));
    let s = shares(&plan);
    assert_eq!(
        s.len(),
        4,
        "coordinator, A, B and C share the scan:\n{plan}"
    );
    let (c_cells, c_cached) = s["node-c"];
    assert_eq!(
        c_cached,
        CELLS / DAYS,
        "node C gets every cell of day d3, the ones it has cached:\n{plan}"
    );
    assert!(c_cells >= c_cached);
    assert_eq!(s.values().map(|v| v.0).sum::<usize>(), CELLS);

    // 2. Shared queries give the single-node results, and the work went to the others.
    let before = tasks_done(&look);
    let queries = [
        "SELECT k, sum(v) AS s, count(*) AS n, min(s) AS lo FROM h.b.t GROUP BY k ORDER BY k",
        "SELECT v, k, day FROM h.b.t WHERE v % 997 = 3 AND s LIKE 'sensor-1%' ORDER BY v",
        "SELECT v, s FROM h.b.t ORDER BY v DESC LIMIT 9",
        "SELECT t.day, count(*) AS n, sum(m.top) AS tops FROM h.b.t t \
         JOIN (SELECT k, max(v) AS top FROM h.b.t GROUP BY k) m ON t.k = m.k \
         WHERE t.v % 5 = 0 GROUP BY t.day ORDER BY t.day",
    ];
    for q in queries {
        let shared = run(cli(&coordinator).args(["sql", "--format", "csv", q]));
        let alone = run(cli(&solo).args(["sql", "--format", "csv", q]));
        assert_eq!(shared, alone, "{q}");
        assert!(shared.lines().count() > 1, "{q}: {shared}");
        let plan = run(cli(&coordinator).args(["sql", "--explain-swarm", "--format", "csv", q]));
        assert!(plan.contains("SwarmExec"), "{q} is shared:\n{plan}");
    }
    let after = tasks_done(&look);
    for node in ["node-a", "node-b", "node-c"] {
        assert!(
            after[node] >= before[node] + queries.len() as u64,
            "{node} ran a task of each query: {before:?} → {after:?}"
        );
    }
    let queries_dir = PathBuf::from(&meadow.uri).join("_apiary/swarm/queries");
    no_query_objects_left(&queries_dir);

    // 3. A worker SIGKILLed mid-task: the query still answers exactly.
    let heavy = "SELECT k, count(DISTINCT regexp_replace(s, '[0-9]+', 'N', 'g')) AS shapes, \
                 sum(v) AS total FROM h.b.t WHERE s NOT LIKE '%-999-%' GROUP BY k ORDER BY k";
    let expected = run(cli(&solo).args(["sql", "--format", "csv", heavy]));
    let query = cli(&coordinator)
        .args(["--log", "apiary=info", "sql", "--format", "csv", heavy])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill C as soon as it has claimed its task.
    let claimed_by_c = || {
        let Ok(queries) = std::fs::read_dir(&queries_dir) else {
            return false;
        };
        queries.flatten().any(|q| {
            std::fs::read_dir(q.path().join("status"))
                .map(|s| {
                    // Published objects only: `<name>#<n>` is a write still being synced.
                    s.flatten().any(|f| {
                        !f.file_name().to_string_lossy().contains('#')
                            && std::fs::read_to_string(f.path())
                                .is_ok_and(|t| t.contains("node-c") && t.contains("claimed"))
                    })
                })
                .unwrap_or(false)
        })
    };
    let end = Instant::now() + Duration::from_secs(60);
    while !claimed_by_c() {
        assert!(Instant::now() < end, "node C never claimed a task");
        std::thread::sleep(Duration::from_millis(2));
    }
    c.kill9();
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || query.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        expected,
        "exact after a retry"
    );
    assert!(
        log.contains("given out again") && log.contains("node-c died"),
        "the task was given to another node because node C died:\n{log}"
    );
    // Dead after 10 intervals, then one retry: well inside the task deadline.
    assert!(started.elapsed() < Duration::from_secs(60));
    no_query_objects_left(&queries_dir);
    a.stop();
    b.stop();
}

/// A debug build writes this meadow format instead of its own: a node of the next release.
const NEXT_FORMAT: [(&str, &str); 1] = [("APIARY_FORMAT_VERSION", "2")];

/// The swarm as a node of either format reports it: node id → its entry.
fn nodes_seen(config: &Path, env: &[(&str, &str)]) -> BTreeMap<String, serde_json::Value> {
    let out = run(cli(config).envs(env.iter().copied()).arg("swarm"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node_id"].as_str().unwrap().to_string(), n.clone()))
        .collect()
}

/// Nodes of meadow formats N and N+1 on one bucket (issue 19): N+1 reads what N wrote, N
/// refuses what N+1 wrote with the reason instead of misreading it, and neither gives the
/// other swarm work; each says why the other is left out.
#[test]
fn nodes_of_formats_n_and_n_plus_1_share_a_meadow_but_no_work() {
    let meadow = common::local();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let old_cli = config(d, &meadow, "old-cli", true);
    let new_cli = config(d, &meadow, "new-cli", true);
    let old = |args: &[&str]| run(cli(&old_cli).args(args));
    let new = |args: &[&str]| run(cli(&new_cli).envs(NEXT_FORMAT).args(args));
    old(&["sql", "CREATE HIVE h; CREATE BOX h.b"]);
    // Each format writes a frame of four cells.
    for (sql, frame) in [
        (&old as &dyn Fn(&[&str]) -> String, "h.b.n"),
        (&new, "h.b.n1"),
    ] {
        sql(&[
            "sql",
            &format!("CREATE FRAME {frame} (k BIGINT, v BIGINT) PARTITION BY (k)"),
        ]);
        sql(&[
            "sql",
            &format!("INSERT INTO {frame} SELECT value % 4, value FROM generate_series(1, 4000)"),
        ]);
    }
    let old_node = start(d, &meadow, "old-node");
    let new_node = Node::start_with(
        &config(d, &meadow, "new-node", true),
        &d.join("new-node.log"),
        &NEXT_FORMAT,
    );

    // Each sees the other alive, with its format and why they share no work.
    let seen_by_old = nodes_seen(&old_cli, &[]);
    let seen_by_new = nodes_seen(&new_cli, &NEXT_FORMAT);
    let other = &seen_by_old["new-node"];
    assert_eq!(
        (other["state"].as_str(), other["format_version"].as_u64()),
        (Some("alive"), Some(2)),
        "{seen_by_old:#?}"
    );
    let why = other["left_out"].as_str().unwrap();
    assert!(
        why.contains("format 2, newer than this node's 1") && why.contains("this node is upgraded"),
        "{why}"
    );
    assert!(seen_by_old["old-node"]["left_out"].is_null());
    let why = seen_by_new["old-node"]["left_out"].as_str().unwrap();
    assert!(why.contains("format 1, older than this node's 2"), "{why}");
    // The older node says so in its log too.
    let end = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(d.join("old-node.log"))
        .unwrap()
        .contains("new-node (apiary")
    {
        assert!(
            Instant::now() < end,
            "the old node never said why the new one is left out"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // N+1 reads N's frame; each format shares its scans with its own kind only, exactly.
    let q = "SELECT k, sum(v) AS s, count(*) AS n FROM h.b.n GROUP BY k ORDER BY k";
    let alone = run(cli(&config(d, &meadow, "solo", false)).args(["sql", "--format", "csv", q]));
    assert_eq!(alone.lines().count(), 5, "{alone}");
    for (sql, mine, theirs) in [
        (&old as &dyn Fn(&[&str]) -> String, "old-node", "new-node"),
        (&new, "new-node", "old-node"),
    ] {
        let s = shares(&sql(&["sql", "--explain-swarm", "--format", "csv", q]));
        assert!(
            s.contains_key(mine) && !s.contains_key(theirs),
            "{mine}'s format only: {s:?}"
        );
        assert_eq!(sql(&["sql", "--format", "csv", q]), alone);
    }
    let done = |env: &[(&str, &str)]| nodes_seen(&old_cli, env);
    let by_old = done(&[]);
    assert!(by_old["old-node"]["tasks_done"].as_u64().unwrap() >= 1);
    assert_eq!(by_old["old-node"]["tasks_failed"], 0);
    assert_eq!(
        nodes_seen(&new_cli, &NEXT_FORMAT)["new-node"]["tasks_failed"],
        0
    );

    // N refuses N+1's frame with the reason; it never reads it as its own.
    let out = cli(&old_cli)
        .args(["sql", "SELECT count(*) FROM h.b.n1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "read a newer format: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.contains("written by a newer apiary (format 2") && err.contains("upgrade this node"),
        "{err}"
    );
    assert_eq!(
        new(&["sql", "--format", "csv", "SELECT count(*) AS n FROM h.b.n1"]),
        "n\n4000\n"
    );
    old_node.stop();
    new_node.stop();
}
