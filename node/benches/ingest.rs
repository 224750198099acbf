//! Durable MQTT ingest: QoS 1 messages from one publisher of the bench's own (rumqttc) to an
//! `apiary node`'s embedded listener, which acks each only once it is in the fsynced
//! write-ahead log, against mosquitto's own intake (the same publisher, a broker that keeps
//! messages in memory and has no subscriber) in the same run. Prints a Markdown report:
//! msgs/s both ways and their ratio, ack latency p50/p99, the node's peak RSS, bytes the node
//! wrote to disk per message (SD-card wear), time until every row is committed.
//! Goal: ≥ 50k msg/s on a 2-core box, ≥ 0.8 of mosquitto, RSS ≤ 128 MiB.
//!
//!   cargo bench --bench ingest            (or scripts/bench; needs `mosquitto`)

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

const MESSAGES: u64 = 100_000;

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

/// What one publishing run measured.
struct Run {
    rate: f64,
    /// ack latencies (PUBLISH written → PUBACK read), sorted, µs
    latencies: Vec<u64>,
}

impl Run {
    fn percentile(&self, p: f64) -> f64 {
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies.get(i).copied().unwrap_or(0) as f64 / 1000.0
    }
}

/// Publish MESSAGES at QoS 1 as fast as the other side acks them (1000 in flight).
async fn publish(port: u16, topic: &'static str) -> Run {
    let mut opts = MqttOptions::new(
        format!("bench-pub-{}-{port}", std::process::id()),
        "127.0.0.1",
        port,
    );
    opts.set_inflight(1000)
        .set_keep_alive(Duration::from_secs(60))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 1000);
    let started = Instant::now();
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        let mut sent_at: HashMap<u16, Instant> = HashMap::new();
        let mut latencies = Vec::with_capacity(MESSAGES as usize);
        while acked < MESSAGES {
            match events.poll().await {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    sent_at.insert(pkid, Instant::now());
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    acked += 1;
                    if let Some(t) = sent_at.remove(&ack.pkid) {
                        latencies.push(t.elapsed().as_micros() as u64);
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
        latencies
    });
    for i in 0..MESSAGES {
        client
            .publish(topic, QoS::AtLeastOnce, false, reading(i))
            .await
            .unwrap();
    }
    let mut latencies = acks.await.unwrap();
    let took = started.elapsed();
    latencies.sort_unstable();
    Run {
        rate: MESSAGES as f64 / took.as_secs_f64(),
        latencies,
    }
}

/// Bytes the process caused to be written to storage so far (`/proc/<pid>/io`).
fn write_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("write_bytes:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
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
    let Some((_broker, broker_port)) = mosquitto(dir.path()) else {
        println!("## ingest: skipped (mosquitto is not installed; scripts/setup installs it)");
        return;
    };
    let broker = publish(broker_port, "bench/broker").await;

    let port = free_port();
    let state = dir.path().join("node");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nstate_dir = {:?}\n[meadow]\nuri = {:?}\n[http]\nenabled = false\n[mqtt]\nlisten = \"127.0.0.1:{port}\"\n[ingest]\ndefault_route = false\n[[ingest.routes]]\ntopic = \"bench/node\"\nframe = \"bench.s.readings\"\nreceived_at = \"received_at\"\n",
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
    wait_port(port);
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&state).is_null() {
        assert!(Instant::now() < deadline, "the node did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let written_before = write_bytes(pid);
    let started = Instant::now();
    let node_run = publish(port, "bench/node").await;
    let deadline = Instant::now() + Duration::from_secs(600);
    let committed_at = loop {
        let s = status(&state);
        if field(&s, "committed_rows") >= MESSAGES {
            break started.elapsed();
        }
        assert!(Instant::now() < deadline, "ingest did not finish: {s}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let written = write_bytes(pid) - written_before;
    let s = status(&state);
    let rss = peak_rss_mib(pid);

    println!("## ingest: {MESSAGES} QoS 1 JSON messages, one publisher (rumqttc, 1000 in flight)");
    println!();
    println!(
        "| measure | mosquitto (memory, no subscriber) | apiary node (acked after the fsynced WAL) |"
    );
    println!("|---|---|---|");
    println!(
        "| intake | {:.0} msg/s | {:.0} msg/s |",
        broker.rate, node_run.rate
    );
    println!(
        "| ack latency p50 / p99 | {:.1} ms / {:.1} ms | {:.1} ms / {:.1} ms |",
        broker.percentile(0.5),
        broker.percentile(0.99),
        node_run.percentile(0.5),
        node_run.percentile(0.99)
    );
    println!();
    println!("| apiary node | value |");
    println!("|---|---|");
    println!("| node / mosquitto | {:.2} |", node_run.rate / broker.rate);
    println!(
        "| written to disk per message (WAL, cells, Delta log) | {:.0} bytes ({:.1} MiB in all) |",
        written as f64 / MESSAGES as f64,
        written as f64 / (1 << 20) as f64
    );
    println!(
        "| all rows committed after (read from the 5-second status file) | {:.2} s (max_latency 5 s) |",
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
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "Goals: ≥ 50,000 msg/s: {}; ≥ 0.8 of mosquitto: {}; RSS ≤ 128 MiB: {}",
        met(node_run.rate >= 50_000.0),
        met(node_run.rate / broker.rate >= 0.8),
        met(rss <= 128.0)
    );
}
