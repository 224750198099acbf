//! MQTT ingestion throughput: QoS 1 messages through a real mosquitto into an `apiary node`
//! (ack after the write-ahead log), against the same broker delivering to a subscriber that
//! does nothing, in the same run. Prints a Markdown report: msgs/s both ways and their ratio,
//! time until every row is committed, the node's peak RSS, commit latency p50/p99.
//! Goal: ≥ 50k msg/s on a 2-core box, RSS ≤ 128 MiB.
//!
//!   cargo bench --bench ingest            (or scripts/bench; needs `mosquitto`)

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// mosquitto keeps at most 65,535 messages queued per session: stay under it.
const MESSAGES: u64 = 60_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} did not open");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mosquitto(dir: &Path) -> Option<(Killed, u16)> {
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 1000\n"
        ),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    wait_port(port);
    Some((Killed(child), port))
}

fn reading(i: u64) -> Vec<u8> {
    format!(
        r#"{{"id": {i}, "temp": {}.5, "device": "d{}", "site": "greenhouse"}}"#,
        i % 40,
        i % 7
    )
    .into_bytes()
}

/// Publish MESSAGES at QoS 1 as fast as the broker takes them.
async fn publish(port: u16, topic: &str) {
    let mut opts = MqttOptions::new(
        format!("bench-pub-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    opts.set_inflight(1000)
        .set_keep_alive(Duration::from_secs(60));
    let (client, mut events) = AsyncClient::new(opts, 1000);
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < MESSAGES {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
    });
    for i in 0..MESSAGES {
        client
            .publish(topic, QoS::AtLeastOnce, false, reading(i))
            .await
            .unwrap();
    }
    acks.await.unwrap();
}

/// The broker's own rate: a QoS 1 subscriber that only counts (auto-acks).
async fn plain_subscriber(port: u16) -> f64 {
    let mut opts = MqttOptions::new("bench-sink", "127.0.0.1", port);
    opts.set_inflight(1000)
        .set_keep_alive(Duration::from_secs(60));
    let (client, mut events) = AsyncClient::new(opts, 1000);
    client
        .subscribe("bench/sink", QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = events.poll().await {
            break;
        }
    }
    let counter = tokio::spawn(async move {
        let mut n = 0;
        let mut started = None;
        while n < MESSAGES {
            if let Ok(Event::Incoming(Packet::Publish(_))) = events.poll().await {
                started.get_or_insert_with(Instant::now);
                n += 1;
            }
        }
        started.unwrap().elapsed()
    });
    publish(port, "bench/sink").await;
    let took = counter.await.unwrap();
    MESSAGES as f64 / took.as_secs_f64()
}

fn status(state: &Path) -> serde_json::Value {
    std::fs::read(state.join("ingest-status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn field(v: &serde_json::Value, k: &str) -> u64 {
    v.get(k).and_then(|x| x.as_u64()).unwrap_or(0)
}

fn peak_rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_broker, port)) = mosquitto(dir.path()) else {
        println!("## ingest: skipped (mosquitto is not installed; scripts/setup installs it)");
        return;
    };
    let sink_rate = plain_subscriber(port).await;

    let state = dir.path().join("node");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nstate_dir = {:?}\n[meadow]\nuri = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\n[ingest]\ndefault_route = false\n[[ingest.routes]]\ntopic = \"bench/node\"\nframe = \"bench.s.readings\"\nreceived_at = \"received_at\"\n",
            state.display().to_string(),
            dir.path().join("meadow").display().to_string(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
    let node = Killed(
        Command::new(env!("CARGO_BIN_EXE_apiary"))
            .arg("--config")
            .arg(&config)
            .arg("node")
            .env("APIARY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let pid = node.0.id();
    // Ready once it has written a status (subscribed and running).
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&state).is_null() {
        assert!(Instant::now() < deadline, "the node did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let publisher = tokio::spawn(publish(port, "bench/node"));
    let mut acked_at = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    let committed_at = loop {
        let s = status(&state);
        if acked_at.is_none() && field(&s, "acked") >= MESSAGES {
            acked_at = Some(started.elapsed());
        }
        if field(&s, "committed_rows") >= MESSAGES {
            break started.elapsed();
        }
        assert!(Instant::now() < deadline, "ingest did not finish: {s}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    publisher.await.unwrap();
    let acked_at = acked_at.unwrap_or(committed_at);
    let s = status(&state);
    let rss = peak_rss_mib(pid);
    let node_rate = MESSAGES as f64 / acked_at.as_secs_f64();

    println!("## ingest: {MESSAGES} QoS 1 JSON messages through mosquitto");
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| plain subscriber (broker's own rate) | {sink_rate:.0} msg/s |");
    println!("| apiary node, acked after the WAL | {node_rate:.0} msg/s |");
    println!("| node / plain subscriber | {:.2} |", node_rate / sink_rate);
    println!(
        "| all rows committed after | {:.2} s (max_latency 5 s) |",
        committed_at.as_secs_f64()
    );
    println!("| commits | {} |", field(&s, "commits"));
    println!(
        "| commit latency (cell write + Delta commit) p50 / p99 | {} ms / {} ms |",
        field(&s, "commit_ms_p50"),
        field(&s, "commit_ms_p99")
    );
    println!("| node peak RSS | {rss:.0} MiB |");
    println!();
    println!(
        "Goal ≥ 50,000 msg/s: {}; RSS ≤ 128 MiB: {}",
        if node_rate >= 50_000.0 {
            "met"
        } else {
            "NOT met"
        },
        if rss <= 128.0 { "met" } else { "NOT met" }
    );
}
